"""DGI, Differentiable Geometric Indexing: soft teacher forcing through Gumbel-Softmax vectors
(``p = softmax((s + g) / tau)``, ``z~ = p @ E``, tau annealed exponentially 1.0 -> 0.1), the head
of level m *is* codebook m (symmetric weight sharing), scaled-cosine heads (gamma x cos, gamma 30 at
the start), and the loss NTP + global cosine + codebook/commitment + InfoNCE + code-usage diversity.

The paper's three ablation switches are fields: ``soft_gradient_flow`` (off: hard argmax codes, no
gradient to the codebooks through the decoder), ``weight_sharing`` (off: separate heads) and
``scaled_cosine`` (off: dot-product heads). The quantizer's own geometry is the tokenizer's
``quantizer.geometry`` (DGI's recipe: ``cosine``), fitted before training; the paper's "without
scaled cosine" is ``scaled_cosine: false`` with ``quantizer.geometry: euclidean``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from gensid.fields import Float
from gensid.methods.base import JointMethod, loss_weight
from gensid.quantize.assign import Assignment


class DGI(JointMethod):
    """DGI's defaults; each switch is one of the paper's ablations."""

    name: Literal["dgi"] = "dgi"
    soft_gradient_flow: bool = Field(True, description="Gumbel-Softmax soft vectors as the decoder's inputs "
                                     "(off: hard argmax codes, nothing reaches the codebooks through them)")
    weight_sharing: bool = Field(True, description="the head of level m is codebook m (needs the quantizer's "
                                 "latent size = model.d_model)")
    scaled_cosine: bool = Field(True, description="heads score gamma x cos(h, e) with a learnable gamma "
                                "(30 at the start); off: the dot product")
    TAU_START: ClassVar[float] = 1.0  # the Gumbel-Softmax temperature, annealed exponentially ...
    TAU_END: ClassVar[float] = 0.1  # ... to this at the end of training
    global_cosine: Float = loss_weight("global_cosine", 1.0)
    codebook: Float = loss_weight("codebook", 0.25)
    diversity: Float = loss_weight("diversity", 0.01)

    def assignment(self) -> Assignment:
        return Assignment("gumbel_soft" if self.soft_gradient_flow else "argmax")

    def tau(self, progress: float) -> float:
        return self.TAU_START * (self.TAU_END / self.TAU_START) ** min(max(progress, 0.0), 1.0)

    @property
    def tie_heads(self) -> bool:
        return self.weight_sharing

    @property
    def logits(self) -> str:
        return "cosine" if self.scaled_cosine else "dot"
