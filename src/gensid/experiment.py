"""``gensid experiment PLAN.yaml``: run a list of variants, then tabulate and plot them.

An experiment plan names a dataset, a results file (``results_file``) and a folder for its runs
and report (``output``), both required and, like every path in a config, relative to the working
directory; and variants: each an experiment config (``config``, relative to the plan file) plus
``--set``-style overrides, run for one or more seeds into ``<output>/runs/<method>-<variant>-s<seed>/``;
a plan-level ``set`` goes before every variant's (e.g. the Beauty configs pointed at another data
set); ``{seed}`` in an override is replaced by the run's seed. Runs are resumable, and a
run that finished (``metrics.json``) or whose test row is already in the results file is
not run again, so an interrupted experiment picks up where it stopped. Jobs go seed by
seed (every variant's seed 0 first); ``--shard i/n`` lets n processes split them (one per
core).
Variants with ``from_results: true`` are measured by another command (e.g. SASRec by
``benchmarks/sasrec.py``): their rows, of any variant name, come from the results file;
with a ``config`` too, the listed seeds are also run here.

The report (``<output>/table.md``, ``results.json``, ``*.png``) is rebuilt from whatever
has finished, each time a run ends. A column ``new:recall@10`` (``seen:...``) shows a metric of a
cold-start split's new-item (seen-item) targets (results rows' ``metrics_new`` / ``metrics_seen``).
"""

from __future__ import annotations

import functools
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console

from gensid.config.loading import load_config
from gensid.errors import ConfigError
from gensid.io import JsonlLog, write_json, write_text
from gensid.report import plots
from gensid.report.results import (
    epochs_cell,
    mean_std,
    read_rows,
    run_rows,
    total_train_minutes,
    upsert_rows,
)
from gensid.training import train_run

console = Console()
REC_COLUMNS = ["recall@5", "recall@10", "ndcg@5", "ndcg@10"]


@dataclass
class Variant:
    method: str  # results-file method name: two_stage, ste, dgi, diger_frqud, sasrec, ...
    variant: str = ""  # what this row changes, e.g. "no_weight_sharing"
    config: str = ""  # experiment config, relative to the experiment file
    set: list[str] = field(default_factory=list)
    seeds: list[int] | None = None
    from_results: bool = False

    @property
    def label(self) -> str:
        return f"{self.method}" + (f" ({self.variant})" if self.variant else "")

    def run_name(self, seed: int) -> str:
        return f"{self.method}-{self.variant or 'default'}-s{seed}".replace(" ", "_")


@dataclass
class Plan:
    path: Path
    name: str
    dataset: str
    results_file: Path
    output: Path
    seeds: list[int]
    variants: list[Variant]
    columns: list[str]  # metrics shown in table.md
    set: list[str] = field(default_factory=list)  # overrides for every variant, before the variant's own

    def overrides(self, variant: Variant, seed: int) -> list[str]:
        """The config overrides of one run: the plan's, the variant's, then the seed. ``{seed}``
        in an override becomes the run's seed, e.g. ``train.init_from=runs/office-seed{seed}``
        warm-starts each seed from its own source run."""
        return [*with_seed([*self.set, *variant.set], seed), f"train.seed={seed}"]

    def jobs(self) -> list[tuple[Variant, int]]:
        """(variant, seed) of every configured run, seed-major."""
        pairs = [(v, s) for v in self.variants if v.config for s in (v.seeds or self.seeds)]
        return sorted(pairs, key=lambda pair: pair[1])  # stable: plan order within a seed

    def owner(self, row: dict) -> Variant | None:
        """The variant a results-file row belongs to: the one with its method and variant name,
        else the method's unnamed ``from_results`` variant (baselines write descriptive variant
        names, e.g. their hyperparameters), which does not take warm-started runs (rows with
        ``init_from``, e.g. ``two_stage (continued)``) nor the runs of another plan's named
        variants (e.g. ``two_stage (bf16)``): those are other variants, not seeds of the method."""
        named = [v for v in self.variants if v.method == row["method"] and v.variant == row["variant"]]
        words = row.get("command", "").split()  # "gensid experiment PLAN ..." for a plan's runs
        other_plan = words[2] if words[:2] == ["gensid", "experiment"] and len(words) > 2 else ""
        named_elsewhere = bool(other_plan) and Path(other_plan).resolve() != self.path.resolve() and \
            (row["method"], row["variant"]) in named_variants(str(Path(other_plan).resolve()))
        unnamed = [v for v in self.variants if v.method == row["method"] and v.from_results and not v.variant
                   and not row.get("init_from") and not named_elsewhere]
        return (named or unnamed or [None])[0]

    def recorded(self, variant: Variant, seed: int) -> bool:
        """Whether the results file already holds this run's test row (e.g. from another machine)."""
        return any(self.owner(r) is variant and r["seed"] == seed and r["split"] == "test"
                   for r in read_rows(self.results_file))

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.output / "runs" / variant.run_name(seed)


