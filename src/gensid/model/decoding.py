"""Incremental decoding for beam search, on the weights of :class:`GenerativeRecommender`.

``model.decode`` recomputes the whole prefix and, for every beam, the cross-attention
keys/values of the user's memory. Here both are cached:

- the memory's cross-attention K/V are computed once per *user* and shared by all of
  its beams by folding the beams into the query axis (``[B, heads, W, dh]`` queries
  against ``[B, heads, H, dh]`` keys), so nothing is repeated per beam;
- the self-attention K/V of earlier code positions are kept per beam and reordered
  when beams are re-ranked.

It reads the parameters of ``nn.TransformerDecoderLayer`` (pre-norm) directly, so it
is exactly the trained decoder (a test checks it against ``model.decode``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gensid.model.recommender import GenerativeRecommender


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[N, T, d] -> [N, heads, T, d/heads]."""
    n, t, d = x.shape
    return x.view(n, t, heads, d // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    n, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(n, t, h * dh)


@dataclass
class DecoderCache:
    memory_k: list[torch.Tensor]  # per layer [B, heads, H, dh]
    memory_v: list[torch.Tensor]
    memory_mask: torch.Tensor  # [B, 1, 1, H] bool, True = attend
    self_k: list[torch.Tensor] = field(default_factory=list)  # per layer [B*W, heads, t, dh]
    self_v: list[torch.Tensor] = field(default_factory=list)

    def reorder(self, parent: torch.Tensor) -> None:
        """Keep the self-attention cache of the chosen parent beams; parent [B, W_new]."""
        batch, width = parent.shape
        for cache in (self.self_k, self.self_v):
            for i, kv in enumerate(cache):
                old = kv.view(batch, -1, *kv.shape[1:])
                index = parent.view(batch, width, 1, 1, 1).expand(-1, -1, *kv.shape[1:])
                cache[i] = old.gather(1, index).reshape(batch * width, *kv.shape[1:])


class IncrementalDecoder:
    def __init__(self, model: GenerativeRecommender):
        self.model = model
        self.layers: list[nn.TransformerDecoderLayer] = list(model.decoder.layers)
        self.heads = self.layers[0].self_attn.num_heads
        self.d = model.cfg.d_model

    def start(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> DecoderCache:
        """memory [B, H, d], memory_mask [B, H] (True = real) -> cache with cross K/V."""
        ks, vs = [], []
        for layer in self.layers:
            w, b = layer.multihead_attn.in_proj_weight, layer.multihead_attn.in_proj_bias
            k = F.linear(memory, w[self.d:2 * self.d], b[self.d:2 * self.d])
            v = F.linear(memory, w[2 * self.d:], b[2 * self.d:])
            ks.append(_split_heads(k, self.heads))
            vs.append(_split_heads(v, self.heads))
        return DecoderCache(ks, vs, memory_mask[:, None, None, :])

    def step(self, cache: DecoderCache, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """tokens [B, W, d] input embeddings at code position ``position`` -> hidden [B, W, d]."""
        batch, width, d = tokens.shape
        x = (tokens + self.model.code_pos[position]).reshape(batch * width, 1, d)
        for i, layer in enumerate(self.layers):
            sa = layer.self_attn
            q, k, v = F.linear(layer.norm1(x), sa.in_proj_weight, sa.in_proj_bias).chunk(3, -1)
            q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))
            if position == 0:
                cache.self_k.append(k)
                cache.self_v.append(v)
            else:
                cache.self_k[i] = torch.cat([cache.self_k[i], k], 2)
                cache.self_v[i] = torch.cat([cache.self_v[i], v], 2)
            attn = F.scaled_dot_product_attention(q, cache.self_k[i], cache.self_v[i])
            x = x + sa.out_proj(_merge_heads(attn))
            ca = layer.multihead_attn
            q = F.linear(layer.norm2(x), ca.in_proj_weight[:d], ca.in_proj_bias[:d])
            q = _split_heads(q.view(batch, width, d), self.heads)  # beams on the query axis
            attn = F.scaled_dot_product_attention(q, cache.memory_k[i], cache.memory_v[i],
                                                  attn_mask=cache.memory_mask)
            x = x + ca.out_proj(_merge_heads(attn)).view(batch * width, 1, d)
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        return self.model.decoder.norm(x).view(batch, width, d)

    def embed(self, codes: torch.Tensor, level: int) -> torch.Tensor:
        """Decoder input for the code just chosen at ``level``: [B, W] -> [B, W, d]."""
        return self.model.code_vectors(level, codes)

    def bos(self, batch: int) -> torch.Tensor:
        return self.model.bos.expand(batch, 1, -1)
