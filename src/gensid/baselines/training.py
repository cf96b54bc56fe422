"""Baselines as runs: ``gensid baseline KIND CONFIG --run-dir DIR`` (:func:`train_baseline`).

Most popular, SASRec, BM25 or the dense dual encoder, trained and evaluated on the data, split,
text encoder and evaluation settings of an ordinary experiment config (the baseline's own settings
are its ``baseline`` section), written as a folder of a gensid run's shape:

- ``config.yaml``, the resolved config, and ``baseline.json`` (``{"kind": "sasrec"}``), which tells
  a baseline's folder from a gensid run's;
- ``model.safetensors``: the trained weights (most popular: its item order; BM25 has none, its index
  is rebuilt from the item text in seconds); SASRec and the dense dual encoder train through the one
  :class:`~gensid.train.Trainer`, so they also keep ``checkpoint.safetensors`` and resume exactly;
- ``metrics.json``: valid and test metrics at ``eval.ks`` (a cold-start split's ``valid_new``,
  ``test_new``, ... too), ``test_by_popularity``, epochs and training minutes;
- ``test_ranks.json`` (:func:`gensid.evaluation.save_test_ranks`), so ``gensid compare`` pairs the
  baseline with any run on the same split, and ``log.jsonl``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gensid.baselines import BASELINE_FILE, baseline_kind
from gensid.baselines.bm25 import BM25Search
from gensid.baselines.dense import DenseDualEncoder
from gensid.baselines.popularity import MostPopular
from gensid.baselines.sasrec import SASRec
from gensid.config.loading import load_config
from gensid.config.sections import DenseConfig, ExperimentConfig, TrainConfig
from gensid.data import Dataset, Interactions, LeaveOneOut, Samples
from gensid.data.search import SearchSamples
from gensid.data.splits import sequence_windows
from gensid.errors import InputError, RunError
from gensid.eval.analysis import hit_rate_by_bucket, popularity_buckets
from gensid.eval.metrics import metrics_from_ranks, rank_of_targets
from gensid.evaluation import (
    cold_start_summary,
    save_test_ranks,
    subset_metrics,
    training_popularity,
)
from gensid.io import JsonlLog, save_tensors, seed_everything, write_json, write_text
from gensid.prepare import catalog_text_vectors, check_inputs, load_task
from gensid.report.results import git_commit
from gensid.text import embed_split_texts
from gensid.train import ItemFeatures, Trainer
from gensid.train.objectives import DenseObjective, SASRecObjective

KINDS = {"popular": ("rec", "search"), "sasrec": ("rec",), "bm25": ("search",), "dense": ("rec", "search")}
WEIGHTS = "model.safetensors"


@dataclass
class Task:
    """What a baseline trains and is evaluated on: the config, the data (``full``: before
    ``data.max_users``), its split and, for search, each split's query texts."""

    cfg: ExperimentConfig
    full: Dataset
    dataset: Dataset
    splits: LeaveOneOut
    queries: dict[str, list[str]] | None

    @property
    def num_items(self) -> int:
        return len(self.dataset.catalog)

    def samples(self, split: str) -> Samples:
        return getattr(self.splits, split)

    def search_samples(self, split: str) -> SearchSamples:
        samples = self.samples(split)
        return SearchSamples(self.queries[split], samples.histories, samples.targets, samples.users)

    def item_text(self, progress: bool) -> torch.Tensor:
        """[N, T] the items' text vectors (``text.model``)."""
        return catalog_text_vectors(self.cfg, self.full, self.dataset, progress)

    def query_vectors(self, text_dim: int) -> dict[str, torch.Tensor]:
        """Each split's query vectors [N_split, T]; zeros for recommendation (the history alone)."""
        if self.queries is None:
            return {split: torch.zeros(len(self.samples(split)), text_dim) for split in ("train", "valid", "test")}
        return embed_split_texts(self.queries, self.cfg.text.model, self.cfg.text.batch_size)


@dataclass
class Baseline:
    """A trained baseline: its name in results files, its model, how it ranks a split (split name ->
    item ids [N, eval.beam_size], best first) and its training summary (epochs, minutes)."""

    method: str
    model: MostPopular | SASRec | BM25Search | DenseDualEncoder
    rank: Callable[[str], np.ndarray]
    summary: dict


@dataclass
class BaselineRun:
    """What :func:`train_baseline` returns: the metrics it wrote, the trained baseline and its task."""

    kind: str
    metrics: dict
    baseline: Baseline
    task: Task


