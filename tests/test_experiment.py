"""The experiment plan's report: seeds run here merged with seeds from the results file."""

import json
import multiprocessing
from pathlib import Path

import pytest
import yaml

from gensid.config import load_config
from gensid.errors import ConfigError
from gensid.experiment import load_plan, run_experiment, write_report
from gensid.report.results import git_commit, run_rows, upsert_rows

# plans are written into tmp_path (never into the repository) and name the config by absolute path
ML100K = str(Path(__file__).resolve().parents[1] / "configs" / "ml100k.yaml")


def finished_run(run_dir: Path, recall: float) -> None:
    run_dir.mkdir(parents=True)
    metrics = {"test": {"recall@10": recall}, "train_minutes": 1.0, "epochs": 3, "best_epoch": 1,
               "sid": {"collision_rate": 0.0}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "log.jsonl").write_text(json.dumps({"event": "done"}) + "\n")


def test_seeds_run_here_join_the_seeds_in_the_results_file(tmp_path):
    results = tmp_path / "results.json"
    old = {"method": "two_stage", "variant": "older name", "split": "test", "metrics": {"recall@10": 0.5},
           "train_minutes": 2.0, "command": "earlier run"}
    # seed 0 measured before; seed 1 is in the file too (upserted by this plan) and run here
    dgi = {**old, "method": "dgi", "variant": "full", "seed": 0, "metrics": {"recall@10": 0.1}}
    by_bucket = [{"bucket": b, "hit@10": 0.1 * b} for b in range(5)]
    bm25 = {**old, "method": "bm25", "variant": "", "seed": 0, "test_by_popularity": by_bucket}
    bm25_tuned = {**bm25, "variant": "tuned", "metrics": {"recall@10": 0.9}}
    # a named variant of another plan (a warm start from two-stage) is not a two-stage seed here
    continued = {**old, "variant": "continued", "seed": 0, "metrics": {"recall@10": 0.6}, "init_from": "runs/x"}
    # nor is a named variant of another plan; that plan's unnamed two_stage is (its descriptive name)
    other_path = tmp_path / "other.yaml"
    other_path.write_text(yaml.safe_dump({"name": "other", "dataset": "tiny", "variants": [
        {"method": "two_stage", "config": "ml100k.yaml"},
        {"method": "two_stage", "variant": "bf16", "config": "ml100k.yaml"}]}))
    bf16 = {**old, "variant": "bf16", "seed": 3, "metrics": {"recall@10": 0.8},
            "command": f"gensid experiment {other_path} --only 'two_stage (bf16)' --seed 3"}
    other_seed = {**old, "seed": 4, "command": f"gensid experiment {other_path} --only two_stage --seed 4"}
    results.write_text(json.dumps([{**old, "seed": 0}, {**old, "seed": 1, "metrics": {"recall@10": 0.7}}, dgi,
                                   bm25, bm25_tuned, continued, bf16]))
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump({
        "name": "merge", "dataset": "tiny", "results_file": str(results), "output": str(tmp_path / "out"),
        "columns": ["recall@10"],
        "variants": [{"method": "two_stage", "config": ML100K, "seeds": [1, 2], "from_results": True},
                     {"method": "dgi", "variant": "full", "config": ML100K, "seeds": [0, 1]},
                     {"method": "sasrec", "from_results": True}, {"method": "bm25", "from_results": True},
                     {"method": "bm25", "variant": "tuned", "from_results": True}]}))
    plan = load_plan(plan_path)
    with pytest.raises(ConfigError, match="no variant labelled 'dgi'.*'dgi \\(full\\)'"):
        run_experiment(plan_path, only="dgi")
    with pytest.raises(ConfigError, match="no dgi \\(full\\) run with seed 2; seeds: \\[0, 1\\]"):
        run_experiment(plan_path, only="dgi (full)", seed=2)
    # seed-major: every variant's first seed before anyone's second
    assert [(v.method, seed) for v, seed in plan.jobs()] == [("dgi", 0), ("two_stage", 1), ("dgi", 1),
                                                             ("two_stage", 2)]
    # a run whose test row the results file holds is not run again
    assert plan.recorded(plan.variants[1], 0) and not plan.recorded(plan.variants[1], 1)
    # an unnamed from_results variant owns the method's rows whatever their variant name
    assert plan.recorded(plan.variants[0], 1) and not plan.recorded(plan.variants[0], 2)
    assert not plan.recorded(plan.variants[0], 3) and plan.owner(other_seed) is plan.variants[0]
    finished_run(plan.run_dir(plan.variants[0], 1), 0.3)
    write_report(plan)
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    # seed 0 from the file, seed 1 from the run here (not twice), seed 2 not finished yet
    assert sorted((r["seed"], r["metrics"]["recall@10"]) for r in rows if r["label"] == "two_stage") == [
        (0, 0.5), (1, 0.3)]
    assert [r["metrics"]["recall@10"] for r in rows if r["label"] == "dgi (full)"] == [0.1]
    table = (tmp_path / "out" / "table.md").read_text()
    # minutes averaged over both seeds; epochs only where recorded (the older row has none)
    assert "| two_stage | 2 | 0.4000 ± 0.1414 | 1.5 | 3 |" in table
    assert "| sasrec | not run yet |" in table
    # a baseline measured elsewhere still joins the popularity plot through its results row
    assert [r["test_by_popularity"] for r in rows if r["label"] == "bm25"] == [by_bucket]
    # a row whose variant another plan variant names is that variant's, not the unnamed one's seed
    assert [r["metrics"]["recall@10"] for r in rows if r["label"] == "bm25"] == [0.5]
    assert [r["metrics"]["recall@10"] for r in rows if r["label"] == "bm25 (tuned)"] == [0.9]
    assert (tmp_path / "out" / "popularity_buckets.png").exists()


