"""Training a run end to end (:func:`train_run`), two-stage or joint.

data -> text vectors -> tokenizer and semantic IDs (fitted once, saved) -> SID index ->
generative recommender (trained, resumable; with a joint ``method`` the tokenizer learns inside
it and the index is rebuilt from its final deterministic assignment) -> valid/test metrics and
analyses. A run directory holds ``config.yaml``, ``quantizer.safetensors``, ``index/``
(``sids.safetensors``, ``item_text.safetensors``), ``model.safetensors``,
``checkpoint.safetensors``, ``metrics.json``, ``test_ranks.json``, ``log.jsonl`` and, for a warm start
(``train.init_from``) or a two-stage run on a learned index (``quantizer.sids_from``),
``init_from.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gensid.config.loading import load_config
from gensid.config.sections import ExperimentConfig
from gensid.data import Samples
from gensid.data.splits import sequence_windows
from gensid.errors import RunError
from gensid.eval.analysis import (
    SIDMonitor,
)
from gensid.eval.calibration import fit_new_item_offset
from gensid.evaluation import evaluate_split, popularity_metrics, save_test_ranks, test_analysis
from gensid.io import JsonlLog, load_tensors, save_tensors, write_json, write_text
from gensid.model import GenerativeRecommender
from gensid.prepare import check_inputs, load_init_weights, prepare
from gensid.report.results import git_commit
from gensid.run import Run
from gensid.train import Trainer, distributed
from gensid.train.objectives import (
    JointObjective,
    NextTokenObjective,
    ParallelObjective,
)
from gensid.train.trainer import Objective


def validation_subset(samples: Samples, max_users: int, seed: int = 0) -> np.ndarray:
    """Rows of a fixed random subset of ``max_users`` samples (all when 0): unbiased, unlike the first N."""
    if not max_users or max_users >= len(samples):
        return np.arange(len(samples))
    return np.sort(np.random.default_rng(seed).choice(len(samples), max_users, replace=False))


def calibrate_new_items(run: Run, valid: Samples, weights: Path, log: JsonlLog) -> dict:
    """Fit the parallel model's new-item offset on ``valid`` (:mod:`gensid.eval.calibration`) and
    save it with the best weights."""
    fit = fit_new_item_offset(run, valid, run.splits.new_targets(valid))
    save_tensors(weights, run.model.state_dict(), {**load_tensors(weights)[1], "new_item_offset": fit.offset})
    log.write(event="new_item_offset", **vars(fit))
    return vars(fit)


def train_run(cfg: ExperimentConfig, run_dir: str | Path, progress: bool = True) -> dict:
    """Train and evaluate; resumes if ``run_dir`` holds a checkpoint of the same config."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if config_path.exists() and load_config(config_path).to_dict() != cfg.to_dict():
        raise RunError(f"{config_path}: this run directory holds a different config; use a new directory")
    main = distributed.is_main()  # under torchrun only rank 0 writes, validates and evaluates
    progress = progress and main
    commit = git_commit()  # the code this process runs; HEAD may move while it trains
    check_inputs(cfg, run_dir)  # a config that cannot run fails before anything is written
    if cfg.train.threads > 0:  # training's threads; a loaded run keeps its caller's (gensid serve --threads)
        torch.set_num_threads(cfg.train.threads)
    if main:
        write_text(config_path, cfg.to_yaml())
    log = JsonlLog(run_dir / "log.jsonl")
    run = prepare(cfg, run_dir, progress)
    if main:
        log_prepared(log, run, cfg)
    started = warm_start(run, cfg, run_dir)
    valid_subset, valid_queries = validation_samples(run, cfg)

    def validate(_: GenerativeRecommender) -> dict[str, float]:
        run.refresh_index()
        return run.evaluate(valid_subset, valid_queries)

    objective, observe, train = objective_of(run, cfg, run_dir)

    trainer = Trainer(run.model, cfg.train, train, lambda: run.items, run_dir, validate, objective, observe,
                      progress=progress, queries=run.split_queries("train"),
                      before_epoch=epoch_start(run, cfg, objective, log, main))
    summary = trainer.fit()
    if not main:
        return summary
    if run.parallel and cfg.parallel.item_dropout and cfg.parallel.new_item_offset is None:
        summary["new_item_offset"] = calibrate_new_items(run, valid_subset, trainer.best_path, log)
    start = time.perf_counter()
    analysis, ranks = test_analysis(run, progress)
    metrics = {
        "dataset": run.dataset.name,
        "task": cfg.data.task,
        "strategy": cfg.method.family,
        "method": cfg.method.name,
        "commit": commit,
        **summary,
        **started,
        "valid": evaluate_split(run, "valid", progress=progress),
        **analysis,
        "most_popular": {**popularity_metrics(run, "valid"), **popularity_metrics(run, "test")},
    }
    metrics["eval_seconds"] = time.perf_counter() - start
    save_test_ranks(run_dir, run.splits.test, ranks, cfg.eval.beam_size, run.splits.new_targets(run.splits.test))
    write_json(run_dir / "metrics.json", metrics)
    log.write(event="done", test=metrics["test"])
    return metrics