def with_seed(overrides: list[str], seed: int) -> list[str]:
    """``{seed}`` in each override replaced by ``seed``."""
    return [o.replace("{seed}", str(seed)) for o in overrides]


@functools.cache
def named_variants(plan_file: str) -> frozenset[tuple[str, str]]:
    """(method, variant) of the named variants of an experiment file; empty if it is gone."""
    path = Path(plan_file)
    raw = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
    return frozenset((v["method"], v["variant"]) for v in raw.get("variants", [])
                     if isinstance(v, dict) and v.get("method") and v.get("variant"))


PLAN_FIELDS = {"name", "dataset", "results_file", "output", "seeds", "variants", "columns", "set"}


def load_plan(path: str | Path) -> Plan:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: experiment file not found")
    raw = yaml.safe_load(path.read_text()) or {}
    check_plan_fields(path, raw)
    common = list(raw.get("set", []))  # the plan-level overrides
    seeds = list(raw.get("seeds", [0]))
    if not seeds:
        raise ConfigError(f"{path}: 'seeds' is empty; list at least one seed, e.g. [0]")
    variants = [load_variant(path, i, item, common, seeds) for i, item in enumerate(raw["variants"])]
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{path}: two variants share a method and variant name")
    return Plan(path, raw["name"], raw["dataset"], Path(raw["results_file"]), Path(raw["output"]), seeds,
                variants, list(raw.get("columns", REC_COLUMNS)), common)


def check_plan_fields(path: Path, raw: dict) -> None:
    """An experiment file's top-level fields: none unknown, the required ones present."""
    if unknown := set(raw) - PLAN_FIELDS:
        raise ConfigError(f"{path}: unknown field(s) {sorted(unknown)}; expected {sorted(PLAN_FIELDS)}")
    for key in ("name", "dataset", "variants"):
        if key not in raw:
            raise ConfigError(f"{path}: missing field {key!r}")
    # no default folder: where the record lives is the plan's to say, not the library's
    for key, what in (("output", "the folder of its runs and report"), ("results_file", "the results JSON")):
        if not raw.get(key):
            raise ConfigError(f"{path}: missing field {key!r} ({what}, a path from the working directory)")


def load_variant(path: Path, i: int, item: object, common: list[str], seeds: list[int]) -> Variant:
    """``variants[i]`` of the experiment file ``path``; its config is loaded with every seed's
    overrides, so a bad one fails now, not hours later."""
    if not isinstance(item, dict) or "method" not in item:
        raise ConfigError(f"{path}: variants[{i}] must be a mapping with a 'method'")
    fields = set(Variant.__dataclass_fields__)
    if unknown := set(item) - fields:
        raise ConfigError(f"{path}: variants[{i}]: unknown field(s) {sorted(unknown)}; expected {sorted(fields)}")
    variant = Variant(**item)
    if not variant.from_results and not variant.config:
        raise ConfigError(f"{path}: variants[{i}] ({variant.label}) needs a 'config'")
    for seed in (variant.seeds or seeds) if variant.config else []:
        try:
            load_config(path.parent / variant.config, [*with_seed([*common, *variant.set], seed), f"train.seed={seed}"])
        except ConfigError as exc:
            raise ConfigError(f"{path}: variants[{i}] ({variant.label}), seed {seed}: {exc}") from None
    return variant


