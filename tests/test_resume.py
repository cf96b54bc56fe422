"""A training run killed with SIGKILL resumes from its last checkpoint to exactly the metrics of
an uninterrupted run; a truncated or corrupted checkpoint stops the run with a clear error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import kill_at_first_checkpoint, tiny_ml100k
from gensid.io import load_tensors

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_ml100k(epochs=4)


def train_command(run_dir: Path) -> list[str]:
    sets = [arg for s in TINY for arg in ("--set", s)]
    return [sys.executable, "-m", "gensid.cli", "train", str(ROOT / "configs/ml100k.yaml"), "--run-dir", str(run_dir),
            "--examples", "0", *sets]


def environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "500"}


def train(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(run_dir), env=environment(), capture_output=True, text=True, timeout=600)


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def kill_after_first_epoch(run_dir: Path) -> None:
    """Start training, SIGKILL it as soon as the first checkpoint is written (epoch 2 running)."""
    kill_at_first_checkpoint(train_command(run_dir), run_dir, environment())


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("straight")
    result = train(run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    kill_after_first_epoch(run_dir)
    return run_dir


def test_killed_run_resumes_to_the_metrics_of_an_uninterrupted_run(straight, killed, tmp_path):
    run_dir = shutil.copytree(killed, tmp_path / "run")
    result = train(run_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = [e for e in events(run_dir) if e.get("event") == "resume"]
    assert resumed and resumed[0]["epoch"] >= 1  # it did not start over
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, run_dir))
    for key in ("epochs", "best_epoch", "valid", "test", "test_by_popularity", "sid"):
        assert a[key] == b[key], key
    weights_a, weights_b = (load_tensors(d / "model.safetensors")[0] for d in (straight, run_dir))
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.mark.parametrize(("damage", "message"), [("truncate", "not a readable safetensors file"),
                                                  ("garble_header", "not a readable safetensors file"),
                                                  ("flip_tensor_bytes", "corrupted")])
def test_a_damaged_checkpoint_stops_the_run_with_a_clear_error(killed, tmp_path, damage, message):
    run_dir = shutil.copytree(killed, tmp_path / "run")
    checkpoint = run_dir / "checkpoint.safetensors"
    data = bytearray(checkpoint.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garble_header":
        data[:64] = b"\xff" * 64
    else:  # inside the tensor data: safetensors alone would load this silently
        middle = len(data) // 2
        data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    checkpoint.write_bytes(bytes(data))
    result = train(run_dir)
    assert result.returncode == 1
    assert f"{checkpoint}: {message}" in result.stderr
    assert "Traceback" not in result.stderr  # bad input is a message, not a crash
