"""The code decoder: pre-norm Transformer layers, one module for training and for beam search.

A layer is ``x + self-attention(norm1 x)``, ``+ cross-attention(norm2 x, memory)``,
``+ feed-forward(norm3 x)`` (GELU); the stack ends in a LayerNorm. Shapes: B users, W beams,
H memory tokens, T code positions, d = ``d_model``, dh = d / heads.

- Training (``model.decode``): :meth:`CodeDecoder.forward` on the whole causal sequence [B, T, d].
- Beam search: :meth:`CodeDecoder.start` computes every layer's cross-attention keys/values of the
  memory once per *user*; :meth:`CodeDecoder.step` then runs one position for all beams [B, W, d].
  A user's beams are folded into the query axis of its cross-attention ([B, heads, W, dh] queries
  against [B, heads, H, dh] keys), so nothing is repeated per beam; the self-attention keys/values
  of earlier positions are kept per beam and reordered when beams are re-ranked
  (:meth:`DecoderCache.reorder`). ``forward`` is ``step`` on an empty cache: the same code.

Parameter names, shapes and initialisation are those of torch's ``nn.TransformerDecoder``
(``norm_first=True``) that gensid used before, so runs saved with it load and rank the same.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

KeysValues = tuple[torch.Tensor, torch.Tensor]


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[N, T, d] -> [N, heads, T, dh]."""
    n, t, d = x.shape
    return x.view(n, t, heads, d // heads).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head attention with the parameters of ``nn.MultiheadAttention``: ``in_proj_weight``
    [3d, d] (query, key and value projections stacked), ``in_proj_bias`` [3d], ``out_proj``."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout  # on the attention weights, while training
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.in_proj_weight)  # after out_proj, as nn.MultiheadAttention
        nn.init.zeros_(self.out_proj.bias)

    def project(self, x: torch.Tensor, first: int, count: int) -> list[torch.Tensor]:
        """x [N, T, d] -> ``count`` projections from ``first`` on (0 query, 1 key, 2 value), each
        [N, heads, T, dh], in one matrix product."""
        d = x.shape[-1]
        weight, bias = self.in_proj_weight, self.in_proj_bias
        if count < 3:
            weight, bias = weight[first * d:(first + count) * d], bias[first * d:(first + count) * d]
        out = F.linear(x, weight, bias)
        return [split_heads(part, self.heads) for part in (out.chunk(count, -1) if count > 1 else [out])]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
               causal: bool = False) -> torch.Tensor:
        """q [N, heads, T, dh], k and v [N, heads, S, dh], mask broadcastable to [N, heads, T, S]
        (True = attend) -> [N, T, d]."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                             dropout_p=self.dropout if self.training else 0.0)
        n, heads, t, dh = out.shape
        if not self.training:
            return self.out_proj(out.transpose(1, 2).reshape(n, t, heads * dh))
        # laid out in memory as [T, N, d], as nn.MultiheadAttention does: the dropout that follows
        # draws its mask in memory order, so the runs trained with it keep their random numbers
        return self.out_proj(out.permute(2, 0, 1, 3).reshape(t, n, heads * dh)).transpose(0, 1)


class DecoderLayer(nn.Module):
    """One pre-norm layer; names as ``nn.TransformerDecoderLayer`` (``self_attn``,
    ``multihead_attn``, ``linear1``, ``linear2``, ``norm1..3``)."""

    def __init__(self, d: int, heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d, heads, dropout)
        self.multihead_attn = Attention(d, heads, dropout)
        self.linear1 = nn.Linear(d, d_ff)
        self.linear2 = nn.Linear(d_ff, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.p = dropout  # after each block and inside the feed-forward, while training

    def forward(self, x: torch.Tensor, memory_k: torch.Tensor, memory_v: torch.Tensor, memory_mask: torch.Tensor,
                past: KeysValues | None = None) -> tuple[torch.Tensor, KeysValues]:
        """x [N, T, d] with N = B x beams (a user's rows adjacent); memory_k, memory_v
        [B, heads, H, dh]; memory_mask [B, 1, 1, H] True = real; past: the self-attention keys
        and values of the earlier positions [N, heads, t, dh] (then T = 1), or None (x is the whole
        causal sequence) -> x [N, T, d] and the self-attention keys and values of all positions."""
        q, k, v = self.self_attn.project(self.norm1(x), 0, 3)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        x = x + self.dropout(self.self_attn.attend(q, k, v, causal=past is None))
        n, t, d = x.shape
        # a user's rows (its beams) form one query sequence against its memory
        (q,) = self.multihead_attn.project(self.norm2(x).reshape(len(memory_k), -1, d), 0, 1)
        x = x + self.dropout(self.multihead_attn.attend(q, memory_k, memory_v, memory_mask).reshape(n, t, d))
        x = x + self.dropout(self.linear2(self.dropout(F.gelu(self.linear1(self.norm3(x))))))
        return x, (k, v)

    def dropout(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.p) if self.training else x


@dataclass
class DecoderCache:
    """What decoding one more position reuses (see the module docstring)."""

    memory_k: list[torch.Tensor]  # per layer [B, heads, H, dh]
    memory_v: list[torch.Tensor]
    memory_mask: torch.Tensor  # [B, 1, 1, H] bool, True = attend
    past: list[KeysValues] = field(default_factory=list)  # per layer [B*W, heads, t, dh] each; empty at first

    def reorder(self, parent: torch.Tensor) -> None:
        """Keep the self-attention keys/values of the chosen parent beams; parent [B, W_new]."""
        batch, width = parent.shape

        def pick(kv: torch.Tensor) -> torch.Tensor:
            old = kv.view(batch, -1, *kv.shape[1:])
            index = parent.view(batch, width, 1, 1, 1).expand(-1, -1, *kv.shape[1:])
            return old.gather(1, index).reshape(batch * width, *kv.shape[1:])

        self.past = [(pick(k), pick(v)) for k, v in self.past]


class CodeDecoder(nn.Module):
    """``num_layers`` :class:`DecoderLayer` and a final LayerNorm (``norm``)."""

    def __init__(self, d: int, heads: int, d_ff: int, num_layers: int, dropout: float):
        super().__init__()
        layer = DecoderLayer(d, heads, d_ff, dropout)
        # every layer starts as a copy of one initialisation, as in nn.TransformerDecoder: the
        # random-number order of the runs trained with it is kept
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """The whole causal sequence: x [B, T, d], memory [B, H, d], memory_mask [B, H] (True =
        real) -> hidden states [B, T, d]."""
        return self.step(self.start(memory, memory_mask), x)

    def start(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> DecoderCache:
        """memory [B, H, d], memory_mask [B, H] (True = real) -> a cache holding the memory's
        cross-attention keys/values of every layer."""
        keys_values = [layer.multihead_attn.project(memory, 1, 2) for layer in self.layers]
        return DecoderCache([k for k, _ in keys_values], [v for _, v in keys_values], memory_mask[:, None, None, :])

    def step(self, cache: DecoderCache, x: torch.Tensor) -> torch.Tensor:
        """x [B, W, d]: the inputs of the next position of W beams per user; on a fresh cache, a
        causal sequence of W positions (training; beam search starts from one BOS) -> hidden
        states [B, W, d]. ``cache`` is extended by these positions."""
        batch, width, d = x.shape
        rows = x.reshape(batch * width, 1, d) if cache.past else x
        past = []
        for i, layer in enumerate(self.layers):
            rows, keys_values = layer(rows, cache.memory_k[i], cache.memory_v[i], cache.memory_mask,
                                      cache.past[i] if cache.past else None)
            past.append(keys_values)
        cache.past = past
        return self.norm(rows).view(batch, width, d)
