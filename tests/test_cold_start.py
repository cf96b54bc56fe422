"""The cold-start split (data.split cold_start): its invariants on MovieLens-100k, tokenizers fitted
without the new items, new items' vectors untouched by training, and new/seen-item metrics."""

import json

import numpy as np
import pytest
import torch

from conftest import tiny_ml100k
from gensid.baselines.sasrec import SASRec
from gensid.baselines.training import train_sasrec
from gensid.compare import compare_runs
from gensid.config import load_config
from gensid.data import load_dataset
from gensid.data.catalog import Interactions
from gensid.data.splits import (
    Samples,
    cold_start,
    first_seen_order,
    leave_one_out,
    training_sequences,
)
from gensid.errors import ConfigError, InputError
from gensid.eval.metrics import new_and_seen
from gensid.experiment import metric_cell
from gensid.io import load_tensors, seed_everything
from gensid.pipeline import load_run, prepare, save_test_ranks, train_run
from gensid.quantize import fit_semantic_ids
from gensid.quantize.product import ProductQuantizer
from gensid.report.results import run_rows


@pytest.fixture(scope="module")
def movielens():
    return load_dataset("movielens-100k")


def items_in(samples: Samples) -> set[int]:
    return set(samples.targets.tolist()) | set(samples.histories[samples.histories >= 0].tolist())


def test_cold_start_split_on_movielens(movielens):
    inter, n = movielens.interactions, len(movielens.catalog)
    split = cold_start(inter, n, 0.15, max_history=20)
    cold = split.cold_items
    assert len(cold) == round(0.15 * n) == 252
    # the newest share by first rating: every new item was first rated no earlier than any other item
    first = np.full(n, np.inf)
    for seq, times in zip(inter.sequences, inter.timestamps, strict=True):
        for item, t in zip(seq, times, strict=True):
            first[item] = min(first[item], t)
    warm = np.setdiff1d(np.arange(n), cold)
    assert first[cold].min() >= first[warm].max()
    assert np.array_equal(split.trained_items(n), warm)
    # no training sample has a new item, as target or in its history
    assert not items_in(split.train) & set(cold.tolist())
    # the same targets as leave-one-out, with the users' real histories; some targets are new items
    loo = leave_one_out(inter, 20)
    for part in ("valid", "test"):
        ours, theirs = getattr(split, part), getattr(loo, part)
        assert np.array_equal(ours.targets, theirs.targets) and np.array_equal(ours.histories, theirs.histories)
    assert 0 < split.new_targets(split.test).sum() < len(split.test) and loo.new_targets(loo.test) is None
    assert np.array_equal(split.new_targets(split.test), np.isin(split.test.targets, cold))
    # training is leave-one-out's on the sequences without the new items
    assert len(split.train) == sum(max(len(s) - 1, 0) for s in training_sequences(inter, cold)) < len(loo.train)
    again = cold_start(inter, n, 0.15, max_history=20)
    for part in ("train", "valid", "test"):
        for field in ("histories", "targets", "users"):
            assert np.array_equal(getattr(getattr(split, part), field), getattr(getattr(again, part), field))
    assert np.array_equal(split.cold_items, again.cold_items)


def test_without_timestamps_an_item_is_as_old_as_the_most_steps_made_after_it():
    # steps made after an item by one of its users, the most over its users: user 0 (0 1 2 3 4): 4 3 2 1 0;
    # user 1 (5 0 1 2): 3 3 2 1; user 2 (5 6 7): 2 1 0. Ages 0:4 1:3 2:2 3:1 4:0 5:3 6:1 7:0; item 8 has none
    inter = Interactions(["a", "b", "c"], [np.array([0, 1, 2, 3, 4]), np.array([5, 0, 1, 2]), np.array([5, 6, 7])])
    assert first_seen_order(inter, 9).tolist() == [0, 1, 5, 2, 3, 6, 4, 7, 8]  # ties: lower id older
    split = cold_start(inter, 8, 5 / 8, max_history=5)
    assert split.cold_items.tolist() == [2, 3, 4, 6, 7]
    assert [s.tolist() for s in training_sequences(inter, split.cold_items)] == [[0, 1], [5, 0], [5]]
    assert split.train.targets.tolist() == [1, 0] and split.train.histories[:, -1].tolist() == [0, 5]
    assert split.test.targets.tolist() == [4, 2, 7] and split.new_targets(split.valid).tolist() == [True, False, True]
    assert split.test.histories[1, -3:].tolist() == [5, 0, 1]  # the real history, a new item included if any


def test_cold_start_needs_recommendation():
    with pytest.raises(ConfigError, match=r"data.split: cold_start needs data.task rec"):
        load_config(None, ["data.split=cold_start", "data.task=search"])


