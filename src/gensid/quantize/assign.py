"""Assignment strategies: given one level's logits and codebook, pick codes and the vectors
that flow on. Swappable by name; each decides where gradients go.

- ``argmax``: hard codes, the codebook vector passes on with no gradient to the input
  (the frozen index of the two-stage pipeline; codebooks learn only from their own losses).
- ``ste``: hard codes, straight-through: forward is the codebook vector, backward is the
  identity to the input residual (the VQ-VAE estimator).
"""

from __future__ import annotations

from typing import Protocol

import torch


class Assignment(Protocol):
    def __call__(self, logits: torch.Tensor, codebook: torch.Tensor, residual: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``logits`` [N, K], ``codebook`` [K, D], ``residual`` [N, D] -> codes [N], vectors [N, D]."""
        ...


def argmax_assignment(logits: torch.Tensor, codebook: torch.Tensor, residual: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    codes = logits.argmax(dim=-1)
    return codes, codebook[codes]


def ste_assignment(logits: torch.Tensor, codebook: torch.Tensor, residual: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    codes = logits.argmax(dim=-1)
    hard = codebook[codes]
    return codes, residual + (hard - residual).detach()


ASSIGNMENTS: dict[str, Assignment] = {"argmax": argmax_assignment, "ste": ste_assignment}
