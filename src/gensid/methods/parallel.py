"""Parallel semantic IDs (RPG, Hou et al. KDD 2025): long unordered SIDs from product quantization,
every digit predicted at once, every catalog item scored exactly. Its settings are the model
family's, in the config's ``parallel`` section."""

from __future__ import annotations

from typing import ClassVar, Literal

from gensid.methods.base import Family, Method


class Parallel(Method):
    """Fixed OPQ digits; see the ``parallel`` section."""

    name: Literal["parallel"] = "parallel"
    family: ClassVar[Family] = "parallel"
