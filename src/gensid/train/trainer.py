"""Training loop with checkpoints that make an interrupted run resume exactly.

Each epoch shuffles with a generator seeded by ``(seed, epoch)`` and reseeds torch's
global RNG (dropout) the same way, so an epoch's result does not depend on whether
the run was restarted before it. ``checkpoint.safetensors`` (model, optimizer,
schedule, counters) is written atomically after every epoch; ``model.safetensors``
holds the best model by the validation score.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from gensid.config.sections import TrainConfig
from gensid.data.splits import Samples
from gensid.io import JsonlLog, load_tensors, save_tensors
from gensid.train import distributed
from gensid.train.batches import Batch, ItemFeatures
from gensid.train.objectives import (
    DenseObjective,
    JointObjective,
    NextTokenObjective,
    ParallelObjective,
    SASRecObjective,
)
from gensid.train.schedule import warmup_linear

Objective = NextTokenObjective | JointObjective | ParallelObjective | SASRecObjective | DenseObjective


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Flatten an optimizer state dict into tensors (for safetensors) + JSON param groups."""
    state = opt.state_dict()
    tensors = {f"optim.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    return tensors, state["param_groups"]


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, i, key = name.split(".", 2)
            state.setdefault(int(i), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX) rather than emulating it."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast(bf16: bool):
    """Forward-pass context: bfloat16 matmuls on the CPU when ``bf16``, else plain fp32.

    Weights and optimizer state stay fp32. On a CPU with native bf16 (AVX512-BF16 or AMX) a
    training step of the default model runs 1.15-1.35x faster (``benchmarks/speed.py``); without
    it bf16 is emulated and slower, so a warning says so. Backward runs outside this context,
    as torch recommends.
    """
    if not bf16:
        return nullcontext()
    if not native_bf16():
        warnings.warn("train.bf16: this CPU has no native bfloat16; training will be slower than fp32",
                      stacklevel=2)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def length_bucketed_batches(samples: Samples, batch_size: int, rng: np.random.Generator,
                            bucket_batches: int = 50) -> list[np.ndarray]:
    """Shuffled batches of sample rows whose histories have similar lengths.

    Rows are shuffled, cut into chunks of ``bucket_batches`` batches, sorted by history
    length inside a chunk, batched, and the batches shuffled. Batches then carry little
    padding (``Batch.build`` trims it), which cuts encoder work several-fold on short
    histories, while every batch still mixes users at random.
    """
    lengths = (samples.histories >= 0).sum(1)
    order = rng.permutation(len(samples))
    chunk = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), chunk):
        rows = order[start:start + chunk]
        rows = rows[np.argsort(lengths[rows], kind="stable")]
        batches.extend(rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


class Trainer:
    """Trains ``model`` (a gensid model, or the SASRec or dense baseline) on ``train`` with ``objective`` (see
    :mod:`gensid.train.objectives`).

    ``items()`` gives the item features batches are built from, asked at every epoch (a joint
    run's change with its index). ``validate(model) -> metrics`` picks the best epoch; ``observe(model) -> dict`` (optional)
    adds per-epoch analyses (SID drift, code usage, ...) to the log; ``queries`` [N, T] are
    the training samples' query vectors (search). ``before_epoch(epochs_done)`` (optional) runs on
    every rank before each epoch, also the first after a resume: joint runs rebuild the item codes
    there, so every rank trains on targets from the current model, not from its last validation.
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, train: Samples,
                 items: Callable[[], ItemFeatures],
                 run_dir: str | Path, validate: Callable[[nn.Module], dict[str, float]],
                 objective: Objective, observe: Callable[[nn.Module], dict] | None = None,
                 monitor: str = "ndcg@10", progress: bool = True, queries: torch.Tensor | None = None,
                 before_epoch: Callable[[int], None] | None = None):
        self.model, self.cfg, self.train, self.items, self.queries = model, cfg, train, items, queries
        self.run_dir = Path(run_dir)
        self.validate, self.objective, self.observe = validate, objective, observe
        self.before_epoch = before_epoch
        self.monitor, self.progress = monitor, progress
        self.log = JsonlLog(self.run_dir / "log.jsonl")
        self.steps_per_epoch = -(-len(train) // cfg.batch_size)
        self.opt = torch.optim.AdamW(objective.param_groups(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rank, self.world = distributed.rank_and_size()
        self.step_module = distributed.wrap(model, objective)
        self.sched = warmup_linear(self.opt, cfg.warmup_steps, cfg.epochs * self.steps_per_epoch)
        self.epoch, self.best_score, self.best_epoch, self.elapsed = 0, -1.0, -1, 0.0
        self.stale = 0

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.safetensors"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "model.safetensors"

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        opt_tensors, groups = optimizer_tensors(self.opt)
        tensors.update(opt_tensors)
        meta = {"epoch": self.epoch, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "elapsed": self.elapsed, "stale": self.stale, "param_groups": groups,
                "sched": self.sched.state_dict()}
        save_tensors(self.checkpoint_path, tensors, meta)

    def resume(self) -> bool:
        """Load ``checkpoint.safetensors`` if present; a damaged file raises ``RunError``."""
        if not self.checkpoint_path.exists():
            return False
        tensors, meta = load_tensors(self.checkpoint_path)
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        load_optimizer(self.opt, tensors, meta["param_groups"])
        self.sched.load_state_dict(meta["sched"])
        self.epoch, self.best_score, self.best_epoch = meta["epoch"], meta["best_score"], meta["best_epoch"]
        self.elapsed, self.stale = meta["elapsed"], meta["stale"]
        if self.rank == 0:
            self.log.write(event="resume", epoch=self.epoch)
        return True

    def train_epoch(self) -> dict:
        """One pass over the training samples -> mean loss terms and item-encoder gradient norms."""
        self.model.train()
        torch.manual_seed(self.cfg.seed * 100_003 + self.epoch)
        batches = length_bucketed_batches(self.train, self.cfg.batch_size,
                                          np.random.default_rng([self.cfg.seed, self.epoch]), self.cfg.bucket_batches)
        totals: dict[str, float] = {}
        grad_norms: list[float] = []
        count = 0
        # the learnable item side, if any (an RQ-KMeans tokenizer without ItemAdapter has none)
        tokenizer = getattr(self.model, "tokenizer", None)
        item_encoder = tokenizer.encoder if tokenizer is not None else None
        if item_encoder is not None and next(item_encoder.parameters(), None) is None:
            item_encoder = None
        items = self.items()
        bar = tqdm(batches, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}", disable=not self.progress,
                   leave=False)
        total_steps = self.cfg.epochs * self.steps_per_epoch
        for step, rows in enumerate(bar):
            if len(rows) < self.world:  # a last batch too small to give every rank a row
                continue
            rows = np.array_split(rows, self.world)[self.rank]  # this rank's share of the batch
            batch = Batch.build(self.train, rows, items, self.queries)
            with autocast(self.cfg.bf16):
                terms = self.step_module(batch, (self.epoch * self.steps_per_epoch + step) / total_steps)
            self.opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            if item_encoder is not None:
                grads = [p.grad for p in item_encoder.parameters() if p.grad is not None]
                grad_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
                                  if grads else 0.0)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.sched.step()
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.item() * len(rows)
            count += len(rows)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{totals['total'] / count:.4f}")
        out: dict = {name: value / count for name, value in totals.items()}
        if grad_norms:
            out["item_encoder_grad_norm"] = grad_norms
        return out

    def fit(self) -> dict:
        """Train until ``epochs``, ``stop_epoch``, ``max_minutes`` or ``patience`` stops it; keep the best model.
        Distributed: every rank trains, rank 0 validates, logs and saves, and decides when to stop."""
        self.resume()
        while self.epoch < self.cfg.epochs:
            if distributed.broadcast_flag(self.rank == 0 and self._should_stop()):
                break
            if self.before_epoch is not None:
                self.before_epoch(self.epoch)
            start = time.perf_counter()
            terms = self.train_epoch()
            self.elapsed += time.perf_counter() - start
            self.epoch += 1
            if self.rank == 0:
                self._end_epoch(terms)
        if self.world > 1:
            spread = distributed.replica_spread(self.model)
            if self.rank == 0:
                self.log.write(event="replicas", world_size=self.world, max_parameter_spread=spread)
        if self.best_path.exists():
            tensors, _ = load_tensors(self.best_path)
            self.model.load_state_dict(tensors)
        return {"epochs": self.epoch, "best_epoch": self.best_epoch, "train_minutes": self.elapsed / 60}

    def _should_stop(self) -> bool:
        if self.cfg.stop_epoch and self.epoch >= self.cfg.stop_epoch:
            self.log.write(event="stop_epoch_reached", epoch=self.epoch, minutes=self.elapsed / 60)
            return True
        if self.cfg.max_minutes and self.elapsed >= self.cfg.max_minutes * 60:
            self.log.write(event="time_budget_reached", epoch=self.epoch, minutes=self.elapsed / 60)
            return True
        if self.cfg.patience and self.stale >= self.cfg.patience:
            self.log.write(event="early_stop", epoch=self.epoch)
            return True
        return False

    def _end_epoch(self, terms: dict) -> None:
        """Analyses, validation, best model, log line and checkpoint of the epoch just trained."""
        loss = terms.pop("total")
        record = {"event": "epoch", "epoch": self.epoch, "loss": loss, "terms": terms,
                  "train_minutes": self.elapsed / 60}
        if self.observe is not None:
            record["analysis"] = self.observe(self.model)
        if self.epoch % self.cfg.eval_every == 0 or self.epoch == self.cfg.epochs:
            metrics = self.validate(self.model)
            record["valid"] = metrics
            score = metrics[self.monitor]
            if score > self.best_score:
                self.best_score, self.best_epoch, self.stale = score, self.epoch, 0
                save_tensors(self.best_path, self.model.state_dict(), {"epoch": self.epoch})
            else:
                self.stale += 1
        self.log.write(**record)
        if self.progress:
            tqdm.write(f"epoch {self.epoch}: loss {loss:.4f}" +
                       (f"  valid {self.monitor} {record['valid'][self.monitor]:.4f}" if "valid" in record else ""))
        self.save_checkpoint()
