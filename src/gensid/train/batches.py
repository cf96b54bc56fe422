"""Samples (item ids) -> model tensors (codes, masks, text and item vectors)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gensid.data.splits import Samples


@dataclass
class ItemFeatures:
    """Per-item inputs the model reads, N items.

    codes [N, L] long; text [N, T] frozen text vectors (history_input ``*+text``, and the
    joint strategies' item encoder input); quantized [N, d] deterministic quantized vectors
    (history_input ``quantized*``); item_vectors [N, d] the item encoder's ``z_base``, used
    to order items that share a SID (joint strategies).
    """

    codes: torch.Tensor
    text: torch.Tensor | None = None
    quantized: torch.Tensor | None = None
    item_vectors: torch.Tensor | None = None


@dataclass
class Batch:
    history_items: torch.Tensor  # [B, H] item ids (0 where masked)
    history_codes: torch.Tensor  # [B, H, L]
    history_mask: torch.Tensor  # [B, H] bool, True = real item
    history_text: torch.Tensor | None  # [B, H, T]
    history_vectors: torch.Tensor | None  # [B, H, d]
    target_codes: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B] item ids
    query: torch.Tensor | None = None  # [B, T] query vectors (search)

    @classmethod
    def build(cls, samples: Samples, rows: np.ndarray | slice, items: ItemFeatures,
              queries: torch.Tensor | None = None) -> Batch:
        """``queries`` [N, T]: the query vector of every sample (search), or None."""
        hist = torch.from_numpy(samples.histories[rows])
        mask = hist >= 0
        # drop the history columns that are padding in every row (histories are left-padded)
        keep = int(mask.any(0).nonzero()[0, 0]) if mask.any() else hist.shape[1] - 1
        hist, mask = hist[:, keep:], mask[:, keep:]
        safe = hist.clamp(min=0)
        targets = torch.from_numpy(samples.targets[rows])
        text = items.text[safe] if items.text is not None else None
        vectors = items.quantized[safe] if items.quantized is not None else None
        query = queries[torch.as_tensor(rows)] if queries is not None else None
        return cls(safe, items.codes[safe], mask, text, vectors, items.codes[targets], targets, query)
