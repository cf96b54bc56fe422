"""SASRec (Kang & McAuley, 2018) with cross-entropy over the full catalog.

Follows RecBole's ``SASRec`` with ``loss_type: CE``: item + learned position
embeddings, post-LayerNorm causal Transformer blocks, logits = hidden @ item
embeddings over every item. It trains on windows of each user's training sequence
(:func:`gensid.data.splits.sequence_windows`) with the loss at every position
(:class:`gensid.train.objectives.SASRecObjective`, through the one Trainer): with a causal
mask, position ``t`` sees exactly the prefix ``seq[:t+1]``.

With ``text_items`` an item's embedding is a learned projection of its frozen text vector plus a
free vector (zero at the start): an item training never saw (a cold-start split's new items) is
scored by its text, the fair ID-based competitor of semantic IDs on new items. Without it a new
item keeps its random initial embedding: SASRec cannot rank it.

Sequences are right-aligned inside the model (oldest item at position 0, PAD at
the end, as in RecBole), so an item's position embedding means the same at
training and at ranking time. :meth:`SASRec.rank` takes gensid's left-padded
``Samples`` histories as they are and aligns them itself (:func:`align_histories`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gensid.config.sections import SASRecConfig
from gensid.data.splits import PAD, Samples
from gensid.errors import RunError
from gensid.io import load_tensors, save_tensors

RANK_BATCH = 1024  # users per ranking step
SIZES = ("hidden", "layers", "heads", "inner", "dropout", "attn_dropout", "text_items")  # what the weights need


class _Block(nn.Module):
    """Causal self-attention + feed-forward, each with residual, dropout and post-LayerNorm."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)
        self.attn_dropout = cfg.attn_dropout
        self.drop1 = nn.Dropout(cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.ff = nn.Sequential(nn.Linear(cfg.hidden, cfg.inner), nn.GELU(),
                                nn.Linear(cfg.inner, cfg.hidden))
        self.drop2 = nn.Dropout(cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.hidden, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # Right-aligned sequences: the causal mask alone keeps real positions off the PAD tail.
        a = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = self.norm1(x + self.drop1(self.out(a.transpose(1, 2).reshape(b, t, d))))
        return self.norm2(x + self.drop2(self.ff(x)))


class SASRec(nn.Module):
    """Self-attentive sequential recommender scoring the whole catalog."""

    def __init__(self, num_items: int, cfg: SASRecConfig | None = None, max_len: int = 20,
                 item_text: torch.Tensor | None = None):
        """``max_len``: positions (the split's ``data.max_history``); ``item_text`` [num_items, T]: the
        frozen item text vectors, needed with ``cfg.text_items``."""
        super().__init__()
        self.cfg = cfg = cfg or SASRecConfig()
        self.num_items, self.max_len = num_items, max_len
        # Row ``num_items`` is the PAD embedding; it is never scored.
        self.item_emb = nn.Embedding(num_items + 1, cfg.hidden, padding_idx=num_items)
        self.text_proj = None
        if cfg.text_items:
            if item_text is None or len(item_text) != num_items:
                raise ValueError(f"SASRec text_items: give the text vectors of the {num_items} items")
            self.register_buffer("item_text", item_text.float())
            self.text_proj = nn.Linear(item_text.shape[1], cfg.hidden)
        self.pos_emb = nn.Embedding(max_len, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.layers))
        self.apply(self._init)
        if self.text_proj is not None:  # the free vectors start at zero: an item is its text at first
            nn.init.zeros_(self.item_emb.weight)

    @staticmethod
    def _init(module: nn.Module) -> None:
        # RecBole's initialisation: N(0, 0.02) weights, zero biases.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """items [B, T] (T <= max_len), right-aligned: oldest first, PAD (-1) at the end
        -> hidden states [B, T, D]; position t summarises items[:, :t+1]."""
        ids = items.masked_fill(items < 0, self.num_items)
        pos = torch.arange(items.shape[1], device=items.device)
        x = self.drop(self.norm(F.embedding(ids, self.item_vectors(), padding_idx=self.num_items) + self.pos_emb(pos)))
        for block in self.blocks:
            x = block(x)
        return x

    def item_vectors(self) -> torch.Tensor:
        """[num_items + 1, D] every item's embedding (the last row: PAD, zero)."""
        if self.text_proj is None:
            return self.item_emb.weight
        return self.item_emb.weight + F.pad(self.text_proj(self.item_text), (0, 0, 0, 1))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] -> scores over the catalog [..., num_items]."""
        return hidden @ self.item_vectors()[: self.num_items].T

    @torch.no_grad()
    def score(self, histories: np.ndarray) -> torch.Tensor:
        """histories [B, H] in gensid's layout (left-padded with PAD) -> scores [B, num_items]."""
        items, lengths = align_histories(histories, self.max_len)
        items_t = torch.from_numpy(items)
        hidden = self(items_t)
        last = torch.from_numpy(np.maximum(lengths - 1, 0))
        return self.logits(hidden[torch.arange(len(last)), last])

    @torch.no_grad()
    def log_probs(self, histories: np.ndarray) -> torch.Tensor:
        """histories [B, H] as in :meth:`score` -> log-softmax over the catalog [B, num_items]
        (the distribution the cross-entropy loss trains)."""
        was_training = self.training
        self.eval()
        out = self.score(histories).log_softmax(-1)
        self.train(was_training)
        return out

    def save(self, path: str | Path, **meta: Any) -> None:
        """Weights, sizes and ``meta`` (e.g. best_epoch) in one safetensors file."""
        save_tensors(path, self.state_dict(), meta={"sasrec": self.cfg.model_dump(), "max_len": self.max_len,
                                                    "num_items": self.num_items, **meta})

    @classmethod
    def load(cls, path: str | Path) -> SASRec:
        """A model saved by :meth:`save`, in eval mode; also a file of the SASRec before it trained
        through the Trainer (``benchmarks/sasrec.py``, ``gensid train --sasrec-minutes``), whose header
        holds its old settings under ``config``."""
        tensors, meta = load_tensors(path)
        if not meta or not ("sasrec" in meta or "config" in meta):
            raise RunError(f"{path}: not a SASRec model (no sizes in its header)")
        saved = meta.get("sasrec") or meta["config"]
        cfg = SASRecConfig(**{k: v for k, v in saved.items() if k in SIZES})
        model = cls(meta["num_items"], cfg, meta.get("max_len", saved.get("max_len")), tensors.get("item_text"))
        model.load_state_dict(tensors)
        return model.eval()

    @torch.no_grad()
    def rank(self, samples: Samples, k: int, exclude_history: bool = False,
             batch_size: int | None = None) -> np.ndarray:
        """Top-``k`` items [N, k] (best first) for each sample's history.

        ``exclude_history`` drops the items in the (max_history-truncated) history from
        the ranking, as RecBole's full-sort evaluation does with the user's past items.
        """
        was_training = self.training
        self.eval()
        batch_size = batch_size or RANK_BATCH
        k = min(k, self.num_items)
        out = np.empty((len(samples), k), dtype=np.int64)
        for start in range(0, len(samples), batch_size):
            hist = samples.histories[start: start + batch_size]
            scores = self.score(hist)
            if exclude_history:
                seen = torch.from_numpy(hist)
                rows = torch.arange(len(hist))[:, None].expand_as(seen)
                keep = seen >= 0
                scores[rows[keep], seen[keep]] = -torch.inf
            out[start: start + len(hist)] = scores.topk(k, dim=1).indices.numpy()
        self.train(was_training)
        return out


def align_histories(histories: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Histories [B, H] with PAD anywhere (gensid left-pads) -> (right-aligned [B, max_len]
    keeping each row's last ``max_len`` items in order, PAD after them; lengths [B])."""
    histories = np.asarray(histories, dtype=np.int64)
    valid = histories != PAD
    order = np.argsort(~valid, axis=1, kind="stable")  # real items first, in their order
    packed = np.take_along_axis(histories, order, axis=1)
    if packed.shape[1] < max_len:
        packed = np.pad(packed, ((0, 0), (0, max_len - packed.shape[1])), constant_values=PAD)
    lengths = valid.sum(1)
    cols = np.maximum(lengths - max_len, 0)[:, None] + np.arange(max_len)[None, :]
    return np.take_along_axis(packed, cols, axis=1), np.minimum(lengths, max_len)
