"""Shared fixtures: paths to the real data (skipped when absent) and small synthetic pieces."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
torch.set_num_threads(min(2, os.cpu_count() or 1))


def shared_dataset(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is absent (the real Amazon data lives in ../shared/data)")
    return path


def tiny_ml100k(epochs: int) -> list[str]:
    """Overrides of configs/ml100k.yaml for a run of seconds: 40 users, a one-layer d32 model."""
    return ["data.max_users=40", f"train.epochs={epochs}", "train.threads=1", "train.batch_size=32",
            "model.d_model=32", "model.d_ff=64", "model.encoder_layers=1", "model.decoder_layers=1",
            "quantizer.codebook_sizes=[16,16]", "eval.ks=[5,10]", "eval.beam_size=10"]


def kill_at_first_checkpoint(command: list[str], run_dir: Path, env: dict[str, str]) -> None:
    """Start training with ``command`` and SIGKILL it as soon as ``run_dir`` holds its first checkpoint
    (the second epoch running), before it finishes."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoint.safetensors").exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists(), "the run finished before it was killed"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def random_sids(rng: np.random.Generator, n: int, sizes: list[int]) -> np.ndarray:
    """n unique full SIDs [n, len(sizes)] drawn uniformly (last position disambiguates)."""
    from gensid.quantize import SemanticIDs

    codes = np.stack([rng.integers(0, k, n) for k in sizes[:-1]], 1)
    return SemanticIDs.from_codes(codes, sizes[:-1]).codes