def test_tokenizers_are_fitted_without_the_new_items(rng):
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    fit_items = np.sort(rng.choice(300, 240, replace=False))
    cold = np.setdiff1d(np.arange(300), fit_items)
    cfg = load_config(None, ["quantizer.codebook_sizes=[4,4]"]).quantizer
    tokenizer, sids, stats = fit_semantic_ids(vectors, cfg, seed=0, progress=False, fit_items=fit_items)
    alone, alone_sids, _ = fit_semantic_ids(vectors[fit_items], cfg, seed=0, progress=False)
    for name, value in alone.state_dict().items():  # the same tokenizer as one that never saw them
        assert torch.equal(tokenizer.state_dict()[name], value), name
    assert np.array_equal(sids.codes[:, :-1], tokenizer.encode(torch.from_numpy(vectors)).numpy())
    assert np.array_equal(sids.codes[fit_items], alone_sids.codes)  # trained items: their own disambiguation
    assert len(np.unique(sids.codes, axis=0)) == 300 and stats["fitted_items"] == 240  # every SID distinct
    assert (sids.codes[cold, -1] < sids.sizes[-1]).all()


@pytest.mark.parametrize("strategy", ["two_stage", "parallel"])
def test_a_run_fits_its_tokenizer_on_the_trained_items(tmp_path, strategy):
    parallel = ["method=parallel", "parallel.digits=8", "parallel.codebook_size=16", "parallel.opq=false",
                "model.history_input=codes"] if strategy == "parallel" else []
    cfg = load_config("configs/ml100k.yaml", [*tiny_ml100k(1), "data.split=cold_start", *parallel])
    run = prepare(cfg, tmp_path, progress=False)
    cold, text = run.splits.cold_items, run.text.numpy()
    trained = run.splits.trained_items(len(text))
    assert len(cold) > 0 and not items_in(run.splits.train) & set(cold.tolist())
    if strategy == "parallel":
        pq = ProductQuantizer.load(tmp_path / "index" / "pq.safetensors")
        refit = ProductQuantizer.fit(text[trained], 8, 16, opq=False)
        assert np.array_equal(pq.encode(text), refit.encode(text))
        assert np.array_equal(run.items.codes.numpy(), pq.encode(text))
    else:
        _, alone, _ = fit_semantic_ids(text[trained], cfg.quantizer, cfg.train.seed, progress=False)
        assert np.array_equal(run.index.codes[trained], alone.codes)
        assert len(np.unique(run.index.codes, axis=0)) == len(text)  # new items' SIDs collide with none


def test_new_and_seen_metrics_by_hand(tmp_path):
    ranks = np.array([0, 3, -1, 1])
    new = np.array([True, False, True, False])
    out = new_and_seen(ranks, new, [1, 5])
    assert out["new"]["recall@1"] == 0.5 and out["new"]["ndcg@5"] == 0.5
    assert out["seen"]["recall@1"] == 0.0 and out["seen"]["recall@5"] == 1.0
    assert out["seen"]["ndcg@5"] == pytest.approx((1 / np.log2(5) + 1 / np.log2(3)) / 2)
    assert set(new_and_seen(ranks, np.zeros(4, dtype=bool), [1])) == {"seen"}
    # gensid compare --subset new tests only the users whose target is new
    test = Samples(np.full((4, 2), -1), np.array([5, 6, 7, 8]), np.arange(4))
    save_test_ranks(tmp_path / "a", test, ranks, 20, new)
    save_test_ranks(tmp_path / "b", test, np.array([-1, 3, -1, 1]), 20, new)
    result = compare_runs(str(tmp_path / "a"), str(tmp_path / "b"), [], ["hit@1"], resamples=200, subset="new")
    assert result["test_users"] == 2 and result["metrics"]["hit@1"]["control"] == 0.5
    assert result["metrics"]["hit@1"]["treatment"] == 0.0
    assert compare_runs(str(tmp_path / "a"), str(tmp_path / "b"), [], ["hit@1"], resamples=200,
                        subset="seen")["metrics"]["hit@1"]["pooled"]["mean"] == 0.0
    save_test_ranks(tmp_path / "loo", test, ranks, 20)  # without new targets: another split
    with pytest.raises(InputError, match="not evaluated on the same test users"):
        compare_runs(str(tmp_path / "a"), str(tmp_path / "loo"), [], ["hit@1"], resamples=200)
    with pytest.raises(InputError, match="cold-start split"):
        compare_runs(str(tmp_path / "loo"), str(tmp_path / "loo"), [], ["hit@1"], resamples=200, subset="new")
    rows = [{"metrics": {"recall@10": 0.2}, "metrics_new": {"recall@10": 0.1}, "metrics_seen": None}]
    assert metric_cell(rows, "new:recall@10") == "0.1000" and metric_cell(rows, "seen:recall@10") == ""


