"""The parallel-SID recommender (RPG, Hou et al., KDD 2025): long unordered SIDs, every digit at once.

Shapes: B users, H history slots, m digits per item, K codes per digit, d = ``d_model``,
N catalog items.

- A history item becomes one token: the mean of its m digit embeddings (optionally plus a
  projection of its frozen text vector) plus the embedding of its position, counted from the
  oldest real item (as SASRec), so a prefix means the same inside a training window and as a
  whole history at ranking time.
- A causal, pre-LayerNorm Transformer reads the history; the hidden state at position t
  predicts the item after it, so one window trains every position at once.
- Digit logits [m, K] against the same digit embeddings the input uses [m, K, d], from one of
  two heads (``parallel.head``):
  - ``digits`` (RPG): one residual head per digit (``h + silu(W_j h + b_j)``, W_j zero at the
    start) turns the hidden state into m states; digit j's logits are
    ``cos(state_j, E_j) / temperature``.
  - ``shared``: the hidden state itself, ``h . E_j``. An item's mean digit logit is then its dot
    product with the mean of its digit embeddings. Its ranking score is the dot product with its
    own history token (:meth:`ParallelSIDRecommender.item_vectors`): SASRec's tied item embedding,
    made of the item's digits (as VQ-Rec builds it), which a new item has too, plus, as
    configured, a projection of its text vector and a free per-item vector (``parallel.item_ids``;
    ``item_dropout`` trains a stand-in for the items that have none).
- An item's score is the sum of its digits' log-probabilities. That is exact for every
  item of the catalog at once: a gather and a sum over the [B, m, K] table
  (:func:`score_items`), no beam search, no search error.
- Training (``parallel.loss``): RPG's multi-token loss (each digit's cross-entropy), a softmax
  over items of the item score (the mean digit logit, which ranks as the score above does), or both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gensid.config.sections import ModelConfig, ParallelConfig
from gensid.errors import ConfigError

HISTORY_INPUTS = ("codes", "codes+text")


class CausalBlock(nn.Module):
    """Pre-LayerNorm self-attention under a given mask, then a GELU feed-forward; each residual."""

    def __init__(self, d: int, heads: int, d_ff: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.heads, self.attention_dropout = heads, attention_dropout
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, H, d], mask [B, 1, H, H] bool (True = may attend) -> [B, H, d]."""
        b, h, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, h, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attention_dropout if self.training else 0.0)
        x = x + self.drop(self.out(a.transpose(1, 2).reshape(b, h, d)))
        return x + self.drop(self.ff(self.norm2(x)))


