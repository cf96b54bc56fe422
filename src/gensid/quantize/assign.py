"""Assignment strategies: given one level's logits and codebook, pick codes and the vectors
that flow on. Swappable by name; each decides where gradients go.

- ``argmax``: hard codes, the codebook vector passes on with no gradient to the input
  (the frozen index of the two-stage pipeline; codebooks learn only from their own losses).
- ``ste``: hard codes, straight-through: forward is the codebook vector, backward is the
  identity to the input residual (the VQ-VAE estimator; naive joint training).
- ``gumbel_soft`` (DGI): ``p = softmax((s + g) / tau)``, the soft vector ``p @ E`` flows on,
  so a downstream loss reaches the codebook and, through ``s``, the item encoder; the
  hard codes ``argmax s`` (noise-free, the codes the index will hold) are the supervision
  targets. Noisy targets (``argmax p``) flip codes whose scores are close, which with 256
  codes in 128 dimensions is most of them, and the recommender then chases noise.
- ``dril`` (DIGER): Gumbel noise on the logits, the hard code of the noisy logits in the
  forward pass, gradients through the soft probabilities ``softmax(noisy / T)``.

``noise_weight`` (a scalar or a per-code [K] tensor) multiplies the Gumbel noise: the
quantizer's uncertainty decay sets it (SDUD: a learned scale; FrqUD: 1 on hot codes only).

``tau`` is the Gumbel-Softmax temperature of ``gumbel_soft`` and ``dril``; the caller passes it
(a method's schedule, :meth:`gensid.methods.JointMethod.tau`). In eval mode
(``training=False``) every strategy is the deterministic argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gensid.errors import ConfigError


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    u = torch.rand_like(like).clamp_(1e-9, 1 - 1e-9)
    return -torch.log(-torch.log(u))


@dataclass(frozen=True)
class Assignment:
    """``__call__(logits [N, K], codebook [K, D], residual [N, D]) -> (codes [N], vectors [N, D])``."""

    name: str = "argmax"

    def __post_init__(self) -> None:
        if self.name not in ASSIGNMENTS:
            raise ConfigError(f"assignment {self.name!r}: expected one of {sorted(ASSIGNMENTS)}")

    def __call__(self, logits: torch.Tensor, codebook: torch.Tensor, residual: torch.Tensor,
                 training: bool = True, noise_weight: torch.Tensor | float = 1.0, tau: float = 1.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if not training or self.name == "argmax":
            codes = logits.argmax(-1)
            return codes, codebook[codes].detach() if self.name == "argmax" else codebook[codes]
        if self.name == "ste":
            codes = logits.argmax(-1)
            hard = codebook[codes]
            return codes, residual + (hard - residual).detach()
        noisy = logits + noise_weight * gumbel_noise(logits)
        probs = (noisy / tau).softmax(-1)
        soft = probs @ codebook
        codes = noisy.argmax(-1)
        if self.name == "gumbel_soft":
            return logits.argmax(-1), soft
        hard = codebook[codes]  # dril: hard forward, soft backward
        return codes, hard + soft - soft.detach()


ASSIGNMENTS = ("argmax", "ste", "gumbel_soft", "dril")
ARGMAX = Assignment("argmax")  # the index's own codes: a frozen item side, and every eval-mode call
