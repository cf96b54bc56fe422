"""Straight-through joint training (the naive baseline of DIGER): hard codes forward, the identity
gradient to the item encoder (VQ-VAE's estimator). Loss weights as DIGER's, without its noise."""

from __future__ import annotations

from typing import Literal

from gensid.fields import Float
from gensid.methods.base import JointMethod, loss_weight
from gensid.quantize.assign import Assignment


class STE(JointMethod):
    """Hard codes with a straight-through gradient; no temperature."""

    name: Literal["ste"] = "ste"
    codebook: Float = loss_weight("codebook", 1.0)
    rqvae_reconstruction: Float = loss_weight("rqvae_reconstruction", 1.0)

    def assignment(self) -> Assignment:
        return Assignment("ste")
