"""``gensid`` command line: train, evaluate and recommend from one YAML per experiment."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gensid.errors import GensidWarning, InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
METRICS = ["recall@5", "recall@10", "ndcg@5", "ndcg@10", "recall@20"]


def _table(title: str, rows: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title)
    table.add_column("method")
    names = [m for m in METRICS if all(m in metrics for metrics in rows.values())]  # eval.ks may omit some
    for name in names:
        table.add_column(name, justify="right")
    for method, metrics in rows.items():
        table.add_row(method, *(f"{metrics[m]:.4f}" for m in names))
    return table


def _show_examples(run, users: int = 3, k: int = 5) -> None:
    """Top-``k`` for the first test users from everything they rated before the held-out item; with
    ``serve.exclude_seen`` none of those items (as the service answers)."""
    test, catalog = run.splits.test, run.dataset.catalog
    exclude = run.exclude_seen_default
    for row in range(min(users, len(test))):
        user = int(test.users[row])
        past = [int(i) for i in run.dataset.interactions.sequences[user][:-1]]  # all but the held-out item
        recs = run.recommend(past, k, exclude_seen=exclude)
        console.print(f"[bold]user {run.dataset.interactions.user_ids[user]}[/bold] ({len(past)} items) recently: "
                      + "; ".join(catalog.title(i) for i in past[-3:]), soft_wrap=True)
        console.print(f"  held-out next item: {catalog.title(int(test.targets[row]))}", soft_wrap=True)
        console.print(f"  top {k}" + (f", none of the {len(set(past))} seen (serve.exclude_seen)" if exclude else "")
                      + ":", soft_wrap=True)
        for rank, item in enumerate(recs, 1):
            hit = " <- the held-out item" if item == int(test.targets[row]) else ""
            console.print(f"  {rank}. {catalog.title(item)}{hit}", soft_wrap=True)


@app.command()
def train(config: Path = typer.Argument(..., help="a config YAML, e.g. configs/ml100k.yaml"),
          run_dir: Path = typer.Option(None, help="output folder (default runs/<name>)"),
          set_: list[str] = typer.Option([], "--set", help="override, e.g. --set train.lr=1e-3"),
          examples: int = typer.Option(3, help="example recommendations to print"),
          nproc: int = typer.Option(1, min=1, help="data-parallel processes on this machine (torchrun + DDP)"),
          sasrec_minutes: float = typer.Option(0.0, min=0, help="also train a small SASRec (ID-based baseline) "
                                               "on the same split for at most this many minutes and show it in "
                                               "the table; saved in RUN_DIR/sasrec")
          ) -> None:
    """Fit the semantic IDs, train the generative recommender, evaluate on valid and test."""
    from gensid.config.loading import load_config
    from gensid.prepare import load_run
    from gensid.side_by_side import sasrec_beside, sasrec_label, seen_excluded
    from gensid.train import distributed
    from gensid.training import train_run

    cfg = load_config(config, set_)
    if sasrec_minutes and cfg.data.task != "rec":
        raise InputError(f"--sasrec-minutes {sasrec_minutes:g}: SASRec is a recommendation baseline; "
                         f"this config has data.task {cfg.data.task}")
    if nproc > 1 and "LOCAL_RANK" not in os.environ:  # relaunch this command under torchrun
        args = [a for i, a in enumerate(sys.argv[1:]) if not a.startswith("--nproc")
                and not (i > 0 and sys.argv[i] == "--nproc")]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "gensid.cli", *args]
        raise typer.Exit(subprocess.run(command, check=False).returncode)
    distributed.init_from_env()
    run_dir = run_dir or Path("runs") / cfg.name
    metrics = train_run(cfg, run_dir)
    if not distributed.is_main():
        return
    excluded = cfg.serve.exclude_seen and cfg.data.task == "rec"  # answers skip seen items: show that too
    run = load_run(run_dir) if sasrec_minutes or examples or excluded else None
    labels = {"gensid": f"{cfg.method.name} (gensid)", "sasrec": "", "most_popular": "most_popular"}
    rows, sasrec, sasrec_summary = {labels["gensid"]: metrics["test"]}, None, None
    if sasrec_minutes:
        console.print(f"SASRec beside it: the same split, at most {sasrec_minutes:g} min, in {run_dir / 'sasrec'}")
        sasrec, sasrec_summary = sasrec_beside(run, sasrec_minutes)
        labels["sasrec"] = sasrec_label(sasrec_summary)
        rows[labels["sasrec"]] = sasrec_summary["test"]
    rows["most_popular"] = metrics["most_popular"]["test"]
    protocol = cfg.data.split.replace("_", "-") if cfg.data.task == "rec" else "search"
    console.print(_table(f"{metrics['dataset']} test (full catalog, {protocol})", rows))
    cold = metrics.get("cold_start")
    for subset in ("new", "seen") if cold else ():  # the same ranks, by whether the target is a new item
        key = f"test_{subset}"
        blocks = {labels["gensid"]: metrics, labels["sasrec"]: sasrec_summary or {},
                  "most_popular": metrics["most_popular"]}
        console.print(_table(f"the same, {subset}-item targets ({cold[f'{key}_targets']} users)",
                             {label: block[key] for label, block in blocks.items() if key in block}))
    if excluded:
        console.print(_table("the same, each user's seen items excluded as serve.exclude_seen answers "
                             "(RecBole's full-sort protocol; not the published one above)",
                             {labels[name]: m for name, m in seen_excluded(run, sasrec).items()}))
    console.print(f"training {metrics['train_minutes']:.1f} min, best epoch {metrics['best_epoch']}; "
                  f"run saved in {run_dir}")
    if examples:
        _show_examples(run, examples)


@app.command()
def baseline(kind: str = typer.Argument(..., help="popular, sasrec, bm25 (search) or dense"),
             config: Path = typer.Argument(..., help="an experiment config: its data, split, text encoder and "
                                                     "eval sections, and the baseline section's settings"),
             run_dir: Path = typer.Option(None, help="output folder (default runs/<name>-<KIND>)"),
             set_: list[str] = typer.Option([], "--set", help="override, e.g. --set baseline.sasrec.hidden=128"),
             seed: int | None = typer.Option(None, help="the seed (train.seed)")) -> None:
    """Train and evaluate a baseline on a config's data and split, into a run folder that gensid compare,
    gensid hybrid --scorer and gensid report --against take."""
    from gensid.baselines.training import train_baseline
    from gensid.config.loading import load_config

    cfg = load_config(config, [*set_, *([f"train.seed={seed}"] if seed is not None else [])])
    run_dir = run_dir or Path("runs") / f"{cfg.name}-{kind}"
    done = train_baseline(kind, cfg, run_dir)
    metrics = done.metrics
    protocol = cfg.data.split.replace("_", "-") if cfg.data.task == "rec" else "search"
    rows = {f"{metrics['method']} ({subset})" if subset else metrics["method"]: metrics[f"test{suffix}"]
            for subset, suffix in (("", ""), ("new-item targets", "_new"), ("seen-item targets", "_seen"))
            if f"test{suffix}" in metrics}
    console.print(_table(f"{metrics['dataset']} test (full catalog, {protocol})", rows))
    console.print(f"training {metrics['train_minutes']:.1f} min; baseline saved in {run_dir}", soft_wrap=True)


@app.command()
def evaluate(run_dir: Path, split: str = typer.Option("test", help="valid or test")) -> None:
    """Re-evaluate a trained run on a split and print its metrics."""
    from gensid.evaluation import evaluate_split
    from gensid.prepare import load_run

    if split not in ("valid", "test"):
        raise InputError(f"--split {split!r}: expected valid or test")
    run = load_run(run_dir)
    console.print(_table(f"{run.dataset.name} {split}",
                         {f"{run.cfg.method.name} (gensid)": evaluate_split(run, split, progress=True)}))


def history_ids(history: str) -> list[str]:
    """The external item ids of ``--history`` ("50,172,9"); ``InputError`` for an empty list or id."""
    ids = [i.strip() for i in history.split(",")]
    if ids == [""]:
        raise InputError(f"--history {history!r}: give at least one item id, e.g. --history 50,172")
    if "" in ids:
        raise InputError(f"--history {history!r}: item {ids.index('') + 1} is empty; give comma-separated "
                         "item ids, e.g. --history 50,172")
    return ids


@app.command()
def recommend(run_dir: Path, history: str = typer.Option(..., help="comma-separated item ids, oldest first"),
              k: int = typer.Option(10, help="how many items (at least 1)"),
              exclude_seen: bool | None = typer.Option(None, "--exclude-seen/--keep-seen",
                                                       help="drop the history's items from the answer "
                                                            "(default: the run's serve.exclude_seen, else keep)")
              ) -> None:
    """Top-k items for a history of (external) item ids; items added to the run over HTTP included."""
    from rich.markup import escape

    from gensid.live import load_run_with_added_items

    if k < 1:
        raise InputError(f"--k {k}: expected at least 1")
    ids = history_ids(history)
    run = load_run_with_added_items(run_dir)
    try:
        items = [run.dataset.catalog.index_of(i) for i in ids]
    except KeyError as exc:
        raise InputError(f"--history: {exc.args[0]} (not in the run's catalog)") from None
    exclude = run.exclude_seen_default if exclude_seen is None else exclude_seen
    for rank, item in enumerate(run.recommend(items, k, exclude_seen=exclude), 1):
        console.print(escape(f"{rank:>3}. [{run.dataset.catalog.item_ids[item]}] {run.dataset.catalog.title(item)}"),
                      soft_wrap=True)


@app.command()
def serve(run_dir: Path, host: str = typer.Option("127.0.0.1", help="interface to listen on"),
          port: int = typer.Option(8000, help="TCP port"),
          threads: int = typer.Option(1, min=1, help="torch threads for the model"),
          max_batch: int = typer.Option(64, min=1, help="most /recommend requests per model call"),
          max_wait_ms: float = typer.Option(5.0, min=0, help="how long a request waits for others to batch with"),
          max_queue: int = typer.Option(256, min=1, help="requests that may wait for a model call; more get 503"),
          max_body_bytes: int = typer.Option(1 << 20, min=1, help="larger request bodies get 413"),
          token: str | None = typer.Option(None, envvar="GENSID_TOKEN", show_envvar=True,
                                           help="bearer token that POST /items needs (required with a "
                                                "non-loopback --host); prefer the environment variable"),
          token_reads: bool = typer.Option(False, help="reads (/recommend, /search, /items/{id}, /metrics) "
                                                       "need the token too")
          ) -> None:
    """Serve a trained run, a bundle (gensid export) or a hybrid (gensid hybrid) over HTTP: /recommend or
    /search, /items, /items/{id}, /health, /metrics."""
    import torch
    import uvicorn

    from gensid.bundle import check_bundle, is_bundle
    from gensid.fusion.hybrid import hybrid_run_dir
    from gensid.prepare import load_run
    from gensid.serve import create_app
    from gensid.serve.guard import check_exposure

    check_exposure(host, token or None, token_reads)  # before the slow load
    if is_bundle(run_dir):  # a bad folder fails here, not inside the server's startup
        check_bundle(run_dir)
    else:
        # a bad folder, or a config.yaml edited after training, fails here as one line, not inside the
        # server's startup (which would print a traceback); the server loads the run again (about a second)
        load_run(hybrid_run_dir(run_dir) or run_dir, splits=False)
    torch.set_num_threads(threads)
    app_ = create_app(run_dir, max_batch, max_wait_ms, preload_text_encoder=True, token=token or None,
                      token_reads=token_reads, max_queue=max_queue, max_body_bytes=max_body_bytes)
    # no access log: a log line per request costs more than the request's JSON (GET /metrics counts them)
    uvicorn.run(app_, host=host, port=port, timeout_graceful_shutdown=30, access_log=False)


@app.command()
def export(run_dir: Path = typer.Argument(..., help="a trained run folder"),
           out_dir: Path = typer.Argument(..., help="new folder for the bundle (absent or empty)")) -> None:
    """Write a servable bundle of a trained run: weights, tokenizer, index, item table, config. gensid
    serve, gensid recommend and gensid.bundle.load_bundle load it without the run's data."""
    from gensid.bundle import export_bundle

    manifest = export_bundle(run_dir, out_dir)
    added = f" and {manifest['added_items']} added over HTTP" if manifest["added_items"] else ""
    console.print(f"bundle of {manifest['items']} items{added} ({manifest['strategy']}) in {out_dir}; "
                  f"serve it with: gensid serve {out_dir}", soft_wrap=True)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a trained run folder, or a bundle (gensid export)"),
           out: Path = typer.Option(None, help="the HTML file to write (default RUN_DIR/report.html)"),
           against: Path | None = typer.Option(None, help="a baseline run folder on the same data (gensid baseline, "
                                                          "or RUN_DIR/sasrec): its metrics in the table and hit@10 "
                                                          "by target popularity beside this run's")) -> None:
    """Write one self-contained HTML page about a run: metrics beside the baselines, training curve,
    config, the semantic IDs (code tree or digits, usage, collisions, drift), hit@10 by popularity
    against SASRec, and example users. Opens from disk in any browser, no network."""
    from gensid.report.run_page import write_report

    written = write_report(run_dir, out or run_dir / "report.html", against)
    console.print(f"report of {run_dir} in {written} ({written.stat().st_size / 1e6:.1f} MB)", soft_wrap=True)


