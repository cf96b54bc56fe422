"""``train.freeze_index_epoch``: a joint run whose index learns for the first epochs, then stays
fixed while the recommender trains on (the last epochs of two-stage, on learned SIDs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import tiny_ml100k
from gensid.config import load_config
from gensid.errors import ConfigError
from gensid.pipeline import load_run, train_run

TINY = tiny_ml100k(epochs=3)
# DGI on an RQ-VAE item encoder, with a learning rate that moves codes in one epoch
JOINT = ["method={name: dgi, weight_sharing: false, global_cosine: 0, infonce: 0, diversity: 0}",
         "quantizer.method=rqvae", "quantizer.latent_dim=32", "quantizer.hidden_dims=[64]", "quantizer.epochs=5",
         "quantizer.geometry=cosine", "train.quantizer_lr=3e-2"]


def epoch_records(run_dir) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"event": "epoch"' in line]


@pytest.mark.parametrize("precision", [[], ["train.bf16=true"]], ids=["fp32", "bf16"])
def test_the_index_learns_until_the_freeze_epoch_and_then_stays(tmp_path, precision):
    cfg = load_config("configs/ml100k.yaml", [*TINY, *JOINT, "train.freeze_index_epoch=1", *precision])
    train_run(cfg, tmp_path, progress=False)
    epochs = epoch_records(tmp_path)
    assert '"event": "index_frozen", "epoch": 1' in (tmp_path / "log.jsonl").read_text()
    # epoch 1: the next-token loss reaches the item encoder and the SIDs move
    assert max(epochs[0]["terms"]["item_encoder_grad_norm"]) > 0
    assert epochs[0]["analysis"]["drift_incremental"] > 0
    # epochs 2 and 3: nothing reaches the item side and no item changes SID
    for record in epochs[1:]:
        assert max(record["terms"]["item_encoder_grad_norm"]) == 0
        assert record["analysis"]["drift_incremental"] == 0
    # the saved index is the frozen tokenizer's deterministic assignment
    run = load_run(tmp_path)
    with torch.no_grad():
        codes = run.model.tokenizer.quantizer.encode(run.model.tokenizer.encoder(run.text))
    assert np.array_equal(run.index.codes, codes.numpy())


def test_freezing_needs_an_index_that_learns():
    with pytest.raises(ConfigError, match="train.freeze_index_epoch: 1 needs a joint method"):
        load_config("configs/ml100k.yaml", [*TINY, "train.freeze_index_epoch=1"])


def test_a_run_resumed_inside_the_freeze_epoch_logs_the_freeze_once(tmp_path, monkeypatch):
    from gensid.train.trainer import Trainer

    train_epoch = Trainer.train_epoch
    interrupted: list[bool] = []

    def interrupted_in_epoch_2(self):
        if self.epoch == 1 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return train_epoch(self)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted_in_epoch_2)
    cfg = load_config("configs/ml100k.yaml", [*TINY, *JOINT, "train.freeze_index_epoch=1"])
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path, progress=False)
    train_run(cfg, tmp_path, progress=False)  # resumes at the start of epoch 2, the first frozen one
    events = [json.loads(line)["event"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert "resume" in events
    assert events.count("index_frozen") == 1
