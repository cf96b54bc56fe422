"""Rank items: batched constrained beam search (autoregressive SIDs) or exact full-catalog
scoring (parallel SIDs) -> item ids."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
import torch
from tqdm.auto import tqdm

from gensid.data.splits import Samples
from gensid.index.beam import constrained_beam_search
from gensid.index.sid_index import SIDIndex
from gensid.model.parallel import ParallelSIDRecommender, top_items
from gensid.model.recommender import GenerativeRecommender
from gensid.train.batches import Batch, ItemFeatures


def evaluation_batches(samples: Samples, items: ItemFeatures, queries: torch.Tensor | None = None,
                       batch_size: int = 256, desc: str = "beam search",
                       progress: bool = False) -> Iterator[tuple[np.ndarray, Batch]]:
    """Batches over every sample for ranking: (row ids into ``samples``, the batch), histories of
    similar length together (less padding). Callers write results at ``rows``, which restores the order."""
    order = np.argsort((samples.histories >= 0).sum(1), kind="stable")
    for start in tqdm(range(0, len(samples), batch_size), desc=desc, disable=not progress, leave=False):
        rows = order[start:start + batch_size]
        yield rows, Batch.build(samples, rows, items, queries)


@torch.no_grad()
def recommend_items(model: GenerativeRecommender, index: SIDIndex, samples: Samples, items: ItemFeatures,
                    beam_size: int, batch_size: int = 256, progress: bool = False,
                    queries: torch.Tensor | None = None, verify_weight: float = 0.0) -> np.ndarray:
    """Top ``beam_size`` item ids per sample [N, beam_size], best first (``queries`` [N, T]: search;
    ``verify_weight``: ``EvalConfig.verify_weight``)."""
    model.eval()
    ranked = np.full((len(samples), beam_size), -1, dtype=np.int64)
    for rows, batch in evaluation_batches(samples, items, queries, batch_size, progress=progress):
        result = constrained_beam_search(model, index, batch.history_codes, batch.history_mask, beam_size,
                                         batch.history_text, batch.history_vectors, items.item_vectors, batch.query,
                                         verify_weight)
        ranked[rows, : result.items.shape[1]] = result.items.numpy()
    return ranked


@torch.no_grad()
def rank_exact(model: ParallelSIDRecommender, samples: Samples, items: ItemFeatures, k: int,
               batch_size: int = 256, progress: bool = False, table: torch.Tensor | None = None) -> np.ndarray:
    """Top ``k`` item ids per sample [N, k], best first, every catalog item scored exactly;
    ``table``: the catalog's :meth:`~ParallelSIDRecommender.item_table` when the caller keeps it
    (built here otherwise)."""
    model.eval()
    if table is None:
        table = model.item_table(items.codes, torch.arange(len(items.codes)), items.text)
    ranked = np.full((len(samples), k), -1, dtype=np.int64)
    for rows, batch in evaluation_batches(samples, items, batch_size=batch_size, desc="full ranking",
                                          progress=progress):
        states = model.user_states(batch.history_codes, batch.history_mask, batch.history_text, batch.history_items)
        ranked[rows] = top_items(partial(catalog_slice, model, states, table), len(table), k)[1].numpy()
    return ranked


def catalog_slice(model: ParallelSIDRecommender, states: torch.Tensor, table: torch.Tensor, start: int, end: int
                  ) -> torch.Tensor:
    """Ranking scores [B, end - start] of items start..end-1 (their item table rows) for user states [B, d]."""
    return model.catalog_scores(states, table[start:end])
