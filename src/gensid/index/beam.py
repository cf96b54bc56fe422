"""Trie-constrained beam search over full SIDs, vectorised over users and beams.

Every step masks the logits of codes that lead out of the trie with -inf, so a
returned SID is always a real item's. Ranking rule, coarse to fine: the final beams'
leaves are expanded into their items (the inverted index SID -> items), and items are
ordered by the beam's summed log-probability, then by the cosine between the user's
context vector and the item vector (when ``item_vectors`` is given: the joint
strategies' geometric verification), then by lower item id. With ``verify_weight`` w > 0
the first key is ``log-probability + w * cosine``: the cosine can then also reorder items
of different SIDs (the candidates are still only the beam's leaves). Items that share a SID
are all ranked, never de-duplicated; with TIGER's disambiguation code each leaf holds
one item and its probability is learned like any other code's (an item added after training
scores as a sibling's code: ``SIDIndex.last_level_log_probs``).
Decoding is incremental (:mod:`gensid.model.decoder`): each step runs the decoder on
one new token per beam, with cached self- and cross-attention keys/values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gensid.index.sid_index import SIDIndex
from gensid.model.recommender import GenerativeRecommender

GATHER_LIMIT = 1 << 26  # floats (256 MB) of gathered candidate vectors in one verification


@dataclass
class BeamResult:
    items: torch.Tensor  # [B, W] item ids, best first; -1 where fewer than W items exist
    scores: torch.Tensor  # [B, W] log-probabilities (-inf where items is -1)


@torch.no_grad()
def constrained_beam_search(model: GenerativeRecommender, index: SIDIndex, history_codes: torch.Tensor,
                            history_mask: torch.Tensor, beam_size: int,
                            history_text: torch.Tensor | None = None,
                            history_vectors: torch.Tensor | None = None,
                            item_vectors: torch.Tensor | None = None,
                            query: torch.Tensor | None = None, verify_weight: float = 0.0) -> BeamResult:
    """history_codes [B, H, L], history_mask [B, H] (history_text [B, H, T] and history_vectors
    [B, H, d] as the model reads them; item_vectors [N, d] for geometric verification; query
    [B, T] for search models; ``verify_weight``: see the module docstring) -> top ``beam_size``
    items per user.

    Three stages, each its own function so they can be timed apart: context encoding,
    generative search over the trie, and verification (leaves -> items -> ranking)."""
    memory, memory_mask, context = encode_context(model, history_codes, history_mask, history_text,
                                                  history_vectors, query)
    leaves, scores = search_leaves(model, index, memory, memory_mask, beam_size)
    return verify(index, leaves, scores, beam_size, context, item_vectors, verify_weight)


@torch.no_grad()
def encode_context(model: GenerativeRecommender, history_codes: torch.Tensor, history_mask: torch.Tensor,
                   history_text: torch.Tensor | None = None, history_vectors: torch.Tensor | None = None,
                   query: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Context encoding (inputs as in :func:`constrained_beam_search`) -> the encoder memory
    [B, H', d], its mask [B, H'] and, for joint models, the context vector [B, latent] that
    verification scores items with (None for two-stage models, which have none)."""
    memory = model.encode(history_codes, history_mask, history_text, history_vectors, query)
    memory_mask = model.memory_mask(history_mask)
    context = model.context(memory, memory_mask) if model.context_proj is not None else None
    return memory, memory_mask, context