@app.command()
def hybrid(run_dir: Path, out: Path = typer.Option(..., help="folder for the hybrid (hybrid.json, dense encoder)"),
           scorer: Path | None = typer.Option(None, "--scorer", "--sasrec",
                                              help="a baseline run folder on the run's data: gensid baseline sasrec "
                                                   "or dense (or RUN_DIR/sasrec of gensid train --sasrec-minutes); "
                                                   "search runs without one get a dense encoder trained here"),
           weights: str = typer.Option("", help="comma-separated mixing weights to try on validation "
                                               "(default 0, .05, .1, .2, ..., .9, 1)"),
           seed: int | None = typer.Option(None, help="dense encoder seed (default: the run's)"),
           threads: int = typer.Option(1, min=1, help="torch threads")) -> None:
    """Mix a trained run with a full-catalog scorer (a SASRec or dense baseline run; search runs without one:
    a dense dual encoder trained here on the run's training split), the weight chosen on validation; prints the test metrics of
    the run alone, the hybrid and the scorer alone, and writes the hybrid and its test ranks into OUT."""
    import torch

    from gensid.fusion.hybrid import fit_hybrid, test_comparison
    from gensid.prepare import load_run

    try:
        chosen = [float(w) for w in weights.split(",") if w.strip()] or None
    except ValueError:
        raise InputError(f"--weights {weights!r}: give numbers, e.g. 0,0.2,0.5") from None
    if out.exists() and any(out.iterdir()):  # a run directory or an earlier hybrid: never overwrite
        raise InputError(f"{out}: exists and is not empty; give a new folder for the hybrid")
    torch.set_num_threads(threads)
    run = load_run(run_dir)
    mixed, _ = fit_hybrid(run, scorer, chosen, seed, progress=True)
    compared = test_comparison(mixed, progress=True)
    mixed.save(out, test_ranked=compared["hybrid"][1])
    console.print(_table(f"test, weight {mixed.weight} (chosen on validation)",
                         {name: m for name, (m, _) in compared.items()}))
    console.print(f"hybrid in {out}; serve it with: gensid serve {out}")


