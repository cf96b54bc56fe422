"""Trie-constrained beam search over full SIDs, vectorised over users and beams.

Every step masks the logits of codes that lead out of the trie with -inf, so a
returned SID is always a real item's. Ranking rule: items are ordered by the sum of
their per-position log-probabilities; exact ties go to the lower item id. Items that
share the quantizer codes differ in the disambiguation code, whose probability the
model learns, so they are ranked like any other items (never de-duplicated).
Decoding is incremental (:mod:`gensid.model.decoding`): each step runs the decoder on
one new token per beam, with cached self- and cross-attention keys/values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gensid.index.sid_index import SIDIndex
from gensid.model.decoding import IncrementalDecoder
from gensid.model.recommender import GenerativeRecommender


@dataclass
class BeamResult:
    items: torch.Tensor  # [B, W] item ids, best first; -1 where fewer than W items exist
    scores: torch.Tensor  # [B, W] log-probabilities (-inf where items is -1)


@torch.no_grad()
def constrained_beam_search(model: GenerativeRecommender, index: SIDIndex, history_codes: torch.Tensor,
                            history_mask: torch.Tensor, beam_size: int,
                            history_text: torch.Tensor | None = None) -> BeamResult:
    """history_codes [B, H, L], history_mask [B, H] -> top ``beam_size`` items per user."""
    memory = model.encode(history_codes, history_mask, history_text)
    decoder = IncrementalDecoder(model)
    cache = decoder.start(memory, model.memory_mask(history_mask))
    batch = memory.shape[0]
    node = torch.zeros(batch, 1, dtype=torch.long)  # [B, W] trie node per beam (-1 = dead beam)
    scores = torch.zeros(batch, 1)
    tokens = decoder.bos(batch)  # [B, W, d] decoder input of the current position
    for m, table in enumerate(index.children):
        hidden = decoder.step(cache, tokens, m)
        logp = model.heads[m](hidden).float().log_softmax(-1)  # [B, W, K]
        child = table[node.clamp(min=0)]  # [B, W, K]
        allowed = (child >= 0) & (node >= 0).unsqueeze(-1)
        cand = (scores.unsqueeze(-1) + logp).masked_fill(~allowed, float("-inf")).view(batch, -1)
        scores, flat = cand.topk(min(beam_size, cand.shape[1]), dim=1)
        parent, code = flat // table.shape[1], flat % table.shape[1]
        node = torch.where(torch.isfinite(scores), child.view(batch, -1).gather(1, flat), -1)
        if m + 1 < index.num_levels:
            cache.reorder(parent)
            tokens = decoder.embed(code, m)
    items = torch.where(node >= 0, index.leaf_item[node.clamp(min=0)], -1)
    # deterministic ties: order by item id, then a stable sort by score
    by_item = items.masked_fill(items < 0, torch.iinfo(torch.long).max).argsort(dim=1, stable=True)
    items, scores = items.gather(1, by_item), scores.gather(1, by_item)
    by_score = scores.argsort(dim=1, descending=True, stable=True)
    return BeamResult(items.gather(1, by_score), scores.gather(1, by_score))
