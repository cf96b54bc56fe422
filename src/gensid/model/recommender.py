"""The generative recommender: one encoder token per history item, one decoder token per code.

Shapes: B users, H history slots, L code positions (quantizer levels + the
disambiguation code), d = ``d_model``.

- A history item becomes one token: the sum of its per-level code embeddings
  (optionally plus a projection of its frozen text vector) and a position embedding.
  That is L times fewer encoder tokens than one token per code (TIGER), measured in
  ``benchmarks/speed.py``.
- The decoder reads ``[BOS, c_1, ..., c_{L-1}]`` and emits the logits of ``c_1..c_L``,
  one :class:`CodeHead` per position, so position m can only emit codes of level m.
- A head's weight is a ``[K_m, d]`` matrix; scoring is dot product or scaled cosine
  (``gamma * cos``, learnable ``gamma``).

With a ``tokenizer`` (the joint methods, :mod:`gensid.methods`, which choose the options
below) the item side lives in the model and learns with it: the decoder's input for a code
is the quantizer's codebook vector (during training the assignment's soft/straight-through
vector, so the next-token loss reaches the codebooks and the item encoder), optionally plus a
learned code embedding (``decoder_input``), history items can be fed as their quantized vectors,
the heads can *be* the codebooks (``tie_heads``: DGI's symmetric weight sharing), and
a context vector (pooled memory) is scored against item vectors for in-batch InfoNCE
and to order items that share a SID. A quantizer latent wider than ``d_model`` (say
the full 384-d text space, where residual k-means gives the two-stage codes) enters
the Transformer through one linear projection; tied heads need the two to be equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gensid.config.sections import ModelConfig
from gensid.errors import ConfigError, InputError
from gensid.model.decoder import CodeDecoder, DecoderCache
from gensid.quantize.residual import ResidualQuantizer
from gensid.quantize.rqvae import RQVAE

HISTORY_INPUTS = ("codes", "codes+text", "quantized", "quantized+text", "code_tokens")
DECODER_INPUTS = ("embedding", "codebook", "embedding+codebook")


class CodeHead(nn.Module):
    """Scores hidden states [*, d] against ``weight`` [K, d] -> logits [*, K]."""

    def __init__(self, num_codes: int, dim: int, logits: str = "dot", gamma_init: float = 30.0):
        super().__init__()
        if logits not in ("dot", "cosine"):
            raise ConfigError(f"head logits {logits!r}: expected dot or cosine")
        self.logits = logits
        self.weight = nn.Parameter(torch.randn(num_codes, dim) * dim**-0.5)
        self.log_gamma = nn.Parameter(torch.tensor(float(gamma_init)).log()) if logits == "cosine" else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return score(h, self.weight, self.log_gamma)


class TiedHead(nn.Module):
    """A head whose weight *is* codebook ``level`` of ``quantizer`` (same storage)."""

    def __init__(self, quantizer: ResidualQuantizer, level: int, logits: str = "dot", gamma_init: float = 30.0):
        super().__init__()
        self._quantizer = [quantizer]  # a list: not registered twice as a submodule
        self.level = level
        self.log_gamma = nn.Parameter(torch.tensor(float(gamma_init)).log()) if logits == "cosine" else None

    @property
    def weight(self) -> torch.Tensor:
        return self._quantizer[0].codebooks[self.level]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return score(h, self.weight, self.log_gamma)


def score(h: torch.Tensor, weight: torch.Tensor, log_gamma: torch.Tensor | None) -> torch.Tensor:
    """[*, d] x [K, d] -> [*, K]: dot product, or ``gamma * cos`` when ``log_gamma`` is given."""
    if log_gamma is None:
        return h @ weight.T
    return log_gamma.exp() * F.normalize(h, dim=-1) @ F.normalize(weight, dim=-1).T


class GenerativeRecommender(nn.Module):
    """``decoder_input``, ``tie_heads`` and ``logits`` (``dot`` or ``cosine``) are a joint method's
    choices (:class:`gensid.methods.JointMethod`); without a ``tokenizer`` the decoder reads code
    embeddings and the heads are separate dot-product heads."""

    def __init__(self, code_sizes: list[int], cfg: ModelConfig, max_history: int,
                 text_dim: int | None = None, tokenizer: RQVAE | None = None, query_dim: int | None = None,
                 decoder_input: str = "embedding", tie_heads: bool = False, logits: str = "dot"):
        super().__init__()
        if cfg.history_input not in HISTORY_INPUTS:
            raise ConfigError(f"model.history_input {cfg.history_input!r}: expected one of {HISTORY_INPUTS}")
        if cfg.history_input.endswith("+text") and text_dim is None:
            raise ConfigError(f"model.history_input {cfg.history_input} needs item text vectors")
        if tokenizer is None and (cfg.history_input.startswith("quantized") or tie_heads):
            raise ConfigError("model.history_input quantized and tied heads need a joint method (a tokenizer)")
        if query_dim is not None and cfg.history_input == "code_tokens":
            raise ConfigError("search (a query token) needs one token per history item, not code_tokens")
        self.decoder_input = decoder_input
        if decoder_input not in DECODER_INPUTS:
            raise ConfigError(f"method.decoder_input {decoder_input!r}: expected one of {DECODER_INPUTS}")
        if tokenizer is None and decoder_input != "embedding":
            raise ConfigError(f"method.decoder_input {decoder_input} needs a joint method (a codebook)")
        d = cfg.d_model
        latent = tokenizer.quantizer.dim if tokenizer is not None else d
        if tie_heads and latent != d:
            raise ConfigError(f"tied heads score hidden states against the codebooks: quantizer.latent_dim "
                              f"({latent}) must equal model.d_model ({d})")
        self.code_sizes = list(code_sizes)
        self.cfg = cfg
        self.tokenizer = tokenizer
        # per-level code embeddings: the history tokens (codes*) and, without a tokenizer,
        # the decoder inputs; with a tokenizer the decoder reads codebook vectors
        self.code_embeddings = nn.ModuleList([nn.Embedding(k, d) for k in code_sizes])
        # quantized item vectors [.., latent] -> Transformer width (identity when equal)
        self.latent_proj = nn.Linear(latent, d) if latent != d else nn.Identity()
        if cfg.embedding_init_std > 0:
            # small init (as GPT-2): torch's N(0, 1) default drowns the text projection and
            # takes Adam thousands of steps to reshape
            for emb in self.code_embeddings:
                nn.init.normal_(emb.weight, std=cfg.embedding_init_std)
        self.text_proj = nn.Linear(text_dim, d) if cfg.history_input.endswith("+text") else None
        self.history_pos = nn.Parameter(torch.randn(max_history, d) * 0.02)
        # search: the query's frozen sentence vector becomes one more encoder token, after the history
        self.query_proj = nn.Linear(query_dim, d) if query_dim is not None else None
        self.query_pos = nn.Parameter(torch.randn(d) * 0.02) if query_dim is not None else None
        self.code_pos = nn.Parameter(torch.randn(len(code_sizes), d) * 0.02)
        self.bos = nn.Parameter(torch.randn(d) * 0.02)

        encoder_layer = nn.TransformerEncoderLayer(d, cfg.n_heads, cfg.d_ff, cfg.dropout, activation="gelu",
                                                   batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(encoder_layer, cfg.encoder_layers, norm=nn.LayerNorm(d),
                                             enable_nested_tensor=False)
        self.decoder = CodeDecoder(d, cfg.n_heads, cfg.d_ff, cfg.decoder_layers, cfg.dropout)
        # tied heads are the quantizer's codebooks; a disambiguation position has no codebook
        levels = tokenizer.quantizer.num_levels if tie_heads else 0
        self.heads = nn.ModuleList([TiedHead(tokenizer.quantizer, m, logits) if m < levels
                                    else CodeHead(k, d, logits) for m, k in enumerate(code_sizes)])
        self.context_proj = nn.Linear(d, latent) if tokenizer is not None else None

    @property
    def num_levels(self) -> int:
        return len(self.code_sizes)

    def embed_items(self, codes: torch.Tensor) -> torch.Tensor:
        """[..., L] codes -> [..., d] sum of the per-level code embeddings."""
        return sum(emb(codes[..., m]) for m, emb in enumerate(self.code_embeddings))

    def code_vectors(self, level: int, codes: torch.Tensor, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder input for chosen codes of ``level``: [...] -> [..., d]. ``vectors`` [..., latent]:
        the assignment's vectors of these codes (training: soft or straight-through), by default
        the codebook rows."""
        out = self.code_embeddings[level](codes) if self.decoder_input != "codebook" else 0
        if self.decoder_input != "embedding":
            if vectors is None:
                vectors = self.tokenizer.quantizer.codebook(level)[codes]
            out = out + self.latent_proj(vectors)
        return out

    def encode(self, history_codes: torch.Tensor, history_mask: torch.Tensor,
               history_text: torch.Tensor | None = None, history_vectors: torch.Tensor | None = None,
               query: torch.Tensor | None = None) -> torch.Tensor:
        """history_codes [B, H, L] (any value where masked), history_mask [B, H] True = real item,
        history_text [B, H, text_dim] or None, history_vectors [B, H, d] quantized item vectors
        (history_input quantized*), query [B, query_dim] (search models) -> memory [B, H(+1), d]."""
        codes = history_codes.clamp(min=0)
        if self.cfg.history_input == "code_tokens":
            return self._encode_code_tokens(codes, history_mask)
        if self.cfg.history_input.startswith("quantized"):
            tokens = self.latent_proj(history_vectors)
        else:
            tokens = self.embed_items(codes)
        if self.text_proj is not None:
            tokens = tokens + self.text_proj(history_text)
        tokens = tokens + self.history_pos[-tokens.shape[1]:]
        if self.query_proj is not None:
            if query is None:
                raise InputError("this is a search model: give the query vectors")
            tokens = torch.cat([tokens, (self.query_proj(query) + self.query_pos).unsqueeze(1)], 1)
        return self.encoder(tokens, src_key_padding_mask=~self.memory_mask(history_mask))

    def _encode_code_tokens(self, codes: torch.Tensor, history_mask: torch.Tensor) -> torch.Tensor:
        """TIGER's input for comparison: one token per code -> memory [B, H*L, d]."""
        b, h, n = codes.shape
        per_code = torch.stack([emb(codes[..., m]) for m, emb in enumerate(self.code_embeddings)], 2)
        tokens = per_code + self.code_pos + self.history_pos[-h:].unsqueeze(1)
        mask = history_mask.repeat_interleave(n, 1)
        return self.encoder(tokens.reshape(b, h * n, -1), src_key_padding_mask=~mask)

    def memory_mask(self, history_mask: torch.Tensor) -> torch.Tensor:
        """Key mask of the encoder memory [B, H], [B, H+1] (search: the query token) or [B, H*L]
        (code_tokens)."""
        if self.cfg.history_input == "code_tokens":
            return history_mask.repeat_interleave(self.num_levels, 1)
        if self.query_proj is not None:
            return torch.cat([history_mask, history_mask.new_ones(len(history_mask), 1)], 1)
        return history_mask

    def context(self, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """The user's context vector [B, latent], comparable with item vectors: projected mean of
        the real memory tokens (joint only)."""
        weights = memory_mask.unsqueeze(-1).to(memory.dtype)
        pooled = (memory * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.context_proj(pooled)

    def decode(self, memory: torch.Tensor, memory_mask: torch.Tensor, prefix: torch.Tensor,
               prefix_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """memory [B, H, d], memory_mask [B, H], prefix [B, m] codes of levels 0..m-1 (and
        ``prefix_vectors`` [B, m, latent], their assignment vectors; see :meth:`code_vectors`)
        -> hidden states [B, m+1, d] (the last predicts level m)."""
        steps = [self.bos.expand(prefix.shape[0], 1, -1)]
        if prefix.shape[1]:
            steps.append(torch.stack([
                self.code_vectors(m, prefix[:, m], None if prefix_vectors is None else prefix_vectors[:, m])
                for m in range(prefix.shape[1])], 1))
        return self.decoder(torch.cat(steps, 1) + self.code_pos[: prefix.shape[1] + 1], memory, memory_mask)

    def decode_step(self, cache: DecoderCache, tokens: torch.Tensor, position: int) -> torch.Tensor:
        """Beam search's incremental :meth:`decode`: tokens [B, W, d], the decoder inputs of code
        ``position`` (the BOS, then :meth:`code_vectors`) of W beams per user, ``cache`` from
        ``self.decoder.start(memory, memory_mask)`` -> hidden states [B, W, d]."""
        return self.decoder.step(cache, tokens + self.code_pos[position])

    def forward(self, history_codes: torch.Tensor, history_mask: torch.Tensor, target_codes: torch.Tensor,
                history_text: torch.Tensor | None = None, query: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Teacher forcing: target_codes [B, L] -> L logits tensors [B, K_m]."""
        memory = self.encode(history_codes, history_mask, history_text, query=query)
        return self.code_logits(memory, history_mask, target_codes[:, :-1])

    def code_logits(self, memory: torch.Tensor, history_mask: torch.Tensor, prefix: torch.Tensor,
                    prefix_vectors: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Teacher forcing from memory; prefix (and prefix_vectors) as in :meth:`decode`, all L-1
        levels -> L x [B, K_m]."""
        hidden = self.decode(memory, self.memory_mask(history_mask), prefix, prefix_vectors)
        return [head(hidden[:, m]) for m, head in enumerate(self.heads)]

    def loss(self, logits: list[torch.Tensor], target_codes: torch.Tensor, label_smoothing: float = 0.0
             ) -> torch.Tensor:
        """Mean next-code cross-entropy over the L positions."""
        return sum(F.cross_entropy(lg.float(), target_codes[:, m], label_smoothing=label_smoothing)
                   for m, lg in enumerate(logits)) / len(logits)