@torch.no_grad()
def search_leaves(model: GenerativeRecommender, index: SIDIndex, memory: torch.Tensor, memory_mask: torch.Tensor,
                  beam_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Trie-constrained beam search -> leaves [B, W] (-1 = none) and their log-probabilities [B, W]."""
    cache = model.decoder.start(memory, memory_mask)
    batch = memory.shape[0]
    node = torch.zeros(batch, 1, dtype=torch.long)  # [B, W] trie node per beam (-1 = dead beam)
    scores = torch.zeros(batch, 1)
    tokens = model.bos.expand(batch, 1, -1)  # [B, W, d] decoder input of the current position
    for m, table in enumerate(index.children):
        hidden = model.decode_step(cache, tokens, m)
        logp = model.heads[m](hidden).float().log_softmax(-1)  # [B, W, K]
        child = table[node.clamp(min=0)]  # [B, W, K]
        if m + 1 == index.num_levels:  # added items' leaves score as a sibling's code (SIDIndex)
            logp = index.last_level_log_probs(logp, child)
        allowed = (child >= 0) & (node >= 0).unsqueeze(-1)
        cand = (scores.unsqueeze(-1) + logp).masked_fill(~allowed, float("-inf")).view(batch, -1)
        scores, flat = cand.topk(min(beam_size, cand.shape[1]), dim=1)
        parent, code = flat // table.shape[1], flat % table.shape[1]
        node = torch.where(torch.isfinite(scores), child.view(batch, -1).gather(1, flat), -1)
        if m + 1 < index.num_levels:
            cache.reorder(parent)
            tokens = model.code_vectors(m, code)
    return node, scores


@torch.no_grad()
def verify(index: SIDIndex, leaves: torch.Tensor, scores: torch.Tensor, k: int,
           context: torch.Tensor | None = None, item_vectors: torch.Tensor | None = None,
           weight: float = 0.0) -> BeamResult:
    """Leaves [B, W] with beam scores -> the top ``k`` items: by beam score (+ ``weight`` x the
    cosine), then cosine of the context [B, d] with the item vectors [N, d] (when given), then
    lower item id. The returned scores are the ranking's first key."""
    batch = leaves.shape[0]
    items, valid = index.items_of_leaves(leaves)  # [B, W, S]
    cosine = None if item_vectors is None else leaf_cosines(context, item_vectors, items)
    if items.shape[-1] > k:
        # Items of one leaf share its beam score, so only a leaf's first k by (cosine, item id)
        # can reach the top k. Cutting leaves to k keeps a collapsed index (thousands of items
        # on one SID) from expanding into B x W x S candidates.
        items, valid, cosine = first_of_each_leaf(items, valid, cosine, k)
    items = items.reshape(batch, -1)
    scores = scores.unsqueeze(-1).expand(-1, -1, valid.shape[-1]).masked_fill(~valid, float("-inf"))
    scores = scores.reshape(batch, -1)
    # stable sorts from the finest key to the coarsest: item id, verification cosine, beam score
    order = items.masked_fill(items < 0, torch.iinfo(torch.long).max).argsort(dim=1, stable=True)
    items, scores = items.gather(1, order), scores.gather(1, order)
    if cosine is not None:
        cosine = cosine.reshape(batch, -1).gather(1, order)
        order = cosine.argsort(dim=1, descending=True, stable=True)
        items, scores, cosine = items.gather(1, order), scores.gather(1, order), cosine.gather(1, order)
        if weight:
            scores = scores + weight * cosine  # -inf (no item) stays -inf
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    items, scores = items.gather(1, order), scores.gather(1, order)
    return BeamResult(items.masked_fill(~torch.isfinite(scores), -1), scores)


def leaf_cosines(context: torch.Tensor, item_vectors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Cosine of each row's context [B, d] with its candidate items [B, ...] (-1 = none, scored as
    item 0) -> [B, ...]. The candidates' vectors are gathered ([B, candidates, d]) unless that copy
    would exceed ``GATHER_LIMIT`` floats (a collapsed index pads every leaf to its largest); then the
    whole catalog is scored once ([B, N]), the same cosines up to float rounding."""
    context = F.normalize(context, dim=-1)
    flat = items.reshape(items.shape[0], -1).clamp(min=0)
    if flat.numel() * item_vectors.shape[1] > GATHER_LIMIT:
        cosine = (context @ F.normalize(item_vectors, dim=-1).T).gather(1, flat)
    else:
        candidates = F.normalize(item_vectors[flat], dim=-1)  # [B, C, d]
        cosine = (candidates @ context.unsqueeze(-1)).squeeze(-1)
    return cosine.view(items.shape)


def first_of_each_leaf(items: torch.Tensor, valid: torch.Tensor, cosine: torch.Tensor | None,
                       k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Items [B, W, S] of each leaf (item-id order, -1 padded after the last), valid [B, W, S],
    cosine [B, W, S] or None -> the first ``k`` of each leaf by cosine (descending), then item id."""
    if cosine is None:  # already in item-id order
        return items[..., :k], valid[..., :k], None
    order = cosine.masked_fill(~valid, float("-inf")).argsort(dim=-1, descending=True, stable=True)[..., :k]
    return items.gather(-1, order), valid.gather(-1, order), cosine.gather(-1, order)