@app.command("finetune-text")
def finetune_text(config: Path = typer.Argument(..., help="experiment YAML whose data and text encoder to adapt"),
                  out: Path = typer.Option(..., help="new folder for the fine-tuned encoder"),
                  set_: list[str] = typer.Option([], "--set", help="override, e.g. --set data.max_users=500"),
                  epochs: int = typer.Option(1, min=1),
                  lr: float = typer.Option(2e-5, min=0),
                  batch_size: int = typer.Option(64, min=2, help="pairs per step (in-batch negatives)"),
                  max_pairs: int = typer.Option(0, min=0, help=">0: a random subset of the training pairs"),
                  threads: int = typer.Option(0, min=0, help="torch threads (0: torch's default)")
                  ) -> None:
    """Fine-tune the config's sentence encoder on its training split (query or previous item ->
    clicked item, in-batch InfoNCE); use it with --set text.model=OUT."""
    import random

    import torch

    from gensid.config.loading import load_config
    from gensid.prepare import load_task
    from gensid.text.finetune import finetune_text_encoder, training_pairs

    cfg = load_config(config, set_)
    if threads:
        torch.set_num_threads(threads)
    _, dataset, splits, queries = load_task(cfg)
    pairs = training_pairs(dataset.catalog.texts, splits.train, queries["train"] if queries else None)
    if 0 < max_pairs < len(pairs):
        pairs = random.Random(cfg.train.seed).sample(pairs, max_pairs)
    summary = finetune_text_encoder(pairs, cfg.text.model, out, epochs, lr, batch_size, seed=cfg.train.seed)
    console.print(f"{summary['pairs']} pairs, {summary['steps']} steps, loss per epoch "
                  + ", ".join(f"{x:.3f}" for x in summary["loss_per_epoch"])
                  + f", {summary['minutes']:.1f} min; use it with --set text.model={out}", soft_wrap=True)


