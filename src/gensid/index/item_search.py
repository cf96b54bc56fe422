"""Approximate top-k items for catalogs too large to score exactly per request.

The parallel-SID model with the shared head ranks items by ``h . v_i``: the user state h [d]
against each item's vector v_i [d] (the mean of its digit embeddings, plus its own vector with
``parallel.item_ids``; :meth:`ParallelSIDRecommender.item_vectors`). Exact ranking
(:func:`gensid.model.parallel.top_items`) costs N*d per user; at millions of items that is too slow
for a request. Maximum-inner-product search over the fixed item vectors scans a small part of the
catalog instead: faiss's inverted lists (k-means cells of the item vectors; a query scans the
``probes`` cells nearest to it), whose recall against the exact ranking
``benchmarks/large_catalog.py`` measures. (RPG decodes over a graph of SIDs for the same reason;
with the shared head the item vector *is* the item's SID embedding, so an index over the vectors
serves the same purpose with a well-kept library. An HNSW graph searches as well but took
minutes to build per 100k items on one core here, k-means cells seconds.)
"""

from __future__ import annotations

import faiss
import numpy as np
import torch


class ItemVectorSearch:
    """Approximate top-k of ``states @ vectors.T`` over item vectors [N, d] (faiss inverted lists,
    inner product, exact scores within the scanned cells). ``cells``: k-means cells (default
    4 sqrt(N)); ``probes``: cells a query scans (higher: better recall, slower)."""

    def __init__(self, vectors: torch.Tensor | np.ndarray, cells: int | None = None, probes: int = 32,
                 seed: int = 0):
        vectors = np.ascontiguousarray(torch.as_tensor(vectors).float().numpy(), dtype=np.float32)
        if vectors.ndim != 2 or not len(vectors):
            raise ValueError(f"item vectors must be a non-empty [N, d] array, got shape {vectors.shape}")
        self.num_items, self.dim = vectors.shape
        self.cells = min(cells or max(1, int(4 * self.num_items**0.5)), self.num_items)
        self.probes = probes
        coarse = faiss.IndexFlatIP(self.dim)
        self.index = faiss.IndexIVFFlat(coarse, self.dim, self.cells, faiss.METRIC_INNER_PRODUCT)
        self.index.cp.seed = seed
        self.index.cp.min_points_per_centroid = 1  # small catalogs: no warning, k-means still fits
        # k-means on at most 64 points per cell: the cells only route queries, the scores are exact
        sample = np.random.default_rng(seed).permutation(self.num_items)[: 64 * self.cells]
        self.index.train(vectors[np.sort(sample)])
        self.index.add(vectors)

    def search(self, states: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """states [B, d] -> (scores [B, k], item ids [B, k]), best first; -1 ids pad when the
        catalog has fewer than k items (as :func:`top_items` returns fewer columns)."""
        if states.shape[-1] != self.dim:
            raise ValueError(f"user states have {states.shape[-1]} dimensions, the item vectors {self.dim}")
        self.index.nprobe = min(self.probes, self.cells)
        query = np.ascontiguousarray(states.detach().float().numpy(), dtype=np.float32)
        scores, ids = self.index.search(query, min(k, self.num_items))
        return torch.from_numpy(scores), torch.from_numpy(ids)


def recall_against(exact_ids: np.ndarray, approximate_ids: np.ndarray) -> float:
    """Share of the exact top-k [B, k] that the approximate top-k [B, k] also holds (mean over users)."""
    hits = [len(set(e[e >= 0]) & set(a[a >= 0])) / max((e >= 0).sum(), 1)
            for e, a in zip(exact_ids, approximate_ids, strict=True)]
    return float(np.mean(hits))