def run_experiment(path: str | Path, shard: tuple[int, int] = (0, 1), report_only: bool = False,
                   progress: bool = True, only: str = "", seed: int | None = None) -> Path:
    """Run the plan's unfinished variants of this shard (``only``: of the variant with this
    label; ``seed``: only this seed), then write the report; returns its folder."""
    plan = load_plan(path)
    jobs = plan.jobs()
    if only:
        if only not in {v.label for v in plan.variants}:
            raise ConfigError(f"{path}: no variant labelled {only!r}; labels: {[v.label for v in plan.variants]}")
        jobs = [(v, s) for v, s in jobs if v.label == only]
    if seed is not None:
        if seed not in {s for _, s in jobs}:
            raise ConfigError(f"{path}: no {only or 'variant'} run with seed {seed}; seeds: "
                              f"{sorted({s for _, s in jobs})}")
        jobs = [(v, s) for v, s in jobs if s == seed]
    index, count = shard
    command = (f"gensid experiment {plan.path}" + (f" --shard {index}/{count}" if count > 1 else "")
               + (f" --only {shlex.quote(only)}" if only else "") + (f" --seed {seed}" if seed is not None else ""))
    for i, (variant, run_seed) in enumerate(jobs):
        if report_only or i % count != index:
            continue
        run_dir = plan.run_dir(variant, run_seed)
        if (run_dir / "metrics.json").exists() or plan.recorded(variant, run_seed):
            continue
        console.rule(f"[{i + 1}/{len(jobs)}] {variant.label}, seed {run_seed}")
        cfg = load_config(plan.path.parent / variant.config, plan.overrides(variant, run_seed))
        metrics = train_run(cfg, run_dir, progress=progress)
        upsert_rows(plan.results_file, run_rows(variant.method, variant.variant, run_seed, metrics, run_dir, command))
        write_report(plan)
    return write_report(plan)


def _finished(plan: Plan) -> list[tuple[Variant, int, dict, list[dict]]]:
    out = []
    for variant, seed in plan.jobs():
        run_dir = plan.run_dir(variant, seed)
        if (run_dir / "metrics.json").exists():
            metrics = json.loads((run_dir / "metrics.json").read_text())
            out.append((variant, seed, metrics, JsonlLog(run_dir / "log.jsonl").read()))
    return out


def write_report(plan: Plan) -> Path:
    """table.md (mean ± std over seeds), results.json and plots from the finished runs."""
    finished = _finished(plan)
    rows: list[dict] = []
    for variant in plan.variants:
        # seeds not finished in this output folder come from the results file (runs are not committed)
        run_here = {seed for v, seed, _, _ in finished if v is variant}
        for r in read_rows(plan.results_file):
            if plan.owner(r) is variant and r["split"] == "test" and r["seed"] not in run_here:
                rows.append({"label": variant.label, "seed": r["seed"], "metrics": r["metrics"],
                             "metrics_new": r.get("metrics_new"), "metrics_seen": r.get("metrics_seen"),
                             "train_minutes": r.get("train_minutes"), "epochs": r.get("epochs"),
                             "source": r.get("command", ""),
                             "test_by_popularity": r.get("test_by_popularity")})
        for v, seed, metrics, _ in finished:
            if v is variant:
                rows.append({"label": variant.label, "seed": seed, "metrics": metrics["test"],
                             "metrics_new": metrics.get("test_new"), "metrics_seen": metrics.get("test_seen"),
                             "train_minutes": total_train_minutes(metrics), "epochs": metrics["epochs"],
                             "best_epoch": metrics["best_epoch"],
                             "collision_rate": metrics["sid"]["collision_rate"],
                             "test_by_popularity": metrics.get("test_by_popularity"),
                             "hubness": metrics.get("hubness")})
    plan.output.mkdir(parents=True, exist_ok=True)
    write_json(plan.output / "results.json", rows)
    write_text(plan.output / "table.md", markdown_table(plan, rows))
    _plots(plan, finished, rows)
    return plan.output