def test_plan_level_overrides_go_before_the_variants_and_are_checked_at_load(tmp_path):
    plan_path = tmp_path / "plan.yaml"
    body = {"name": "office", "dataset": "tiny", "output": str(tmp_path / "out"),
            "results_file": str(tmp_path / "results.json"),
            "set": ["train.epochs=3", "data.max_history=7"],
            "variants": [{"method": "dgi", "config": ML100K,
                          "set": ["train.epochs=5", "train.init_from=runs/source-s{seed}"]}]}
    plan_path.write_text(yaml.safe_dump(body))
    plan = load_plan(plan_path)
    overrides = plan.overrides(plan.variants[0], seed=2)
    # {seed}: each seed warm-starts from its own source run
    assert overrides == ["train.epochs=3", "data.max_history=7", "train.epochs=5",
                         "train.init_from=runs/source-s2", "train.seed=2"]
    cfg = load_config(ML100K, overrides)
    assert (cfg.train.epochs, cfg.data.max_history, cfg.train.seed) == (5, 7, 2)
    assert cfg.train.init_from == "runs/source-s2"
    plan_path.write_text(yaml.safe_dump({**body, "set": ["train.no_such_field=1"]}))
    with pytest.raises(ConfigError, match="no_such_field"):
        load_plan(plan_path)


@pytest.mark.parametrize("field", ["output", "results_file"])
def test_a_plan_names_its_output_and_results_file(tmp_path, field):
    """The library has no default folder for the research record: a plan without one is refused."""
    body = {"name": "p", "dataset": "tiny", "output": str(tmp_path / "out"),
            "results_file": str(tmp_path / "results.json"), "variants": [{"method": "dgi", "config": ML100K}]}
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump({k: v for k, v in body.items() if k != field}))
    with pytest.raises(ConfigError, match=f"plan.yaml: missing field '{field}'"):
        load_plan(plan_path)


def test_the_committed_plans_load():
    """Every plan of the research record loads: its configs resolve from research/plans/."""
    plans = sorted((Path(__file__).resolve().parents[1] / "research" / "plans").glob("*.yaml"))
    assert plans
    for path in plans:
        plan = load_plan(path)
        assert plan.output.parts[:2] == ("research", "experiments") and plan.results_file.parts[:2] == (
            "research", "results")


def test_a_results_row_names_the_commit_its_run_started_on(tmp_path):
    metrics = {"valid": {"recall@10": 0.1}, "test": {"recall@10": 0.2}, "train_minutes": 1.0, "epochs": 2,
               "best_epoch": 2, "commit": "abc123"}
    trained = run_rows("dgi", "full", 0, metrics, tmp_path / "run", "gensid train")
    baseline = {"method": "bm25", "variant": "", "split": "test", "seed": 0, "metrics": {"recall@10": 0.3},
                "train_minutes": 0.0, "command": "bm25"}
    upsert_rows(tmp_path / "results.json", [*trained, baseline])
    rows = {(r["method"], r["split"]): r for r in json.loads((tmp_path / "results.json").read_text())}
    assert rows["dgi", "valid"]["commit"] == rows["dgi", "test"]["commit"] == "abc123"
    assert rows["bm25", "test"]["commit"] == git_commit()  # no run behind it: HEAD when written


def _upsert_seed(path: str, seed: int, times: int) -> None:
    for i in range(times):
        upsert_rows(path, [{"method": "m", "variant": "", "split": "test", "seed": seed, "metrics": {"n": i},
                            "train_minutes": 0.0, "command": "c", "commit": "x"}])


def test_processes_writing_one_results_file_lose_no_row(tmp_path):
    path = str(tmp_path / "results.json")
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_upsert_seed, args=(path, seed, 15)) for seed in range(6)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    rows = json.loads(Path(path).read_text())
    assert sorted((r["seed"], r["metrics"]["n"]) for r in rows) == [(seed, 14) for seed in range(6)]
