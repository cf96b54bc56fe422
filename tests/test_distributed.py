"""Data-parallel training: 2 CPU processes (torchrun + DDP, gloo) against 1 process."""

import json
import os
import subprocess
import sys

import pytest

SETTINGS = ["data.max_users=100", "train.epochs=2", "model.dropout=0.0", "model.d_model=64",
            "model.encoder_layers=1", "model.decoder_layers=1", "model.d_ff=128", "train.batch_size=64",
            "train.warmup_steps=10", "train.lr=2e-3", "eval.max_users=100"]


def train(run_dir, *extra):
    args = [sys.executable, "-m", "gensid.cli", "train", "configs/ml100k.yaml", "--run-dir", str(run_dir),
            "--examples", "0", *extra]
    for item in SETTINGS:
        args += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return json.loads((run_dir / "metrics.json").read_text()), log


@pytest.mark.slow
def test_two_processes_stay_in_sync_and_match_one_process(tmp_path):
    single, single_log = train(tmp_path / "one")
    double, double_log = train(tmp_path / "two", "--nproc", "2")
    replicas = [r for r in double_log if r["event"] == "replicas"]
    assert replicas and replicas[0]["world_size"] == 2
    assert replicas[0]["max_parameter_spread"] == 0.0  # DDP keeps the replicas identical
    assert not any(r["event"] == "replicas" for r in single_log)
    # same steps on the same batches (split across ranks): the losses agree closely
    losses = [[r["loss"] for r in log if r["event"] == "epoch"] for log in (single_log, double_log)]
    assert len(losses[0]) == len(losses[1]) == 2
    for a, b in zip(*losses, strict=True):
        assert abs(a - b) / a < 0.02, losses
    for split in ("valid", "test"):
        for name, value in single[split].items():
            assert abs(value - double[split][name]) <= 0.05, (split, name, value, double[split][name])