def markdown_table(plan: Plan, rows: list[dict]) -> str:
    lines = [f"# {plan.name}: {plan.dataset}, test split, full-catalog ranking", "",
             f"Produced by `gensid experiment {plan.path}`; mean ± std over seeds where there are several.", "",
             "| method | seeds | " + " | ".join(plan.columns) + " | train min | epochs |",
             "|---|---|" + "---|" * len(plan.columns) + "---|---|"]
    for variant in plan.variants:
        group = [r for r in rows if r["label"] == variant.label]
        if not group:
            lines.append(f"| {variant.label} | not run yet |" + " |" * (len(plan.columns) + 2))
            continue
        cells = [metric_cell(group, name) for name in plan.columns]
        minutes = [r["train_minutes"] for r in group if r["train_minutes"] is not None]
        minutes_cell = f"{np.mean(minutes):.1f}" if minutes else ""
        lines.append(f"| {variant.label} | {len(group)} | {' | '.join(cells)} | {minutes_cell} | {epochs_cell(group)} |")
    return "\n".join(lines) + "\n"


def metric_cell(rows: list[dict], column: str) -> str:
    """A table cell of ``column`` over ``rows``: a metric (``recall@10``), or one of a cold-start
    split's subsets (``new:recall@10``, ``seen:recall@10``); blank where a row lacks it."""
    subset, _, name = column.rpartition(":")
    blocks = [r.get(f"metrics_{subset}") if subset else r["metrics"] for r in rows]
    if any(block is None or name not in block for block in blocks):
        return ""
    return mean_std([block[name] for block in blocks])


def _plots(plan: Plan, finished: list, rows: list[dict]) -> None:
    first = {}
    for variant, seed, metrics, log in finished:  # one run per variant: the lowest seed
        if variant.label not in first or seed < first[variant.label][0]:
            first[variant.label] = (seed, metrics, log)
    epochs = {label: [r for r in log if r.get("event") == "epoch" and "analysis" in r]
              for label, (_, _, log) in first.items()}
    epochs = {k: v for k, v in epochs.items() if v}
    out = plan.output
    if epochs:
        plots.per_epoch({k: [(r["epoch"], r["analysis"]["agreement"]["all"]) for r in v] for k, v in epochs.items()},
                        "share of items", "train/inference assignment agreement", out / "agreement.png")
        plots.per_epoch({k: [(r["epoch"], r["analysis"]["drift_incremental"]) for r in v] for k, v in epochs.items()},
                        "share of items whose SID changed", "incremental SID drift", out / "drift_incremental.png")
        plots.per_epoch({k: [(r["epoch"], r["analysis"]["drift_cumulative"]) for r in v] for k, v in epochs.items()},
                        "share of items whose SID changed", "cumulative SID drift", out / "drift_cumulative.png")
        plots.per_epoch({k: [(r["epoch"], r["analysis"]["code_usage"][0]["perplexity"]) for r in v]
                         for k, v in epochs.items()}, "perplexity", "level-1 code perplexity", out / "perplexity.png")
        plots.code_usage({k: v[-1]["analysis"]["code_usage"][0]["histogram"] for k, v in epochs.items()},
                         "level-1 code usage at the last epoch", out / "code_usage.png")
        grads = {k: [g for r in v for g in r.get("terms", {}).get("item_encoder_grad_norm", [])]
                 for k, v in epochs.items()}
        grads = {k: g for k, g in grads.items() if any(x > 0 for x in g)}  # an identity encoder has none
        if grads:
            plots.per_step(grads, "gradient norm",
                           "item-encoder gradient norm per step", out / "grad_norm.png")
    buckets = {}  # lowest seed per variant, baselines from the results file included
    for r in sorted(rows, key=lambda r: r["seed"]):
        if r.get("test_by_popularity") and r["label"] not in buckets:
            buckets[r["label"]] = [b["hit@10"] for b in r["test_by_popularity"]]
    if buckets:
        plots.buckets(buckets, "test hit@10", "hit rate by item popularity", out / "popularity_buckets.png")
    hub = {k: m["hubness"]["mean_norm_by_bucket"] for k, (_, m, _) in first.items() if m.get("hubness")}
    if hub:
        plots.buckets(hub, "mean item-vector norm", "item-vector norm by popularity (hubness)", out / "hubness.png")
