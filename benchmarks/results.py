"""Read and write the results files of DESIGN.md (``benchmarks/results/<dataset>-<task>.json``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from gensid.io import write_json

RESULTS = Path(__file__).resolve().parent / "results"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=RESULTS.parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def upsert_row(dataset: str, task: str, row: dict) -> Path:
    """Add ``row`` to ``<dataset>-<task>.json``, replacing a row with the same method, variant,
    split and seed. ``row`` needs method, variant, split, seed, metrics, train_minutes, command."""
    path = RESULTS / f"{dataset}-{task}.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    key = tuple(row.get(k) for k in ("method", "variant", "split", "seed"))
    rows = [r for r in rows if tuple(r.get(k) for k in ("method", "variant", "split", "seed")) != key]
    rows.append({"commit": git_commit(), **row})
    write_json(path, rows)
    return path
