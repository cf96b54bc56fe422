"""SASRec (Kang & McAuley, 2018) trained with cross-entropy over the full catalog.

Follows RecBole's ``SASRec`` with ``loss_type: CE``: item + learned position
embeddings, post-LayerNorm causal Transformer blocks, logits = hidden @ item
embeddings over every item. Instead of RecBole's one sample per prefix, each
user's training sequence is fed once and the loss is taken at every position
(with a causal mask, position ``t`` sees exactly the prefix ``seq[:t+1]``).

With ``text_items`` an item's embedding is a learned projection of its frozen text vector plus a
free vector (zero at the start): an item training never saw (a cold-start split's new items) is
scored by its text, the fair ID-based competitor of semantic IDs on new items. Without it a new
item keeps its random initial embedding: SASRec cannot rank it.

Sequences are right-aligned inside the model (oldest item at position 0, PAD at
the end, as in RecBole), so an item's position embedding means the same at
training and at ranking time. :meth:`SASRec.rank` takes gensid's left-padded
``Samples`` histories as they are and aligns them itself.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gensid.data.splits import PAD, Samples
from gensid.errors import RunError
from gensid.eval.metrics import metrics_from_ranks, rank_of_targets
from gensid.io import JsonlLog, load_tensors, save_tensors, seed_everything


@dataclass
class SASRecConfig:
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    inner: int = 256  # feed-forward width (RecBole: inner_size 256)
    max_len: int = 20
    dropout: float = 0.5  # hidden dropout (RecBole's default for SASRec)
    attn_dropout: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256  # training sequences (one per user, more for long users) per step
    max_epochs: int = 300
    patience: int = 10  # epochs without a better validation NDCG@10 before stopping
    max_minutes: float = 45.0
    seed: int = 0
    eval_batch_size: int = 1024
    text_items: bool = False  # item embedding = projection of its text vector + a free vector (zero at start)


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

    def __init__(self, num_items: int, cfg: SASRecConfig | None = None, item_text: torch.Tensor | None = None):
        """``item_text`` [num_items, T]: the frozen item text vectors, needed with ``cfg.text_items``."""
        super().__init__()
        self.cfg = cfg = cfg or SASRecConfig()
        self.num_items = num_items
        # Row ``num_items`` is the PAD embedding; it is never scored.
        self.item_emb = nn.Embedding(num_items + 1, cfg.hidden, padding_idx=num_items)
        self.text_proj = None
        if cfg.text_items:
            if item_text is None or len(item_text) != num_items:
                raise ValueError(f"SASRec text_items: give the text vectors of the {num_items} items")
            self.register_buffer("item_text", item_text.float())
            self.text_proj = nn.Linear(item_text.shape[1], cfg.hidden)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
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
        items, lengths = align_histories(histories, self.cfg.max_len)
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
        """Weights, config and ``meta`` (e.g. best_epoch) in one safetensors file."""
        save_tensors(path, self.state_dict(), meta={"config": asdict(self.cfg), "num_items": self.num_items, **meta})

    @classmethod
    def load(cls, path: str | Path) -> SASRec:
        """A model saved by :meth:`save`, in eval mode."""
        tensors, meta = load_tensors(path)
        if not meta or "config" not in meta:
            raise RunError(f"{path}: not a SASRec model (no config in its header)")
        model = cls(meta["num_items"], SASRecConfig(**meta["config"]), tensors.get("item_text"))
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
        batch_size = batch_size or self.cfg.eval_batch_size
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


def make_windows(sequences: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Training sequences -> (inputs [W, max_len], targets [W, max_len]), both right-padded
    with PAD. Every item but a sequence's first is a target exactly once; a sequence
    longer than max_len + 1 is cut into consecutive windows from its end."""
    inputs, targets = [], []
    for seq in sequences:
        b = len(seq) - 1  # index of the last target
        while b >= 1:
            a = max(1, b - max_len + 1)
            inputs.append(seq[a - 1: b])
            targets.append(seq[a: b + 1])
            b = a - 1
    x = np.full((len(inputs), max_len), PAD, dtype=np.int64)
    y = np.full((len(inputs), max_len), PAD, dtype=np.int64)
    for i, (inp, tgt) in enumerate(zip(inputs, targets, strict=True)):
        x[i, : len(inp)] = inp
        y[i, : len(tgt)] = tgt
    return x, y


