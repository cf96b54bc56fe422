"""Mix the generative retriever's probabilities with a full-catalog scorer's.

Generative retrieval ranks popular items well and the long tail badly: an item that is
rarely a training target gets little probability on its SID (research/RESULTS.md, "By item
popularity"). A scorer over the whole catalog, the dense dual encoder in search or SASRec
in recommendation, is the other way round. Mixing the two distributions

    p(item) = (1 - w) * p_gen(item) + w * p_catalog(item)

keeps each where it is confident, and needs no training beyond choosing ``w``:

- p_gen(item) = P(SID | context) / (items that carry the SID): the beam's probability of
  the item's SID, shared evenly by its items; 0 outside the beam (items the beam never
  reached have too little generative probability to matter). A parallel-SID run scores every
  item exactly: p_gen is the softmax of the items' scores over the whole catalog;
- p_catalog(item): a softmax over every item (the dense encoder's cosine / its InfoNCE
  temperature, SASRec's logits).

``w`` is chosen on the validation split (:func:`fused_rankings` scores every weight from one
beam search; :mod:`gensid.fusion.hybrid` does the choosing), never on test. ``w = 0`` is the
generative ranking, ``w = 1`` the scorer's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from gensid.data.splits import Samples
from gensid.eval.evaluate import evaluation_batches
from gensid.index.beam import BeamResult, constrained_beam_search
from gensid.index.sid_index import SIDIndex
from gensid.run import Run


def generative_log_probs(index: SIDIndex, result: BeamResult) -> torch.Tensor:
    """The beam's items [B, W] with their SID log-probabilities -> log p_gen of each item [B, W]:
    the SID's log-probability minus log(number of items with that SID); -inf where there is no item."""
    return result.scores - index.sid_sizes(result.items).float().log()


def mix(gen_items: torch.Tensor, gen_log_probs: torch.Tensor, catalog_log_probs: torch.Tensor, weight: float,
        k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """gen_items [B, W] (-1 = none) with their log p_gen [B, W], catalog_log_probs [B, N] (log-softmax
    over all N items), mixing weight w in [0, 1] -> top ``k`` items [B, k] and log p(item) [B, k].

    ``w = 0`` returns the generative ranking as it is (its own order among items of one SID)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"mixing weight {weight} must lie in [0, 1]")
    if weight == 0.0:
        return gen_items[:, :k], gen_log_probs[:, :k]
    mixed = weight * catalog_log_probs.exp()
    gen = torch.where(gen_items >= 0, gen_log_probs.exp() * (1.0 - weight), 0.0)
    mixed = mixed.scatter_add(1, gen_items.clamp(min=0), gen)
    scores, items = mixed.topk(min(k, mixed.shape[1]), dim=1)
    return items, scores.log()


@torch.no_grad()
def fused_rankings(run: Run, samples: Samples, queries: torch.Tensor | None,
                   catalog_log_probs: Callable[[np.ndarray], torch.Tensor], weights: list[float],
                   k: int | None = None, progress: bool = False) -> dict[float, np.ndarray]:
    """Rank ``samples`` (``queries`` [N, T] for search runs) with a trained run's beam mixed at every weight.

    ``catalog_log_probs(rows)`` gives the scorer's log-softmax [len(rows), num_items] for those rows
    of ``samples``. The beam search runs once per batch (``eval.beam_size`` items, the run's
    verification); every weight mixes the same beams.
    Returns {weight: ranked item ids [N, k]} (k defaults to ``eval.beam_size``; a larger k widens the beam
    to k)."""
    e = run.cfg.eval
    k = k or e.beam_size
    run.model.eval()
    ranked = {w: np.full((len(samples), k), -1, dtype=np.int64) for w in weights}
    for rows, batch in evaluation_batches(samples, run.items, queries, e.batch_size, "hybrid ranking", progress):
        if run.parallel:  # every item's exact score: the generative distribution over the whole catalog
            states = run.model.user_states(batch.history_codes, batch.history_mask, batch.history_text,
                                           batch.history_items)
            scores = run.model.catalog_scores(states, run.item_table())
            gen, gen_items = scores.log_softmax(-1).sort(1, descending=True)
        else:
            beam = constrained_beam_search(run.model, run.index, batch.history_codes, batch.history_mask,
                                           max(e.beam_size, k), batch.history_text, batch.history_vectors,
                                           run.items.item_vectors, batch.query, e.verify_weight)
            gen, gen_items = generative_log_probs(run.index, beam), beam.items
        catalog = catalog_log_probs(rows)
        for w in weights:
            items, scores = mix(gen_items, gen, catalog, w, k)
            ranked[w][rows, : items.shape[1]] = items.masked_fill(~torch.isfinite(scores), -1).numpy()
    return ranked