class ParallelSIDRecommender(nn.Module):
    def __init__(self, digits: int, codebook_size: int, cfg: ModelConfig, parallel: ParallelConfig,
                 max_history: int, text_dim: int | None = None, num_items: int = 0,
                 trained_items: torch.Tensor | None = None):
        """``num_items``: the catalog's size at training time (``parallel.item_ids``); ``trained_items``
        [num_items] bool: which of them training may see (default all; a cold-start split's new items not)."""
        super().__init__()
        if cfg.history_input not in HISTORY_INPUTS:
            raise ConfigError(f"model.history_input {cfg.history_input!r}: the parallel model takes one of "
                              f"{HISTORY_INPUTS}")
        if cfg.history_input == "codes+text" and text_dim is None:
            raise ConfigError("model.history_input codes+text needs item text vectors")
        if cfg.d_model % cfg.n_heads:
            raise ConfigError(f"model.d_model {cfg.d_model} must be a multiple of model.n_heads {cfg.n_heads}")
        d = cfg.d_model
        self.digits, self.codebook_size, self.temperature = digits, codebook_size, parallel.temperature
        self.head = parallel.head
        self.cfg = cfg
        self.digit_embeddings = nn.Embedding(digits * codebook_size, d)  # digit j's codes: rows j*K .. j*K+K-1
        self.register_buffer("offsets", torch.arange(digits) * codebook_size, persistent=False)
        self.text_proj = nn.Linear(text_dim, d) if cfg.history_input == "codes+text" else None
        self.positions = nn.Embedding(max_history, d)
        self.embedding_dropout = nn.Dropout(parallel.embedding_dropout)
        self.blocks = nn.ModuleList(CausalBlock(d, cfg.n_heads, cfg.d_ff, cfg.dropout, parallel.attention_dropout)
                                    for _ in range(cfg.encoder_layers))
        self.norm = nn.LayerNorm(d)
        self.apply(_gpt2_init)
        if self.head == "shared":
            # the shared head's scores are dot products with the mean digit embedding: start that mean
            # (a history token and an output embedding) at SASRec's N(0, .02), not sqrt(m) times smaller
            nn.init.normal_(self.digit_embeddings.weight, std=0.02 * digits**0.5)
        # parallel.item_ids: a free vector per trained item, zero at the start, on top of its digits
        self.item_embeddings = nn.Embedding(num_items, d) if parallel.item_ids else None
        if self.item_embeddings is not None:
            if not num_items:
                raise ConfigError("parallel.item_ids needs the number of trained items")
            nn.init.zeros_(self.item_embeddings.weight)
        # parallel.item_dropout: training scores an item without its free vector at this rate, and with a
        # learned stand-in instead, the vector every item without one (new, or added later) then gets
        self.item_dropout = parallel.item_dropout
        if self.item_dropout:
            self.unknown_item = nn.Parameter(torch.zeros(d))
            trained = torch.ones(num_items, dtype=torch.bool) if trained_items is None else trained_items
            self.register_buffer("has_vector", trained.clone())
            # added to the score of every item scored by the stand-in; calibrated after training
            # (gensid.eval.calibration) unless parallel.new_item_offset fixes it
            self.register_buffer("new_item_offset", torch.tensor(float(parallel.new_item_offset or 0.0)))
        if self.head == "digits":  # the digit heads start as the identity (RPG's zero-initialised residual blocks)
            self.head_weight = nn.Parameter(torch.zeros(d, digits, d))  # [d_in, m, d_out]
            self.head_bias = nn.Parameter(torch.zeros(digits, d))

    def item_vectors(self, codes: torch.Tensor, items: torch.Tensor | None = None,
                     text: torch.Tensor | None = None) -> torch.Tensor:
        """codes [..., m] (item ids [...], text vectors [..., T]) -> [..., d]: an item's history token,
        and with head ``shared`` also what its score is the dot product with. The mean of the item's
        digit embeddings, plus its own vector with ``parallel.item_ids`` (:meth:`own_vectors`), plus a
        projection of its text vector with ``history_input codes+text``."""
        # one embedding_bag: no [..., m, d] tensor of gathered rows (12,101 items x 32 digits x d)
        rows = (codes + self.offsets).reshape(-1, self.digits)
        vectors = F.embedding_bag(rows, self.digit_embeddings.weight, mode="mean").view(*codes.shape[:-1], -1)
        if self.item_embeddings is not None:
            if items is None:
                raise ValueError("parallel.item_ids: give the item ids with their codes")
            vectors = vectors + self.own_vectors(items)
        if self.text_proj is not None:
            if text is None:
                raise ValueError("model.history_input codes+text: give the items' text vectors with their codes")
            vectors = vectors + self.text_proj(text)
        return vectors

    def own_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """item ids [...] -> their free vectors [..., d] (``parallel.item_ids``). An item without one
        (added after training; with ``item_dropout``, also a cold-start split's new item, and in
        training a dropped one) gets zero, or with ``item_dropout`` the learned stand-in."""
        own = self.item_embeddings(items.clamp(min=0, max=self.item_embeddings.num_embeddings - 1))
        known = self.has_own_vector(items)
        if not self.item_dropout:
            return own * known.unsqueeze(-1)
        if self.training:
            known = known & (torch.rand(items.shape, device=items.device) >= self.item_dropout)
        return torch.where(known.unsqueeze(-1), own, self.unknown_item)

    def has_own_vector(self, items: torch.Tensor) -> torch.Tensor:
        """item ids [...] -> bool [...]: whether training gave the item a free vector (not: added after
        training, or with ``item_dropout`` a cold-start split's new item)."""
        n = self.item_embeddings.num_embeddings
        known = items < n
        if self.item_dropout:
            known = known & self.has_vector[items.clamp(min=0, max=n - 1)]
        return known

    def score_offsets(self, items: torch.Tensor | None, count: int) -> torch.Tensor:
        """The offset [count] added to each item's ranking score: ``new_item_offset`` for an item
        without a free vector (``item_dropout``), else 0."""
        if not self.item_dropout or items is None:
            return torch.zeros(count)
        return (~self.has_own_vector(items)).float() * self.new_item_offset

    def encode(self, history_codes: torch.Tensor, history_mask: torch.Tensor,
               history_text: torch.Tensor | None = None, history_items: torch.Tensor | None = None
               ) -> torch.Tensor:
        """history_codes [B, H, m] (any value where masked), history_mask [B, H] True = real item
        (left-padded: real items are the last ones), history_text [B, H, T], history_items [B, H]
        (``parallel.item_ids``) -> hidden [B, H, d]; position t has seen the items up to t."""
        h = history_mask.shape[1]
        position = (history_mask.long().cumsum(1) - 1).clamp(min=0)
        items = history_items.clamp(min=0) if history_items is not None else None
        x = self.embedding_dropout(self.item_vectors(history_codes.clamp(min=0), items, history_text)
                                   + self.positions(position))
        causal = torch.ones(h, h, dtype=torch.bool, device=x.device).tril()
        # a padding slot attends to itself only (never empty, so no NaN); real slots skip padding
        mask = causal & (history_mask[:, None, :] | torch.eye(h, dtype=torch.bool, device=x.device))
        mask = mask.unsqueeze(1)  # [B, 1, H, H]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def digit_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[*, d] -> [*, m, K]: ``cos(head_j(h), E_j) / temperature`` for every digit j (head
        ``digits``), or ``h . E_j`` (head ``shared``: one [*, d] x [d, m*K] matmul)."""
        d = hidden.shape[-1]
        if self.head == "shared":
            return (hidden @ self.digit_embeddings.weight.T).unflatten(-1, (self.digits, self.codebook_size))
        # all m heads in one matmul: [*, d] x [d, m*d] (the heads' weights side by side)
        heads = (hidden @ self.head_weight.reshape(d, -1)).unflatten(-1, (self.digits, d))  # [*, m, d]
        states = F.normalize(hidden.unsqueeze(-2) + F.silu(heads + self.head_bias), dim=-1)
        # the temperature goes into the small [m, K, d] table, not the [*, m, K] logits
        table = F.normalize(self.digit_embeddings.weight.view(self.digits, self.codebook_size, d), dim=-1)
        return torch.einsum("...md,mkd->...mk", states, table / self.temperature)

    def loss(self, logits: torch.Tensor, target_codes: torch.Tensor) -> torch.Tensor:
        """digit logits [R, m, K], target_codes [R, m] -> the multi-token loss: mean over digits of
        the cross-entropy of each digit (RPG's)."""
        return F.cross_entropy(logits.float().reshape(-1, self.codebook_size), target_codes.reshape(-1))

    def item_loss(self, hidden: torch.Tensor, logits: torch.Tensor | None, targets: torch.Tensor,
                  target_codes: torch.Tensor, candidates: torch.Tensor, candidate_codes: torch.Tensor,
                  item_text: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax over items of :meth:`item_logits` for rows hidden [R, d] (digit logits [R, m, K]):
        each row's target [R] (codes [R, m]) against shared candidate items [S] (codes [S, m]), every
        catalog item or a sample; a candidate that is the row's target counts once, as the target.
        Head ``shared`` ignores ``logits`` (None is fine); ``item_text`` [N, T]: every item's text
        vector (``history_input codes+text``)."""
        if self.head == "shared":
            target_text = item_text[targets] if item_text is not None else None
            positive = (hidden * self.item_vectors(target_codes, targets, target_text)).sum(-1, keepdim=True).float()
        else:
            positive = logits.float().gather(2, target_codes.unsqueeze(-1)).squeeze(-1).mean(-1, keepdim=True)
        candidate_text = item_text[candidates] if item_text is not None else None
        negative = self.item_logits(hidden, logits, candidate_codes, candidates, candidate_text).float()  # [R, S]
        negative = negative.masked_fill(candidates.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        scores = torch.cat([positive, negative], 1)
        return F.cross_entropy(scores, scores.new_zeros(len(scores), dtype=torch.long))

    def item_logits(self, hidden: torch.Tensor, digit_logits: torch.Tensor | None, item_codes: torch.Tensor,
                    items: torch.Tensor | None = None, text: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [R, d] (its digit_logits [R, m, K]) x items (codes [N, m], ids [N]) -> [R, N]: the mean
        of each item's digit logits (the ranking score up to a per-row constant, on one digit's
        scale). Head ``shared``: one matmul with the item vectors [N, d] (:meth:`item_vectors`)."""
        if self.head == "shared":
            return hidden @ self.item_vectors(item_codes, items, text).T
        return score_items(digit_logits, item_codes) / self.digits

    def user_states(self, history_codes: torch.Tensor, history_mask: torch.Tensor,
                    history_text: torch.Tensor | None = None, history_items: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """The hidden state [B, d] that predicts the item after each history (left-padded: the last slot)."""
        return self.encode(history_codes, history_mask, history_text, history_items)[:, -1]

    def item_table(self, item_codes: torch.Tensor, items: torch.Tensor | None = None,
                   text: torch.Tensor | None = None) -> torch.Tensor:
        """What :meth:`catalog_scores` reads of each item (codes [N, m], ids [N], text [N, T]): head
        ``shared``: [N, d + 1], the item vector and the item's score offset (:meth:`score_offsets`);
        ``digits``: the codes [N, m]. Built once per catalog and sliced, not per batch of users (for
        12,101 items it costs more than scoring 32 users)."""
        if self.head != "shared":
            return item_codes
        vectors = self.item_vectors(item_codes, items, text)
        return torch.cat([vectors, self.score_offsets(items, len(vectors)).unsqueeze(1)], 1)

    def catalog_scores(self, states: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """states [B, d] x the items' :meth:`item_table` [N, .] -> ranking scores [B, N], exact for every
        item. Head ``digits``: the sum of the item's digits' log-probabilities (RPG); ``shared``: the dot
        product with the item vector, which without ``item_ids`` and text ranks exactly as that sum does."""
        if self.head == "shared":  # [B, d] x [N, d] plus each item's offset (the table's last column)
            return torch.addmm(table[:, -1], states, table[:, :-1].T).float()
        return score_items(self.digit_logits(states).float().log_softmax(-1), table)


def _gpt2_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


def score_items(log_probs: torch.Tensor, item_codes: torch.Tensor) -> torch.Tensor:
    """[B, m, K] x [N, m] -> [B, N]: each item's sum of its digits' log-probabilities.

    A few users: a plain gather [B, N, m] and a sum. Many: one ``embedding_bag`` over the [m*K, B]
    table (N*m gathers of a B-vector), which never holds the [B, N, m] tensor; per user it is
    slower, so it is used only where that tensor would pass 2^24 entries."""
    b, m, k = log_probs.shape
    rows = item_codes + torch.arange(m, device=item_codes.device) * k  # [N, m] rows of the [m*K] table
    if b * rows.numel() <= 1 << 24:
        return log_probs.reshape(b, m * k)[:, rows].sum(-1)
    table = log_probs.reshape(b, m * k).T.contiguous()  # [m*K, B]
    return F.embedding_bag(rows, table, mode="sum").T  # [B, N]


def top_items(scores_of: Callable[[int, int], torch.Tensor], num_items: int, k: int, chunk: int = 65_536
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` of a catalog of ``num_items``: scores and item ids [B, k], best first.
    ``scores_of(start, end)`` scores items start..end-1 [B, end - start]; items are scored ``chunk``
    at a time and merged, so memory stays [B, chunk + k] for any catalog size."""
    best_scores = best_ids = None
    for start in range(0, num_items, chunk):
        end = min(start + chunk, num_items)
        scores = scores_of(start, end)
        ids = torch.arange(start, end).expand(len(scores), -1)
        if best_scores is not None:
            scores, ids = torch.cat([best_scores, scores], 1), torch.cat([best_ids, ids], 1)
        best_scores, where = scores.topk(min(k, scores.shape[1]), dim=1)
        best_ids = ids.gather(1, where)
    return best_scores, best_ids
