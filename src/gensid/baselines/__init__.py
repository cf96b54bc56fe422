"""Honest baselines ranked over the full catalog: most popular, SASRec, BM25 and the dense dual encoder;
``gensid baseline`` trains one into a run folder (:mod:`gensid.baselines.training`)."""

from __future__ import annotations

import json
from pathlib import Path

BASELINE_FILE = "baseline.json"  # in a baseline's run folder: {"kind": ...}


def baseline_kind(folder: str | Path) -> str | None:
    """The kind of the baseline run in ``folder`` (its ``baseline.json``), or None if it holds none."""
    path = Path(folder) / BASELINE_FILE
    return json.loads(path.read_text())["kind"] if path.exists() else None
