"""Samples (item ids) -> model tensors (codes, masks, text vectors)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from gensid.data.splits import Samples


@dataclass
class ItemFeatures:
    """Per-item inputs the model reads: codes [N, L] long and text vectors [N, D] or None."""

    codes: torch.Tensor
    text: torch.Tensor | None = None


@dataclass
class Batch:
    history_codes: torch.Tensor  # [B, H, L]
    history_mask: torch.Tensor  # [B, H] bool, True = real item
    history_text: torch.Tensor | None  # [B, H, D]
    target_codes: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B] item ids

    @classmethod
    def build(cls, samples: Samples, rows: np.ndarray | slice, items: ItemFeatures) -> Batch:
        hist = torch.from_numpy(samples.histories[rows])
        mask = hist >= 0
        # drop the history columns that are padding in every row (histories are left-padded)
        keep = int(mask.any(0).nonzero()[0, 0]) if mask.any() else hist.shape[1] - 1
        hist, mask = hist[:, keep:], mask[:, keep:]
        safe = hist.clamp(min=0)
        targets = torch.from_numpy(samples.targets[rows])
        text = items.text[safe] if items.text is not None else None
        return cls(items.codes[safe], mask, text, items.codes[targets], targets)
