"""Ranking metrics over items (never over SID tuples), one held-out target per user.

``rank`` is the 0-based position of the target in the ranked item list, or -1 when
it is not in the list (a miss at every cutoff the list covers).
With one target, Recall@K equals Hit@K and NDCG@K is ``1 / log2(rank + 2)`` if rank < K.
"""

from __future__ import annotations

import numpy as np


def rank_of_targets(ranked_items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """ranked_items [B, W] (best first, -1 = empty slot), targets [B] -> ranks [B] (-1 = not found)."""
    ranked_items, targets = np.asarray(ranked_items), np.asarray(targets)
    hit = ranked_items == targets[:, None]
    return np.where(hit.any(1), hit.argmax(1), -1)


def metrics_from_ranks(ranks: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Mean recall@K, hit@K and ndcg@K over users."""
    ranks = np.asarray(ranks)
    found = ranks >= 0
    gains = np.where(found, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
    out: dict[str, float] = {}
    for k in ks:
        within = found & (ranks < k)
        out[f"recall@{k}"] = float(within.mean())
        out[f"hit@{k}"] = float(within.mean())
        out[f"ndcg@{k}"] = float(np.where(within, gains, 0.0).mean())
    return out


def new_and_seen(ranks: np.ndarray, new: np.ndarray, ks: list[int]) -> dict[str, dict[str, float]]:
    """A cold-start split's two subsets: ``{"new": ..., "seen": ...}``, the metrics of the users whose
    target is a new item (``new`` [B] True) and of the others; a subset without users is left out."""
    ranks, new = np.asarray(ranks), np.asarray(new, dtype=bool)
    subsets = {"new": new, "seen": ~new}
    return {name: metrics_from_ranks(ranks[rows], ks) for name, rows in subsets.items() if rows.any()}