def test_sasrec_never_moves_a_new_items_embedding(rng, tmp_path):
    seqs = [rng.integers(0, 30, 8) for _ in range(40)]
    inter = Interactions([str(u) for u in range(40)], seqs)
    split = cold_start(inter, 30, 0.2, max_history=6)
    cold = split.cold_items
    text = torch.randn(30, 12)
    for text_items in (False, True):
        cfg = load_config(None, ["baseline.sasrec.hidden=16", "baseline.sasrec.layers=1", "baseline.sasrec.inner=32",
                                 "baseline.sasrec.epochs=2", "baseline.sasrec.batch_size=8",
                                 f"baseline.sasrec.text_items={str(text_items).lower()}"])
        seed_everything(cfg.train.seed)
        model = SASRec(30, cfg.baseline.sasrec, 6, text if text_items else None)
        initial = model.item_emb.weight.detach().clone()
        train_sasrec(model, inter, split, cfg, tmp_path / str(text_items))
        weights = model.item_emb.weight.detach()
        assert torch.equal(weights[cold], initial[cold])  # random init, or the zero free vector
        assert not torch.equal(weights[split.trained_items(30)], initial[split.trained_items(30)])
        if text_items:  # a new item is scored by its text's projection
            assert torch.equal(weights[cold], torch.zeros(len(cold), 16))
            assert torch.allclose(model.item_vectors()[cold], model.text_proj(text[cold]))


@pytest.mark.slow
def test_cold_start_runs_end_to_end(tmp_path):
    # parallel, shared head with item vectors: a new item's vector stays zero through training
    shared = [*tiny_ml100k(2), "data.split=cold_start", "data.max_users=120", "method=parallel",
              "parallel.digits=8", "parallel.codebook_size=16", "parallel.opq=false", "parallel.head=shared",
              "parallel.loss=items", "parallel.item_ids=true", "model.history_input=codes"]
    metrics = train_run(load_config("configs/ml100k.yaml", shared), tmp_path / "parallel", progress=False)
    run = load_run(tmp_path / "parallel")
    cold = run.splits.cold_items
    vectors = load_tensors(tmp_path / "parallel" / "model.safetensors")[0]["item_embeddings.weight"]
    assert torch.equal(vectors[cold], torch.zeros(len(cold), vectors.shape[1]))
    assert vectors[run.splits.trained_items(len(vectors))].abs().sum(1).gt(0).all()
    # item dropout: new items get the stand-in, and the offset calibrated on validation is saved with the weights
    dropped = train_run(load_config("configs/ml100k.yaml", [*shared, "parallel.item_dropout=0.5"]),
                        tmp_path / "dropout", progress=False)
    fit = dropped["new_item_offset"]
    assert 0 < fit["target_share"] < 1 and fit["offset"] >= 0
    loaded = load_run(tmp_path / "dropout").model
    assert float(loaded.new_item_offset) == pytest.approx(fit["offset"])
    assert not loaded.has_vector[torch.from_numpy(cold)].any() and loaded.has_vector.sum() == len(vectors) - len(cold)
    # two-stage: metrics of all, new-item and seen-item targets, in metrics.json, results rows, test ranks
    cfg = load_config("configs/ml100k.yaml", [*tiny_ml100k(1), "data.split=cold_start", "data.max_users=120"])
    two_stage = train_run(cfg, tmp_path / "two_stage", progress=False)
    for m in (metrics, two_stage):
        new, seen = m["cold_start"]["test_new_targets"], m["cold_start"]["test_seen_targets"]
        assert new > 0 and seen > 0 and m["cold_start"]["new_items"] == len(cold)
        for key in ("recall@10", "ndcg@10"):  # all targets: the users' mean of both subsets
            assert m["test"][key] == pytest.approx((new * m["test_new"][key] + seen * m["test_seen"][key]) / (new + seen))
        assert m["most_popular"]["test_new"]["recall@10"] == 0.0  # a new item was never a training target
    saved = json.loads((tmp_path / "two_stage" / "test_ranks.json").read_text())
    assert len(saved["new_targets"]) == two_stage["cold_start"]["test_new_targets"]
    test_row = run_rows("two_stage", "", 0, two_stage, tmp_path, "cmd")[1]
    assert test_row["metrics_new"] == two_stage["test_new"] and test_row["metrics_seen"] == two_stage["test_seen"]