def check_baseline(kind: str, cfg: ExperimentConfig, run_dir: Path) -> None:
    """Everything :func:`train_baseline` can refuse, before it writes anything: the kind, the kind
    against ``data.task``, what ``run_dir`` already holds, and the data and text model the config names."""
    if kind not in KINDS:
        raise InputError(f"KIND {kind!r}: expected one of {', '.join(KINDS)}")
    if cfg.data.task not in KINDS[kind]:
        raise InputError(f"{kind}: a baseline for data.task {' or '.join(KINDS[kind])}; this config has "
                         f"data.task {cfg.data.task}")
    config = run_dir / "config.yaml"
    if config.exists():
        held = baseline_kind(run_dir)
        if held != kind:
            what = f"a {held} baseline" if held else "a gensid run"
            raise RunError(f"{run_dir}: holds {what}, not a {kind} baseline; use a new directory")
        if load_config(config).to_dict() != cfg.to_dict():
            raise RunError(f"{config}: this run directory holds a different config; use a new directory")
    check_inputs(cfg, run_dir)


def train_baseline(kind: str, cfg: ExperimentConfig, run_dir: str | Path, progress: bool = True) -> BaselineRun:
    """Train the baseline ``kind`` on ``cfg``'s data and split, evaluate it on valid and test and write
    its run folder (the module's docstring). Run again on the same folder: SASRec and dense resume from
    their checkpoint; the others, seconds to train, train again to the same result."""
    run_dir = Path(run_dir)
    check_baseline(kind, cfg, run_dir)
    commit = git_commit()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    write_text(run_dir / "config.yaml", cfg.to_yaml())
    write_json(run_dir / BASELINE_FILE, {"kind": kind})
    full, dataset, splits, queries = load_task(cfg, progress)
    task = Task(cfg, full, dataset, splits, queries)
    log = JsonlLog(run_dir / "log.jsonl")
    log.write(event="prepared", baseline=kind, users=len(dataset.interactions), items=task.num_items,
              train_samples=len(splits.train), new_items=len(splits.cold_items) if splits.cold_items is not None else 0)
    baseline = FIT[kind](task, run_dir, progress)
    metrics, ranks = evaluate_baseline(task, baseline)
    metrics = {"dataset": dataset.name, "task": cfg.data.task, "baseline": kind, "method": baseline.method,
               "commit": commit, **baseline.summary, **metrics}
    save_test_ranks(run_dir, splits.test, ranks, cfg.eval.beam_size, splits.new_targets(splits.test))
    write_json(run_dir / "metrics.json", metrics)
    log.write(event="done", test=metrics["test"])
    return BaselineRun(kind, metrics, baseline, task)


def evaluate_baseline(task: Task, baseline: Baseline) -> tuple[dict, np.ndarray]:
    """Valid and test metrics at ``eval.ks`` (and a cold-start split's new/seen subsets), hit@10 by
    the test target's popularity, a cold-start summary; and the test ranks [N] (-1: not ranked)."""
    ks, out = task.cfg.eval.ks, {}
    for split in ("valid", "test"):
        samples, ranked = task.samples(split), baseline.rank(split)
        ranks = rank_of_targets(ranked, samples.targets)
        out[split] = metrics_from_ranks(ranks, ks)
        out.update(subset_metrics(task.splits, samples, ranks, ks, split))
    buckets = popularity_buckets(training_popularity(task.splits, task.num_items))
    out["test_by_popularity"] = hit_rate_by_bucket(ranked, samples.targets, buckets)
    if task.splits.cold_items is not None:
        out["cold_start"] = cold_start_summary(task.splits, task.cfg.data.cold_share, ranked)
    return out, ranks


def fit_popular(task: Task, run_dir: Path, progress: bool) -> Baseline:
    """Items by how often they are training targets, the same list for everyone."""
    model = MostPopular.fit(task.splits.train, task.num_items)
    save_tensors(run_dir / WEIGHTS, {"order": torch.from_numpy(model.order)})
    depth = task.cfg.eval.beam_size
    return Baseline("most_popular", model, lambda split: model.rank(len(task.samples(split)), depth),
                    {"train_minutes": 0.0})


def fit_bm25(task: Task, run_dir: Path, progress: bool) -> Baseline:
    """BM25 over the item text, queried with the search query and the history's titles."""
    settings, start = task.cfg.baseline.bm25, time.perf_counter()
    model = BM25Search(task.dataset.catalog, settings.k1, settings.b)
    minutes = (time.perf_counter() - start) / 60
    depth = task.cfg.eval.beam_size
    return Baseline("bm25", model, lambda split: model.rank(task.search_samples(split), depth),
                    {"train_minutes": minutes})


def fit_dense(task: Task, run_dir: Path, progress: bool) -> Baseline:
    """The dense dual encoder (``baseline.dense``) trained by :func:`train_dense`."""
    cfg, settings = task.cfg, task.cfg.baseline.dense
    text = task.item_text(progress)
    queries = task.query_vectors(text.shape[1])
    seed_everything(cfg.train.seed)
    model = DenseDualEncoder(text.shape[1], settings.dim, settings.temperature)
    summary = train_dense(model, task.splits, queries, text, dense_schedule(settings, cfg.train), run_dir, progress)
    model.save(run_dir / WEIGHTS)  # the best weights, with their sizes
    depth = cfg.eval.beam_size
    return Baseline("dense", model, lambda split: model.rank(task.samples(split), queries[split], text, depth), summary)


