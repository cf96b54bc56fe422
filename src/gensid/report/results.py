"""The results files of DESIGN.md (``<dataset>-<task>.json`` in a results folder the caller names,
e.g. the research record's ``research/results/``): a JSON list of rows
``{method, variant, split, seed, metrics, train_minutes, command, commit}``."""

from __future__ import annotations

import fcntl
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import mean, stdev

from gensid.io import write_json


def git_commit() -> str:
    """HEAD of the working directory's repository, with "+dirty" if ``src/`` or ``configs/`` has
    uncommitted changes; "unknown" outside a git checkout."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        return git("rev-parse", "HEAD") + ("+dirty" if git("status", "--porcelain", "src", "configs") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def mean_std(values: list[float]) -> str:
    """A table cell: the value of a single seed, else mean ± sample std over the seeds."""
    return f"{values[0]:.4f}" if len(values) == 1 else f"{mean(values):.4f} ± {stdev(values):.4f}"


def epochs_cell(rows: list[dict]) -> str:
    """A table cell: the distinct numbers of epochs trained (within a time budget a slower
    machine fits fewer), e.g. ``13`` or ``12/13``; blank where the rows do not record them."""
    return "/".join(str(e) for e in sorted({r["epochs"] for r in rows if r.get("epochs") is not None}))


def row_key(row: dict) -> tuple:
    return tuple(row.get(k) for k in ("method", "variant", "split", "seed"))


def read_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else []


def upsert_rows(path: str | Path, rows: list[dict]) -> Path:
    """Add ``rows`` to the results file ``path``, replacing rows with the same method, variant,
    split and seed; each row needs method, variant, split, seed, metrics, train_minutes, command.
    A row without a ``commit`` (the code that trained it) gets HEAD now."""
    path = Path(path)
    commit = git_commit()
    keys = {row_key(r) for r in rows}
    with locked(path):
        kept = [r for r in read_rows(path) if row_key(r) not in keys]
        write_json(path, kept + [{"commit": commit, **r} for r in rows])
    return path


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on results file ``path`` (a lock file beside it). Benchmark processes
    on different cores write the same files: a read-modify-write outside the lock could lose what
    another process wrote between the read and the write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def update_entry(path: str | Path, key: str, entry: dict) -> Path:
    """Set ``key`` of the JSON object in ``path`` (created if absent) to ``entry``, under the lock."""
    path = Path(path)
    with locked(path):
        entries = json.loads(path.read_text()) if path.exists() else {}
        entries[key] = entry
        write_json(path, entries)
    return path


def total_train_minutes(metrics: dict) -> float:
    """Training minutes of a run (its metrics.json), with those of the run it warm-started from."""
    return metrics["train_minutes"] + metrics.get("init_train_minutes", 0.0)


def run_rows(method: str, variant: str, seed: int, metrics: dict, run_dir: str | Path, command: str) -> list[dict]:
    """The valid and test rows of one finished training run (``metrics``: its metrics.json, whose
    ``commit`` is the code the run started on); the test row also carries hit@10 by
    item-popularity bucket, for the popularity plots. A warm start's train minutes include
    those of the run it started from. On a cold-start split each row also has ``metrics_new`` and
    ``metrics_seen``, the metrics of the new-item and the seen-item targets."""
    rows = []
    minutes = total_train_minutes(metrics)
    for split in ("valid", "test"):
        row = {"method": method, "variant": variant, "split": split, "seed": seed, "metrics": metrics[split],
               "train_minutes": round(minutes, 2), "epochs": metrics["epochs"],
               "best_epoch": metrics["best_epoch"], "run_dir": str(run_dir), "command": command}
        if metrics.get("commit"):
            row["commit"] = metrics["commit"]
        if metrics.get("init_from"):
            row["init_from"] = metrics["init_from"]
        for subset in ("new", "seen"):  # a cold-start split: the new-item and the seen-item targets
            if f"{split}_{subset}" in metrics:
                row[f"metrics_{subset}"] = metrics[f"{split}_{subset}"]
        if split == "test" and metrics.get("test_by_popularity"):
            row["test_by_popularity"] = metrics["test_by_popularity"]
        rows.append(row)
    return rows


def upsert_row(dataset: str, task: str, row: dict, results_dir: str | Path) -> Path:
    """Add ``row`` to ``<results_dir>/<dataset>-<task>.json`` (:func:`upsert_rows`)."""
    return upsert_rows(Path(results_dir) / f"{dataset}-{task}.json", [row])