@dataclass
class FitResult:
    model: SASRec  # with the best validation weights loaded
    best_epoch: int  # 1-based
    best_valid: dict[str, float]
    epochs: int
    train_minutes: float
    history: list[dict] = field(default_factory=list)


def evaluate(model: SASRec, samples: Samples, ks: list[int],
             exclude_history: bool = False) -> dict[str, float]:
    """recall/hit/ndcg at each of ``ks`` with gensid's metric functions."""
    ranked = model.rank(samples, max(ks), exclude_history=exclude_history)
    return metrics_from_ranks(rank_of_targets(ranked, samples.targets), ks)


def fit(train: list[np.ndarray], valid: Samples, num_items: int,
        cfg: SASRecConfig | None = None, log: JsonlLog | None = None,
        progress: bool = True, cold_items: np.ndarray | None = None,
        item_text: torch.Tensor | None = None) -> FitResult:
    """Train on ``train`` (one item sequence per user, oldest first) with Adam and full
    cross-entropy; stop early on validation NDCG@10, after ``patience`` epochs without
    improvement or when ``max_minutes`` is spent. ``cold_items`` (a cold-start split's new items,
    absent from ``train``) are no candidates of the training softmax: they did not exist yet, so
    nothing moves their embeddings. ``item_text`` [num_items, T]: with ``cfg.text_items``."""
    cfg = cfg or SASRecConfig()
    seed_everything(cfg.seed)
    model = SASRec(num_items, cfg, item_text)
    absent = torch.zeros(num_items, dtype=torch.bool)
    if cold_items is not None:
        absent[torch.from_numpy(cold_items)] = True
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x_all, y_all = (torch.from_numpy(a) for a in make_windows(train, cfg.max_len))
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.monotonic()
    deadline = start + cfg.max_minutes * 60
    best = (-math.inf, 0, {})
    best_state: dict[str, torch.Tensor] = {}
    history: list[dict] = []
    epoch = 0
    if log is not None:
        log.write(event="start", config=asdict(cfg), windows=len(x_all), num_items=num_items)
    while epoch < cfg.max_epochs:
        epoch += 1
        model.train()
        perm = torch.randperm(len(x_all), generator=gen)
        total, count = 0.0, 0
        bar = tqdm(range(0, len(perm), cfg.batch_size), desc=f"sasrec epoch {epoch}",
                   disable=not progress, leave=False,
                   mininterval=0.5 if sys.stderr.isatty() else 30.0)
        out_of_time = False
        for i in bar:
            idx = perm[i: i + cfg.batch_size]
            x, y = x_all[idx], y_all[idx]
            hidden = model(x)
            keep = y >= 0  # score only real positions: [M, num_items] instead of [B, T, num_items]
            loss = F.cross_entropy(model.logits(hidden[keep]).masked_fill(absent, -torch.inf), y[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * int(keep.sum())
            count += int(keep.sum())
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
            if time.monotonic() > deadline:
                out_of_time = True
                break
        metrics = evaluate(model, valid, [10])
        minutes = (time.monotonic() - start) / 60
        row = {"epoch": epoch, "loss": total / max(count, 1), "valid_ndcg@10": metrics["ndcg@10"],
               "valid_recall@10": metrics["recall@10"], "minutes": minutes}
        history.append(row)
        if log is not None:
            log.write(event="epoch", **row)
        improved = metrics["ndcg@10"] > best[0]
        if improved:
            best = (metrics["ndcg@10"], epoch, metrics)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if progress:
            tqdm.write(f"epoch {epoch}: loss {row['loss']:.4f}  valid R@10 {row['valid_recall@10']:.4f}"
                       f"  N@10 {row['valid_ndcg@10']:.4f}  {minutes:.1f} min" + ("  *" if improved else ""))
        if out_of_time or epoch - best[1] >= cfg.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    minutes = (time.monotonic() - start) / 60
    if log is not None:
        log.write(event="done", best_epoch=best[1], best_valid=best[2], epochs=epoch, minutes=minutes)
    return FitResult(model, best[1], best[2], epoch, minutes, history)
