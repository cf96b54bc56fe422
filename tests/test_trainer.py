import json

import numpy as np
import pytest
import torch

from gensid.config import ExperimentConfig, ModelConfig, TrainConfig
from gensid.data.catalog import Interactions
from gensid.data.splits import leave_one_out
from gensid.errors import RunError
from gensid.model import GenerativeRecommender
from gensid.train import ItemFeatures, Trainer
from gensid.train.objectives import NextTokenObjective
from gensid.train.trainer import length_bucketed_batches

SIZES = [4, 4, 2]


def toy_problem(rng):
    codes = np.array([[a, b, 0] for a in range(4) for b in range(4)])  # 16 items
    seqs = [rng.integers(0, 16, rng.integers(4, 12)) for _ in range(60)]
    split = leave_one_out(Interactions([str(i) for i in range(60)], seqs), max_history=5)
    return split, ItemFeatures(torch.from_numpy(codes))


def make_trainer(run_dir, split, items, epochs=3, before_epoch=None, stop_epoch=0, bf16=False):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_heads=2, encoder_layers=1, decoder_layers=1, d_ff=32, dropout=0.1)
    model = GenerativeRecommender(SIZES, cfg, max_history=5)
    train_cfg = TrainConfig(epochs=epochs, batch_size=16, warmup_steps=5, lr=3e-3, stop_epoch=stop_epoch,
                            bf16=bf16)
    # a validation score that changes with the weights, so "best model" bookkeeping is exercised
    validate = lambda m: {"ndcg@10": float(m.heads[0].weight.detach().sum())}  # noqa: E731
    return Trainer(model, train_cfg, split.train, lambda: items, run_dir, validate, NextTokenObjective(ExperimentConfig()),
                   progress=False, before_epoch=before_epoch)


class Killed(Exception):
    pass


def kill_in_epoch_two(trainer: Trainer) -> None:
    """Make ``trainer`` die as its second epoch starts, after the first one's checkpoint."""
    original = trainer.train_epoch

    def die_in_epoch_two():
        if trainer.epoch == 1:
            raise Killed
        return original()

    trainer.train_epoch = die_in_epoch_two


def test_interrupted_run_resumes_to_identical_weights(tmp_path, rng):
    split, items = toy_problem(rng)
    straight = make_trainer(tmp_path / "a", split, items)
    straight.fit()
    interrupted = make_trainer(tmp_path / "b", split, items)
    kill_in_epoch_two(interrupted)
    with pytest.raises(Killed):
        interrupted.fit()
    resumed = make_trainer(tmp_path / "b", split, items)
    summary = resumed.fit()
    assert summary["epochs"] == 3
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    assert (tmp_path / "b" / "model.safetensors").exists()


def test_before_epoch_sees_the_weights_each_epoch_starts_from_also_after_a_resume(tmp_path, rng):
    """Joint runs rebuild their item codes in ``before_epoch``; a resumed run must do so from the
    restored weights, not from the freshly initialised model it was built with."""
    split, items = toy_problem(rng)
    seen: dict[str, list] = {"a": [], "b": []}

    def recorder(key):
        return lambda epoch: seen[key].append((epoch, trainers[key].model.heads[0].weight.sum().item()))

    trainers = {"a": None, "b": None}
    trainers["a"] = make_trainer(tmp_path / "a", split, items, before_epoch=recorder("a"))
    trainers["a"].fit()
    trainers["b"] = make_trainer(tmp_path / "b", split, items, before_epoch=recorder("b"))
    kill_in_epoch_two(trainers["b"])
    with pytest.raises(Killed):
        trainers["b"].fit()
    trainers["b"] = make_trainer(tmp_path / "b", split, items, before_epoch=recorder("b"))
    trainers["b"].fit()
    assert [epoch for epoch, _ in seen["a"]] == [0, 1, 2]
    assert [epoch for epoch, _ in seen["b"]] == [0, 1, 1, 2]  # epoch 1 started twice: killed, resumed
    expected = [w for _, w in seen["a"]]
    assert [w for _, w in seen["b"]] == pytest.approx([expected[0], *expected[1:2], *expected[1:]], rel=0, abs=1e-6)
    assert seen["b"][2][1] != pytest.approx(seen["b"][0][1], abs=1e-6)  # not the fresh model's weights


def test_stop_epoch_ends_a_run_early_on_the_full_runs_schedule(tmp_path, rng):
    split, items = toy_problem(rng)
    lr_at_epoch_start = {}
    full = make_trainer(tmp_path / "full", split, items, epochs=4,
                        before_epoch=lambda epoch: lr_at_epoch_start.setdefault(epoch, full.opt.param_groups[0]["lr"]))
    full.fit()
    stopped = make_trainer(tmp_path / "stopped", split, items, epochs=4, stop_epoch=2)
    assert stopped.fit()["epochs"] == 2
    # the learning rate is where the 4-epoch schedule has it after 2 epochs, not decayed to zero
    assert stopped.opt.param_groups[0]["lr"] == pytest.approx(lr_at_epoch_start[2]) and lr_at_epoch_start[2] > 1e-3
    short = make_trainer(tmp_path / "short", split, items, epochs=2)
    short.fit()
    assert short.opt.param_groups[0]["lr"] < 1e-4
    assert '"event": "stop_epoch_reached"' in (tmp_path / "stopped" / "log.jsonl").read_text()


def test_bf16_runs_the_forward_in_bfloat16_and_keeps_fp32_weights(tmp_path, rng):
    split, items = toy_problem(rng)
    fp32 = make_trainer(tmp_path / "fp32", split, items, epochs=1)
    bf16 = make_trainer(tmp_path / "bf16", split, items, epochs=1, bf16=True)
    seen: dict[str, set] = {"fp32": set(), "bf16": set()}
    for name, trainer in (("fp32", fp32), ("bf16", bf16)):
        for linear in (m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear)):
            linear.register_forward_hook(lambda _m, _i, out, name=name: seen[name].add(out.dtype))
        trainer.fit()
    assert seen == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # master weights stay fp32
    assert all(v.dtype == torch.float32 for s in bf16.opt.state.values() for v in s.values() if v.dim())
    changed = [not torch.equal(a, b) for a, b in zip(fp32.model.parameters(), bf16.model.parameters(), strict=True)]
    assert any(changed)  # bf16 rounding made a difference, so the setting is not ignored
    log = [json.loads(line) for line in (tmp_path / "bf16" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "epoch"]
    assert losses and all(np.isfinite(losses))


def test_corrupt_checkpoint_is_refused(tmp_path, rng):
    split, items = toy_problem(rng)
    trainer = make_trainer(tmp_path, split, items, epochs=1)
    trainer.fit()
    data = trainer.checkpoint_path.read_bytes()
    trainer.checkpoint_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="checkpoint.safetensors: not a readable safetensors file"):
        make_trainer(tmp_path, split, items).resume()


def test_length_buckets_cover_every_sample_once(rng):
    split, _ = toy_problem(rng)
    batches = length_bucketed_batches(split.train, 16, np.random.default_rng(1), bucket_batches=3)
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(len(split.train)))
    assert all(len(b) <= 16 for b in batches)