def log_prepared(log: JsonlLog, run: Run, cfg: ExperimentConfig) -> None:
    cold = run.splits.cold_items
    log.write(event="prepared", users=len(run.dataset.interactions), items=len(run.dataset.catalog),
              train_samples=len(run.splits.train), new_items=len(cold) if cold is not None else 0,
              sid_sizes=run.index.sizes if run.index is not None else [cfg.parallel.codebook_size] * cfg.parallel.digits,
              world_size=distributed.rank_and_size()[1])


def warm_start(run: Run, cfg: ExperimentConfig, run_dir: Path) -> dict:
    """The record of a warm start or a run on a learned index (``init_from.json``, {} without one);
    a warm start not yet resumed starts from the other run's weights."""
    started = {}
    if (run_dir / "init_from.json").exists():
        started = json.loads((run_dir / "init_from.json").read_text())
    if cfg.train.init_from and not (run_dir / "checkpoint.safetensors").exists():  # resumed: its own weights
        load_init_weights(run.model, Path(started["init_from"]))
        run.refresh_index()
    return started


def validation_samples(run: Run, cfg: ExperimentConfig) -> tuple[Samples, torch.Tensor | None]:
    """The validation users the trainer evaluates on (a fixed subset of ``eval.max_users``) and
    their queries (search runs; else None)."""
    rows = validation_subset(run.splits.valid, cfg.eval.max_users)
    valid = run.splits.valid
    queries = run.split_queries("valid")[rows] if run.queries is not None else None
    return Samples(valid.histories[rows], valid.targets[rows], valid.users[rows]), queries


def epoch_start(run: Run, cfg: ExperimentConfig, objective: Objective, log: JsonlLog, main: bool
                ) -> Callable[[int], None]:
    """What happens before each epoch (given the epochs done): from ``train.freeze_index_epoch`` on,
    the item side is frozen; the index is refreshed."""

    def before_epoch(epochs_done: int) -> None:
        freeze = cfg.train.freeze_index_epoch
        if freeze and epochs_done >= freeze:
            # a run resumed inside the freeze epoch has logged it already
            if main and epochs_done == freeze and not any(e.get("event") == "index_frozen" for e in log.read()):
                log.write(event="index_frozen", epoch=epochs_done)
            objective.freeze_item_side(run.model)
        run.refresh_index()

    return before_epoch


def objective_of(run: Run, cfg: ExperimentConfig, run_dir: Path) -> tuple[Objective, SIDMonitor | None, Samples]:
    """The run's training objective, its per-epoch SID monitor (joint runs) and training samples."""
    if run.joint:
        objective = JointObjective(cfg, run.text)
        observe = SIDMonitor(run.text, run.quantizer_codes(), run_dir / "index" / "codes_last_epoch.safetensors",
                             lambda: objective.assignment)
        return objective, observe, run.splits.train
    if run.parallel:  # every history position is a prediction: windows, not one sample per prefix
        trained = torch.from_numpy(run.splits.trained_items(len(run.dataset.catalog)))
        return (ParallelObjective(cfg, run.items, trained), None,
                sequence_windows(run.dataset.interactions, cfg.data.max_history, run.splits.cold_items))
    return NextTokenObjective(cfg), None, run.splits.train
