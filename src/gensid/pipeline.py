"""The two-stage pipeline end to end, and loading a finished run.

``train_run``: data -> text vectors -> semantic IDs (fitted once, saved) -> SID
index -> generative recommender (trained, resumable) -> valid/test metrics.
A run directory holds ``config.yaml``, ``quantizer.safetensors``, ``index/``
(``sids.safetensors``, ``item_text.safetensors``), ``model.safetensors``,
``checkpoint.safetensors``, ``metrics.json`` and ``log.jsonl``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gensid.baselines.popularity import MostPopular
from gensid.config import ExperimentConfig, load_config
from gensid.data import Dataset, LeaveOneOut, Samples, leave_one_out, load_dataset
from gensid.eval.evaluate import evaluate_generative, recommend_items
from gensid.eval.metrics import metrics_from_ranks, rank_of_targets
from gensid.index import SIDIndex
from gensid.io import JsonlLog, load_tensors, save_tensors, seed_everything, write_json, write_text
from gensid.model import GenerativeRecommender
from gensid.quantize import SemanticIDs, fit_semantic_ids
from gensid.text import embed_texts
from gensid.train import ItemFeatures, Trainer


@dataclass
class Run:
    """Everything a trained run needs to rank items."""

    cfg: ExperimentConfig
    run_dir: Path
    dataset: Dataset
    splits: LeaveOneOut
    sids: SemanticIDs
    index: SIDIndex
    items: ItemFeatures
    model: GenerativeRecommender

    def recommend(self, history: list[int], k: int = 10) -> list[int]:
        """Top-k item ids for one history of internal item ids (oldest first)."""
        if not history:
            raise ValueError("history is empty: give at least one item id")
        unknown = [i for i in history if not 0 <= i < len(self.dataset.catalog)]
        if unknown:
            raise ValueError(f"unknown internal item id(s) {unknown[:5]}")
        hist = np.full((1, self.cfg.data.max_history), -1, dtype=np.int64)
        recent = np.asarray(history[-self.cfg.data.max_history:], dtype=np.int64)
        hist[0, -len(recent):] = recent
        samples = Samples(hist, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
        ranked = recommend_items(self.model, self.index, samples, self.items, max(k, self.cfg.eval.beam_size))
        return [int(i) for i in ranked[0][:k] if i >= 0]


def prepare(cfg: ExperimentConfig, run_dir: Path, progress: bool = True) -> Run:
    """Load data and text vectors, fit (or reload) the semantic IDs, build an untrained model."""
    seed_everything(cfg.train.seed)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    dataset = load_dataset(cfg.data.source, cfg.data.format, cfg.data.text_fields).head(cfg.data.max_users)
    splits = leave_one_out(dataset.interactions, cfg.data.max_history)
    index_dir = run_dir / "index"
    sids_path, text_path = index_dir / "sids.safetensors", index_dir / "item_text.safetensors"
    if sids_path.exists() and text_path.exists():
        text = load_tensors(text_path)[0]["vectors"]
        tensors, meta = load_tensors(sids_path)
        sids = SemanticIDs(tensors["codes"].numpy(), meta["sizes"])
    else:
        vectors = embed_texts(dataset.catalog.texts, cfg.text.model, cfg.text.batch_size, progress)
        tokenizer, sids, stats = fit_semantic_ids(vectors, cfg.quantizer, cfg.train.seed, progress)
        text = torch.from_numpy(vectors)
        save_tensors(run_dir / "quantizer.safetensors", tokenizer.state_dict())
        write_json(index_dir / "sid_stats.json", stats)
        save_tensors(text_path, {"vectors": text})
        save_tensors(sids_path, {"codes": torch.from_numpy(sids.codes)}, {"sizes": sids.sizes})
    if len(sids.codes) != len(dataset.catalog):
        raise ValueError(f"{sids_path}: {len(sids.codes)} items, but the catalog has {len(dataset.catalog)}")
    index = SIDIndex(sids.codes, sids.sizes)
    uses_text = cfg.model.history_input == "codes+text"
    items = ItemFeatures(torch.from_numpy(sids.codes), text if uses_text else None)
    model = GenerativeRecommender(sids.sizes, cfg.model, cfg.data.max_history, text.shape[1] if uses_text else None)
    return Run(cfg, run_dir, dataset, splits, sids, index, items, model)


def evaluate_split(run: Run, split: str, max_users: int = 0, progress: bool = False) -> dict[str, float]:
    samples = getattr(run.splits, split).head(max_users)
    e = run.cfg.eval
    return evaluate_generative(run.model, run.index, samples, run.items, e.ks, e.beam_size, e.batch_size, progress)


def popularity_metrics(run: Run, split: str) -> dict[str, float]:
    model = MostPopular.fit(run.splits.train, len(run.dataset.catalog))
    samples = getattr(run.splits, split)
    return metrics_from_ranks(rank_of_targets(model.rank(len(samples), max(run.cfg.eval.ks)), samples.targets),
                              run.cfg.eval.ks)


def train_run(cfg: ExperimentConfig, run_dir: str | Path, progress: bool = True) -> dict:
    """Train and evaluate; resumes if ``run_dir`` holds a checkpoint of the same config."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if config_path.exists() and load_config(config_path).to_dict() != cfg.to_dict():
        raise ValueError(f"{config_path}: this run directory holds a different config; use a new directory")
    write_text(config_path, cfg.to_yaml())
    log = JsonlLog(run_dir / "log.jsonl")
    run = prepare(cfg, run_dir, progress)
    log.write(event="prepared", users=len(run.dataset.interactions), items=len(run.dataset.catalog),
              train_samples=len(run.splits.train), sid_sizes=run.sids.sizes)
    trainer = Trainer(run.model, cfg.train, run.splits.train, run.items, run_dir,
                      validate=lambda _: evaluate_split(run, "valid", cfg.eval.max_users), progress=progress)
    summary = trainer.fit()
    start = time.perf_counter()
    metrics = {
        "dataset": run.dataset.name,
        "method": "two_stage",
        **summary,
        "valid": evaluate_split(run, "valid", progress=progress),
        "test": evaluate_split(run, "test", progress=progress),
        "most_popular": {"valid": popularity_metrics(run, "valid"), "test": popularity_metrics(run, "test")},
        "sid": {"sizes": run.sids.sizes, "collision_rate": run.sids.collision_rate()},
    }
    metrics["eval_seconds"] = time.perf_counter() - start
    write_json(run_dir / "metrics.json", metrics)
    log.write(event="done", test=metrics["test"])
    return metrics


def load_run(run_dir: str | Path) -> Run:
    """A finished (or checkpointed) run, ready to rank items."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    run = prepare(cfg, run_dir, progress=False)
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{weights}: the run has no trained model yet")
    run.model.load_state_dict(load_tensors(weights)[0])
    run.model.eval()
    return run
