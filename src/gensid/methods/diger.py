"""DIGER, differentiable semantic IDs for generative recommendation: DRIL (Gumbel noise on the
assignment logits, the hard code of the noisy logits forward, gradients through
``softmax(noisy / T)`` backward, T fixed at 2) with an uncertainty decay of the noise, and the
RQ-VAE's reconstruction and codebook losses beside next-token; separate dot-product heads, as the
paper's TIGER-based setup.

``decay`` is the paper's switch: ``none`` (the noise stays), ``sdud`` (a learned noise scale
sigma tied to the next-code loss, so it falls as the loss falls) or ``frqud`` (noise only on codes
used more than twice the uniform share); see :mod:`gensid.quantize.residual`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from gensid.fields import Float
from gensid.methods.base import JointMethod, loss_weight
from gensid.quantize.assign import Assignment


class DIGER(JointMethod):
    """DRIL with an uncertainty decay; DIGER's loss weights."""

    name: Literal["diger"] = "diger"
    decay: Literal["none", "sdud", "frqud"] = Field("frqud", description="uncertainty decay of the assignment "
                                                    "noise: `none`, `sdud` or `frqud`")
    TEMPERATURE: ClassVar[float] = 2.0  # DRIL's Gumbel-Softmax temperature, fixed
    codebook: Float = loss_weight("codebook", 1.0)
    rqvae_reconstruction: Float = loss_weight("rqvae_reconstruction", 1.0)

    def assignment(self) -> Assignment:
        return Assignment("dril")

    def tau(self, progress: float) -> float:
        return self.TEMPERATURE

    @property
    def noise_decay(self) -> str:
        return self.decay

    def loss_weights(self) -> dict[str, float]:
        """JointMethod's, plus SDUD's objective for sigma (weight 1) with ``decay: sdud``."""
        weights = super().loss_weights()
        return {**weights, "sdud": 1.0} if self.decay == "sdud" else weights
