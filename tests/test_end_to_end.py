"""Small end-to-end runs on real data: Beauty (from ../shared, skipped if absent) and
MovieLens-100k (read out of the recbole wheel) through the CLI."""

import json

import pytest
from typer.testing import CliRunner

from conftest import shared_dataset
from gensid.cli import app
from gensid.config import load_config
from gensid.pipeline import load_run, train_run

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

    again = runner.invoke(app, args)  # same config, finished run: resumes to the same metrics
    assert again.exit_code == 0, again.output
    assert json.loads((run_dir / "metrics.json").read_text())["test"] == metrics["test"]

    run = load_run(run_dir)
    ids = ",".join(run.dataset.catalog.item_ids[i] for i in (0, 1, 2))
    rec = runner.invoke(app, ["recommend", str(run_dir), "--history", ids, "--k", "5"])
    assert rec.exit_code == 0 and len(rec.output.strip().splitlines()) == 5
    bad = runner.invoke(app, ["recommend", str(run_dir), "--history", "no-such-item"])
    assert bad.exit_code != 0 and "unknown item id 'no-such-item'" in bad.output

    other = runner.invoke(app, ["train", "configs/ml100k.yaml", "--run-dir", str(run_dir), "--set", "train.lr=0.5"])
    assert other.exit_code != 0 and "holds a different config" in str(other.exception)