def dense_schedule(settings: DenseConfig, train: TrainConfig) -> TrainConfig:
    """The Trainer's settings for the dense dual encoder: ``settings``' epochs, batch size and learning
    rate, no warmup; ``train``'s seed, ``stop_epoch`` and threads. Batches of random samples (the
    negatives are the batch's other targets)."""
    return TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, warmup_steps=0,
                       seed=train.seed, stop_epoch=train.stop_epoch, threads=train.threads, bucket_batches=1)


def train_dense(model: DenseDualEncoder, splits: LeaveOneOut, queries: dict[str, torch.Tensor], text: torch.Tensor,
                schedule: TrainConfig, run_dir: Path, progress: bool = False) -> dict:
    """Train ``model`` through the Trainer (checkpoints in ``run_dir``, resumable) on the training
    samples, the best epoch by validation ndcg@10, which ``model`` ends with (in eval mode).
    ``queries``: each split's query vectors [N_split, T] (zeros for recommendation); ``text`` [N, T]
    the items' text vectors. Returns the Trainer's summary and the last epoch's loss (``final_loss``)."""
    valid = splits.valid

    def validate(m: DenseDualEncoder) -> dict[str, float]:
        return metrics_from_ranks(rank_of_targets(m.rank(valid, queries["valid"], text, 10), valid.targets), [10])

    ids = ItemFeatures(torch.arange(len(text))[:, None])  # the objective reads the text vectors of these ids
    trainer = Trainer(model, schedule, splits.train, lambda: ids, run_dir, validate, DenseObjective(text),
                      progress=progress, queries=queries["train"])
    summary = trainer.fit()
    model.eval()
    losses = [event["loss"] for event in trainer.log.read() if event["event"] == "epoch"]
    return {**summary, "final_loss": losses[-1]}


def sasrec_schedule(cfg: ExperimentConfig) -> TrainConfig:
    """The Trainer's settings for SASRec: ``baseline.sasrec``'s, no warmup, the run's seed,
    ``stop_epoch`` and threads. Batches of random windows, not of windows of similar length: the
    loss is a batch's mean over its positions, so a batch of short windows would give each of its
    positions more weight (Office, seed 1: test ndcg@10 .0420 with length buckets, .0495 without)."""
    s, train = cfg.baseline.sasrec, cfg.train
    return TrainConfig(epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, weight_decay=s.weight_decay, warmup_steps=0,
                       seed=train.seed, max_minutes=s.max_minutes, stop_epoch=train.stop_epoch, threads=train.threads,
                       patience=s.patience, bucket_batches=1)


def fit_sasrec(task: Task, run_dir: Path, progress: bool) -> Baseline:
    """SASRec (``baseline.sasrec``, ``data.max_history`` positions) trained by :func:`train_sasrec`."""
    cfg, settings = task.cfg, task.cfg.baseline.sasrec
    item_text = task.item_text(progress) if settings.text_items else None
    seed_everything(cfg.train.seed)
    model = SASRec(task.num_items, settings, cfg.data.max_history, item_text)
    summary = train_sasrec(model, task.dataset.interactions, task.splits, cfg, run_dir, progress)
    model.save(run_dir / WEIGHTS, best_epoch=summary["best_epoch"])  # the best weights, with their sizes
    depth = cfg.eval.beam_size
    return Baseline("sasrec_text" if settings.text_items else "sasrec", model,
                    lambda split: model.rank(task.samples(split), depth), summary)


def train_sasrec(model: SASRec, interactions: Interactions, splits: LeaveOneOut, cfg: ExperimentConfig,
                 run_dir: Path, progress: bool = False) -> dict:
    """Train ``model`` through the Trainer (checkpoints in ``run_dir``, resumable) on windows of the
    training sequences, the best epoch by validation ndcg@10, which ``model`` ends with (in eval mode);
    a cold-start split's new items are no candidates of its training softmax. Returns the Trainer's
    summary (epochs, best_epoch, train_minutes)."""
    absent = torch.zeros(model.num_items, dtype=torch.bool)
    if splits.cold_items is not None:
        absent[torch.from_numpy(splits.cold_items)] = True
    windows = sequence_windows(interactions, model.max_len, splits.cold_items)
    ids = ItemFeatures(torch.arange(model.num_items)[:, None])  # an ID model: an item's one "code" is its id
    valid, ks = splits.valid, sorted({*cfg.eval.ks, 10})  # ndcg@10 picks the best epoch

    def validate(m: SASRec) -> dict[str, float]:
        return metrics_from_ranks(rank_of_targets(m.rank(valid, max(ks)), valid.targets), ks)

    trainer = Trainer(model, sasrec_schedule(cfg), windows, lambda: ids, run_dir, validate, SASRecObjective(absent),
                      progress=progress)
    summary = trainer.fit()
    model.eval()
    return summary


FIT: dict[str, Callable[[Task, Path, bool], Baseline]] = {
    "popular": fit_popular, "sasrec": fit_sasrec, "bm25": fit_bm25, "dense": fit_dense}
