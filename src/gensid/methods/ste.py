"""Straight-through joint training (the naive baseline of DIGER): hard codes forward, the identity
gradient to the item encoder (VQ-VAE's estimator). Loss weights as DIGER's, without its noise."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gensid.fields import Float
from gensid.methods.base import JointMethod
from gensid.quantize.assign import Assignment


class STE(JointMethod):
    """Hard codes with a straight-through gradient; no temperature."""

    name: Literal["ste"] = "ste"
    codebook: Float = Field(1.0, ge=0, description="loss weight: per-level codebook + beta x commitment")
    rqvae_reconstruction: Float = Field(1.0, ge=0, description="loss weight: MSE of the RQ-VAE decoder's "
                                        "text reconstruction")

    def assignment(self) -> Assignment:
        return Assignment("ste")