@app.command()
def experiment(plan: Path = typer.Argument(..., help="an experiment plan YAML (a list of variants), e.g. "
                                                      "research/plans/beauty-best.yaml"),
               shard: str = typer.Option("0/1", help="i/n: run every n-th variant from the i-th (one process per core)"),
               report_only: bool = typer.Option(False, help="only rebuild the table and plots"),
               only: str = typer.Option("", help="run only this variant, by its table label, e.g. 'dgi (full)'"),
               seed: int | None = typer.Option(None, help="run only this seed (of --only's variant, or of every variant)")
               ) -> None:
    """Run an experiment's variants (resumable), then write its table, JSON and plots."""
    from gensid.experiment import run_experiment

    try:
        index, count = (int(x) for x in shard.split("/"))
        assert 0 <= index < count
    except (ValueError, AssertionError):
        raise InputError(f"--shard {shard!r}: expected i/n with 0 <= i < n, e.g. 0/2") from None
    out = run_experiment(plan, (index, count), report_only, only=only, seed=seed)
    console.print((out / "table.md").read_text())
    console.print(f"report in {out}")


@app.command()
def compare(control: str = typer.Argument(..., help="run directory; '{seed}' in it is replaced by each of --seeds"),
            treatment: str = typer.Argument(..., help="run directory paired with CONTROL, same '{seed}' rule"),
            seeds: str = typer.Option("", help="comma-separated seeds, e.g. 1,2,3 (pairs one run of each side per seed)"),
            metrics: str = typer.Option("hit@10,ndcg@10", help="comma-separated per-user metrics"),
            resamples: int = typer.Option(10_000, min=100, help="bootstrap and randomization resamples"),
            by_popularity: bool = typer.Option(False, help="also test within each item-popularity bucket of the "
                                                              "targets (5 buckets, head -> tail)"),
            subset: str = typer.Option("all", help="a cold-start split's test users: all, new (target is a new "
                                                   "item) or seen"),
            out: Path = typer.Option(None, help="also write the result as JSON here")) -> None:
    """Paired per-user test of TREATMENT against CONTROL on the same test users (see eval.significance)."""
    from gensid.compare import compare_runs
    from gensid.io import write_json

    seed_list = [s.strip() for s in seeds.split(",") if s.strip()]
    result = compare_runs(control, treatment, seed_list, [m.strip() for m in metrics.split(",") if m.strip()],
                          resamples, progress=True, by_popularity=by_popularity, subset=subset)
    users = f"{result['test_users']} test users" + (f" ({subset} targets)" if subset != "all" else "")
    table = Table(title=f"treatment {treatment}\nagainst {control}\n{users}, "
                        f"{len(result['pairs'])} pair(s); p: users resampled; p over pairs: t-test of the pairs' differences; "
                        "per pair: difference (p)")
    groups = [("all", result["test_users"], result["metrics"])]
    groups += [(f"bucket {b['bucket']}", b["test_users"], b["metrics"]) for b in result.get("by_popularity", [])]
    for column in ("users", "metric", "control", "treatment", "difference", "95% interval", "p", "p over pairs", "per pair"):
        table.add_column(column, justify="left" if column in ("users", "metric", "per pair") else "right",
                         no_wrap=column != "per pair")
    for group, users, tests in groups:
        for name, r in tests.items():
            pooled = r["pooled"]
            table.add_row(f"{group} ({users})", name, f"{r['control']:.4f}", f"{r['treatment']:.4f}", f"{pooled['mean']:+.4f}",
                          f"{pooled['ci_low']:+.4f} .. {pooled['ci_high']:+.4f}", f"{pooled['p_value']:.3f}",
                          f"{r['across_pairs']['p_value']:.3f}",
                          " ".join(f"{p['mean']:+.4f} ({p['p_value']:.2f})" for p in r["pairs"]))
    console.print(table)
    if by_popularity:
        console.print("buckets: targets' item popularity in the training data, 0 = head .. 4 = tail "
                      "(each bucket's items hold a fifth of the training interactions)")
    if out:
        write_json(out, result)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """gensid's own warnings as one line (``warning: ...``); any other warning as Python shows it."""
    if issubclass(category, GensidWarning):
        Console(stderr=True).print(Text.assemble(("warning: ", "bold yellow"), str(message)), soft_wrap=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main() -> None:
    """The ``gensid`` command: bad input (:class:`InputError`) prints its message and exits 1,
    without a traceback; any other exception is a bug and keeps its traceback. gensid's warnings
    (:class:`GensidWarning`) print as one line."""
    warnings.showwarning = _show_warning
    try:
        app()
    except InputError as exc:
        Console(stderr=True).print(Text.assemble(("error: ", "bold red"), str(exc)), soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
