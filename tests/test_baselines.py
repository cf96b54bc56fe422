"""gensid baseline KIND CONFIG: each kind writes a run folder of a gensid run's shape, which gensid
compare pairs with a generative run on the same (cold-start) split and gensid hybrid takes as its
scorer; SASRec and dense resume after SIGKILL to the result of an uninterrupted run; bad input is one line,
before anything is written. Tiny MovieLens runs of seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import kill_at_first_checkpoint, tiny_ml100k
from gensid.baselines.sasrec import SASRec
from gensid.cli import app
from gensid.compare import compare_runs
from gensid.config import load_config
from gensid.errors import ConfigError, InputError, RunError
from gensid.eval.metrics import metrics_from_ranks
from gensid.evaluation import read_test_ranks
from gensid.fusion.hybrid import Hybrid, fit_hybrid
from gensid.prepare import load_run
from gensid.training import train_run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "ml100k.yaml")
COLD = ["data.split=cold_start", "data.max_users=120"]
SEARCH = ["data.task=search", "data.query_field=class"]
SMALL = ["baseline.sasrec.epochs=2", "baseline.sasrec.hidden=16", "baseline.sasrec.inner=32",
         "baseline.dense.epochs=1", "baseline.dense.dim=16"]
runner = CliRunner()


def overrides(*extra: str) -> list[str]:
    return [*tiny_ml100k(1), *SMALL, *extra]


def baseline(kind: str, run_dir: Path, *extra: str, seed: int | None = None):
    args = ["baseline", kind, CONFIG, "--run-dir", str(run_dir)]
    args += [a for s in overrides(*extra) for a in ("--set", s)]
    return runner.invoke(app, args + (["--seed", str(seed)] if seed is not None else []), env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def generative(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny two-stage run on a cold-start split, and its metrics."""
    run_dir = tmp_path_factory.mktemp("generative") / "run"
    return run_dir, train_run(load_config(CONFIG, [*tiny_ml100k(1), *COLD]), run_dir, progress=False)


@pytest.fixture(scope="module")
def cold_baselines(tmp_path_factory) -> dict[str, Path]:
    """popular, sasrec and dense on the generative run's cold-start split."""
    base = tmp_path_factory.mktemp("baselines")
    for kind in ("popular", "sasrec", "dense"):
        result = baseline(kind, base / kind, *COLD)
        assert result.exit_code == 0, result.output
    return {kind: base / kind for kind in ("popular", "sasrec", "dense")}


@pytest.mark.parametrize(("kind", "task"), [("popular", SEARCH), ("bm25", SEARCH), ("dense", SEARCH), ("sasrec", [])])
def test_each_kind_writes_a_run_folder(tmp_path, kind, task):
    result = baseline(kind, tmp_path / kind, *task, seed=3)
    assert result.exit_code == 0, result.output
    folder = tmp_path / kind
    cfg = load_config(CONFIG, [*overrides(*task), "train.seed=3"])
    assert load_config(folder / "config.yaml").to_dict() == cfg.to_dict()  # the resolved config, --seed in it
    assert json.loads((folder / "baseline.json").read_text()) == {"kind": kind}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["baseline"] == kind and metrics["task"] == cfg.data.task
    assert set(metrics["valid"]) == set(metrics["test"]) == {f"{m}@{k}" for m in ("recall", "ndcg", "hit") for k in (5, 10)}
    saved = read_test_ranks(folder)
    assert saved["depth"] == cfg.eval.beam_size and len(saved["ranks"]) == 40  # data.max_users
    assert metrics_from_ranks(saved["ranks"], [5, 10]) == metrics["test"]
    assert (folder / "model.safetensors").exists() == (kind != "bm25")  # BM25's index is rebuilt from the text
    events = [json.loads(line)["event"] for line in (folder / "log.jsonl").read_text().splitlines()]
    assert events[0] == "prepared" and events[-1] == "done"
    assert metrics["method"] in result.output and "0." in result.output  # the test table
    if kind == "sasrec":  # trained by the Trainer: a checkpoint, an epoch line each, the best weights loadable
        assert (folder / "checkpoint.safetensors").exists() and events.count("epoch") == 2
        assert 1 <= metrics["best_epoch"] <= metrics["epochs"] == 2
        model = SASRec.load(folder / "model.safetensors")
        assert model.max_len == cfg.data.max_history and (model.cfg.hidden, model.cfg.inner) == (16, 32)


