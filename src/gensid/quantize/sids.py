"""Semantic IDs: per-item code tuples plus TIGER's disambiguation code, and usage statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SemanticIDs:
    """``codes`` [N, L+1] int64: L quantizer codes then a disambiguation code.

    Items whose L codes collide get disambiguation codes 0, 1, 2, ... in item-id order (or a given order);
    ``sizes`` [L+1] is the vocabulary size of each position (the last is the largest
    collision group).
    """

    codes: np.ndarray
    sizes: list[int]

    @classmethod
    def from_codes(cls, codes: np.ndarray, codebook_sizes: list[int], order: np.ndarray | None = None
                   ) -> SemanticIDs:
        """``order``: the item ids in the order they take disambiguation codes (default: item-id order)."""
        codes = np.asarray(codes, dtype=np.int64)
        _, group = np.unique(codes, axis=0, return_inverse=True)
        group = group.reshape(-1)
        extra = np.zeros(len(codes), dtype=np.int64)
        seen: dict[int, int] = {}
        for item in range(len(codes)) if order is None else order:  # a fixed order: a deterministic rule
            g = group[item]
            extra[item] = seen.get(g, 0)
            seen[g] = extra[item] + 1
        size = int(extra.max()) + 1 if len(extra) else 1
        return cls(np.concatenate([codes, extra[:, None]], axis=1), list(codebook_sizes) + [size])

    @property
    def num_levels(self) -> int:
        """Number of positions including the disambiguation code."""
        return self.codes.shape[1]

    def collision_rate(self) -> float:
        """Share of items whose quantizer codes (without the extra code) are shared with another item."""
        return collision_rate(self.codes[:, :-1])

    def stats(self) -> dict:
        return {
            "collision_rate": self.collision_rate(),
            "max_collision_group": self.sizes[-1],
            "levels": code_usage(self.codes[:, :-1], self.sizes[:-1]),
        }


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose code tuple (a row of ``codes`` [N, L]) is shared with another item."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.reshape(-1)] > 1).mean())


def code_usage(codes: np.ndarray, sizes: list[int]) -> list[dict]:
    """Per level: used codes, dead codes and perplexity ``exp(entropy)`` of the code distribution."""
    out = []
    for level, k in enumerate(sizes):
        counts = np.bincount(codes[:, level], minlength=k)
        p = counts[counts > 0] / counts.sum()
        out.append({"size": k, "used": int((counts > 0).sum()), "dead": int((counts == 0).sum()),
                    "perplexity": float(np.exp(-(p * np.log(p)).sum()))})
    return out
