"""What every method is: its settings (a config section, ``method:``) and the pieces it builds.

A method is a pydantic model: its fields are the config's ``method`` section, with the paper's
defaults, and its methods build what differs between methods. ``family`` says which path through
the pipeline it takes: ``two_stage`` (a tokenizer fitted on the text, then frozen), ``joint`` (the
tokenizer moves into the model and learns with it) or ``parallel`` (long unordered SIDs).

A joint method (:class:`JointMethod`) builds the code assignment used while the index learns, the
temperature of that assignment at each point of training, the heads (tied to the codebooks or
not, dot product or scaled cosine), the decoder's input for a code and the weights of the loss
terms; :class:`gensid.train.objectives.JointObjective` applies them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from gensid.fields import Float
from gensid.quantize.assign import Assignment

Family = Literal["two_stage", "joint", "parallel"]
DecoderInput = Literal["codebook", "embedding+codebook"]


LOSS_TERMS = {
    "global_cosine": "1 - cos(z_base, sum of the level vectors)",
    "codebook": "per-level codebook + beta x commitment",
    "rqvae_reconstruction": "MSE of the RQ-VAE decoder's text reconstruction",
    "infonce": "in-batch InfoNCE between the context vector and the target's item vector (trains the vectors "
               "that order items sharing a SID)",
    "diversity": "1 - normalised entropy of the batch's mean code distribution",
}


def loss_weight(term: str, default: float) -> Any:
    """The field of a loss term's weight (a method's default, the term's description)."""
    return Field(default, ge=0, description=f"loss weight: {LOSS_TERMS[term]}")


class Method(BaseModel):
    """A method's settings; unknown keys are errors, values are checked at load."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    family: ClassVar[Family]

    @property
    def joint(self) -> bool:
        return self.family == "joint"

    @property
    def noise_decay(self) -> str:
        """The quantizer's uncertainty decay of the assignment noise (DIGER's; `none` otherwise)."""
        return "none"


class JointMethod(Method):
    """A method whose index learns with the recommender. The loss weights' defaults are each
    method's own (the total is ``next_token + sum(weight x term)``; a zero weight skips its term)."""

    family: ClassVar[Family] = "joint"
    decoder_input: DecoderInput = Field("codebook", description="the decoder's input for a code: `codebook` "
                                        "(the assignment's vector: soft, straight-through or hard) or "
                                        "`embedding+codebook` (a learned code embedding plus that vector; a "
                                        "warm start from a two-stage run keeps its embeddings)")
    global_cosine: Float = loss_weight("global_cosine", 0.0)
    codebook: Float = loss_weight("codebook", 0.0)
    rqvae_reconstruction: Float = loss_weight("rqvae_reconstruction", 0.0)
    infonce: Float = loss_weight("infonce", 0.1)
    diversity: Float = loss_weight("diversity", 0.0)

    def assignment(self) -> Assignment:
        """How items get codes while the index learns."""
        raise NotImplementedError

    def tau(self, progress: float) -> float:
        """The assignment's Gumbel-Softmax temperature at ``progress`` (0 -> 1) of training."""
        return 1.0

    @property
    def tie_heads(self) -> bool:
        """Whether the head of level m *is* codebook m."""
        return False

    @property
    def logits(self) -> str:
        """How heads score hidden states: `dot` or `cosine` (gamma x cos, gamma learnable)."""
        return "dot"

    def loss_weights(self) -> dict[str, float]:
        """Weight of every loss term by name (terms with weight 0 are not computed)."""
        return {"next_token": 1.0, "global_cosine": self.global_cosine, "codebook": self.codebook,
                "rqvae_reconstruction": self.rqvae_reconstruction, "infonce": self.infonce,
                "diversity": self.diversity}