def test_compare_pairs_a_baseline_with_a_generative_run_on_a_cold_start_split(generative, cold_baselines):
    run_dir, run_metrics = generative
    popular = json.loads((cold_baselines["popular"] / "metrics.json").read_text())
    # the same data, split and counts: most popular equals the one every gensid run reports
    for key in ("test", "test_new", "test_seen"):
        assert popular[key] == run_metrics["most_popular"][key], key
    assert popular["cold_start"]["test_new_targets"] == run_metrics["cold_start"]["test_new_targets"] > 0
    assert read_test_ranks(cold_baselines["sasrec"])["test_users"] == read_test_ranks(run_dir)["test_users"]
    for kind, folder in cold_baselines.items():
        result = compare_runs(str(folder), str(run_dir), [], ["hit@10"], resamples=200, by_popularity=True)
        assert result["test_users"] == len(read_test_ranks(run_dir)["ranks"]), kind
        assert sum(b["test_users"] for b in result["by_popularity"]) == result["test_users"]
        new = compare_runs(str(folder), str(run_dir), [], ["hit@10"], resamples=200, subset="new")
        assert new["test_users"] == run_metrics["cold_start"]["test_new_targets"]
        assert new["metrics"]["hit@10"]["control"] == pytest.approx(
            json.loads((folder / "metrics.json").read_text())["test_new"]["hit@10"])
    other = json.loads((cold_baselines["sasrec"] / "metrics.json").read_text())
    assert other["method"] == "sasrec" and set(other) >= {"valid_new", "valid_seen", "test_new", "test_seen"}


def test_hybrid_takes_a_sasrec_or_dense_baseline_folder_as_its_scorer(generative, cold_baselines, tmp_path):
    run = load_run(generative[0])
    for kind in ("sasrec", "dense"):
        hybrid, minutes = fit_hybrid(run, cold_baselines[kind], [0.0, 0.5, 1.0])
        assert hybrid.scorer_name == kind and minutes == 0.0 and hybrid.weight in (0.0, 0.5, 1.0)
        hybrid.save(tmp_path / kind)
        loaded = Hybrid.load(tmp_path / kind)
        assert loaded.scorer_name == kind and loaded.weight == hybrid.weight
    with pytest.raises(InputError, match="a popular baseline; a hybrid mixes in a sasrec or dense baseline"):
        fit_hybrid(run, cold_baselines["popular"])
    result = runner.invoke(app, ["hybrid", str(generative[0]), "--out", str(tmp_path / "cli"), "--weights", "0,1",
                                 "--scorer", str(cold_baselines["sasrec"])], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli" / "hybrid.json").read_text())["scorer"] == "sasrec"


def test_bad_input_is_one_line_before_anything_is_written(tmp_path, generative, cold_baselines):
    for args, error, message in [
        (("sasrc", tmp_path / "a"), InputError, "KIND 'sasrc': expected one of popular, sasrec, bm25, dense"),
        (("bm25", tmp_path / "b"), InputError, "bm25: a baseline for data.task search; this config has data.task rec"),
        (("sasrec", tmp_path / "c", *SEARCH), InputError, "sasrec: a baseline for data.task rec; this config has"),
        (("sasrec", tmp_path / "d", "baseline.sasrec.hiden=8"), ConfigError, "baseline.sasrec.hiden: unknown field"),
        (("sasrec", tmp_path / "e", "data.source=nowhere"), InputError, "data.source nowhere: no such file"),
    ]:
        result = baseline(*args)
        assert result.exit_code == 1 and isinstance(result.exception, error), result.output
        assert message in str(result.exception) and "\n" not in str(result.exception)
        assert not args[1].exists()
    # a folder that holds another baseline, another config or a gensid run is refused, and left as it was
    held = cold_baselines["popular"]
    before = {p.name: p.read_bytes() for p in held.iterdir()}
    for args, message in [(("dense", held, *COLD), "holds a popular baseline, not a dense baseline"),
                          (("popular", held), "this run directory holds a different config"),
                          (("popular", generative[0], *COLD), "holds a gensid run, not a popular baseline")]:
        result = baseline(*args)
        assert result.exit_code == 1 and isinstance(result.exception, RunError) and message in str(result.exception)
    assert {p.name: p.read_bytes() for p in held.iterdir()} == before
    with pytest.raises(RunError, match="a popular baseline \\(gensid baseline\\), not a gensid model"):
        load_run(held)


RESUMED = {"sasrec": ["baseline.sasrec.epochs=4", "data.max_users=200"],
           "dense": ["baseline.dense.epochs=4", "data.max_users=100"]}  # epochs long enough to be killed in


def resumable_command(kind: str, run_dir: Path) -> list[str]:
    sets = [a for s in overrides(*RESUMED[kind]) for a in ("--set", s)]
    return [sys.executable, "-m", "gensid.cli", "baseline", kind, CONFIG, "--run-dir", str(run_dir), *sets]


def environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"}


@pytest.mark.parametrize("kind", ["sasrec", "dense"])
def test_a_killed_baseline_resumes_to_the_result_of_an_uninterrupted_one(tmp_path, kind):
    straight = subprocess.run(resumable_command(kind, tmp_path / "straight"), env=environment(), capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = tmp_path / "killed"
    kill_at_first_checkpoint(resumable_command(kind, killed), killed, environment())
    resumed_dir = shutil.copytree(killed, tmp_path / "resumed")
    resumed = subprocess.run(resumable_command(kind, resumed_dir), env=environment(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    events = [json.loads(line) for line in (resumed_dir / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "resume"][0] >= 1  # it did not start over
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "straight", resumed_dir))
    a.pop("train_minutes"), b.pop("train_minutes")
    assert a == b  # epochs, best epoch, valid and test metrics, the dense encoder's final loss
    assert yaml.safe_load((resumed_dir / "config.yaml").read_text()) == yaml.safe_load(
        (tmp_path / "straight" / "config.yaml").read_text())
