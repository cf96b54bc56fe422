"""Two-stage (TIGER): the tokenizer is fitted on the item text vectors and frozen; the recommender
learns to generate the fixed SIDs (plus a disambiguation code) by next-code cross-entropy, reading
a learned embedding per code. Nothing reaches the tokenizer."""

from __future__ import annotations

from typing import ClassVar, Literal

from gensid.methods.base import Family, Method


class TwoStage(Method):
    """Fixed SIDs fitted on the text; no settings of its own."""

    name: Literal["two_stage"] = "two_stage"
    family: ClassVar[Family] = "two_stage"
