"""A run's in-memory form (:class:`Run`: config, catalog, text vectors, index, model) and its
folder: where its files are (:func:`run_files`), its config as openable from here
(:func:`run_config`), and its trained weights (:func:`with_weights`, :func:`load_fitting_weights`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gensid.config.loading import load_config
from gensid.config.sections import ExperimentConfig
from gensid.data import Dataset, LeaveOneOut, Samples
from gensid.data.splits import pack_samples
from gensid.errors import InputError, RunError
from gensid.eval.evaluate import rank_exact, recommend_items
from gensid.eval.metrics import metrics_from_ranks, rank_of_targets
from gensid.index import SIDIndex
from gensid.io import load_tensors
from gensid.model import GenerativeRecommender
from gensid.model.parallel import ParallelSIDRecommender
from gensid.train import ItemFeatures
from gensid.train.objectives import (
    item_snapshot,
)


@dataclass
class Run:
    """Everything a trained run needs to rank items."""

    cfg: ExperimentConfig
    run_dir: Path
    dataset: Dataset  # loaded for serving (a bundle, or load_run(splits=False)): the catalog, no interactions
    splits: LeaveOneOut | None  # None when loaded for serving: no data split
    text: torch.Tensor  # [N, T] frozen item text vectors
    index: SIDIndex | None  # the trie of valid SIDs (None for parallel SIDs: every item is scored)
    items: ItemFeatures
    model: GenerativeRecommender | ParallelSIDRecommender
    queries: dict[str, torch.Tensor] | None = None  # search: query vectors [N_split, T] per split
    # parallel runs: (items, weight versions, item table) of the last item_table() call
    kept_table: tuple[ItemFeatures, tuple[int, ...], torch.Tensor] | None = dataclasses.field(default=None, repr=False)

    @property
    def joint(self) -> bool:
        return self.cfg.method.joint

    @property
    def parallel(self) -> bool:
        return self.cfg.method.family == "parallel"

    def refresh_index(self) -> None:
        """Joint runs: new item features and SID index from the model's deterministic assignment
        (a trainer reads ``run.items`` at every epoch)."""
        if not self.joint:
            return
        self.items = item_snapshot(self.model, self.text, keep_text=self.cfg.model.history_input.endswith("+text"))
        self.index = SIDIndex(self.items.codes.numpy(), self.model.code_sizes)

    @property
    def disambiguation(self) -> bool:
        """Whether SIDs end with a disambiguation code (two-stage always; joint when configured)."""
        return self.model.num_levels > len(self.cfg.quantizer.codebook_sizes)

    def sid(self, item: int) -> list[int]:
        """An item's semantic ID as the index holds it (parallel runs: its digits)."""
        return (self.items.codes[item] if self.index is None else self.index.codes[item]).tolist()

    def item_table(self) -> torch.Tensor:
        """Parallel runs: the catalog's :meth:`~ParallelSIDRecommender.item_table` [N, .], kept while the
        weights stay the same: a served run builds it once, then only the rows of items added since
        (not per request); a training run builds it again after each optimizer step."""
        # every in-place update of a parameter (an optimizer step, loading weights) moves its version
        versions = tuple(t._version for t in (*self.model.parameters(), *self.model.buffers()))
        codes, start, kept = self.items.codes, 0, None
        if self.kept_table is not None and self.kept_table[1] == versions:
            items, _, kept = self.kept_table
            if items is self.items:
                return kept
            start = len(items.codes)
            if not (len(codes) >= start and torch.equal(codes[:start], items.codes)):  # not only appended to
                start, kept = 0, None
        with torch.no_grad():
            text = self.items.text[start:] if self.items.text is not None else None
            rows = self.model.item_table(codes[start:], torch.arange(start, len(codes)), text)
        table = rows if kept is None else torch.cat([kept, rows])
        self.kept_table = (self.items, versions, table)
        return table

    def split_queries(self, split: str) -> torch.Tensor | None:
        return self.queries[split] if self.queries is not None else None

    def quantizer_codes(self) -> np.ndarray:
        """[N, levels] the quantizer's codes (without the disambiguation code; parallel: [N, digits])."""
        if self.parallel:
            return self.items.codes.numpy()
        return self.index.codes[:, : len(self.cfg.quantizer.codebook_sizes)]

    def history_samples(self, histories: list[list[int]]) -> Samples:
        """Samples of internal item-id histories (oldest first), as the splits pack them: the
        newest ``data.max_history`` of each, left-padded with -1; targets and users are 0."""
        rows = [(0, np.asarray(history, dtype=np.int64), 0) for history in histories]
        return pack_samples(rows, self.cfg.data.max_history)

    def rank(self, samples: Samples, queries: torch.Tensor | None = None, beam_size: int | None = None,
             batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """[N, beam_size] top item ids per sample, best first (-1 pads), by the run's eval settings
        (``eval.beam_size``, ``eval.batch_size``, ``eval.verify_weight``) unless given (parallel
        runs score every item exactly and return the top ``beam_size``);
        ``queries`` [N, T]: the search runs' query vectors."""
        e = self.cfg.eval
        if self.parallel:
            return rank_exact(self.model, samples, self.items, beam_size or e.beam_size, batch_size or e.batch_size,
                              progress, self.item_table())
        return recommend_items(self.model, self.index, samples, self.items, beam_size or e.beam_size,
                               batch_size or e.batch_size, progress, queries, e.verify_weight)

    def target_ranks(self, samples: Samples, queries: torch.Tensor | None = None, progress: bool = False
                     ) -> np.ndarray:
        """[N] each sample's target position in its ranking (0-based, -1 = not in the beam)."""
        return rank_of_targets(self.rank(samples, queries, progress=progress), samples.targets)

    def evaluate(self, samples: Samples, queries: torch.Tensor | None = None, progress: bool = False
                 ) -> dict[str, float]:
        """Metrics at ``eval.ks`` of ranking each sample's target (full catalog)."""
        return metrics_from_ranks(self.target_ranks(samples, queries, progress), self.cfg.eval.ks)

    @property
    def exclude_seen_default(self) -> bool:
        """Whether answers to a user (``gensid recommend``, the service) drop the items of the given
        history when the request does not say: the run's ``serve.exclude_seen``. Evaluation never
        drops them (the published protocol)."""
        return self.cfg.serve.exclude_seen

    def ranking_depth(self, k: int, history: list[int], exclude_seen: bool) -> int:
        """How many items to rank for a top-``k`` answer: the beam size (at least ``k``), and when the
        history's items are dropped from the answer, ``k`` more than the distinct history items, so
        that k remain whenever the catalog has them."""
        depth = max(k, self.cfg.eval.beam_size)
        return max(depth, k + len(set(history))) if exclude_seen else depth

    def recommend(self, history: list[int], k: int = 10, exclude_seen: bool = False) -> list[int]:
        """Top-k item ids for one history of internal item ids (oldest first); ``exclude_seen``:
        none of the history's items (still k items when the catalog has k others)."""
        if not history:
            raise InputError("history is empty: give at least one item id")
        unknown = [i for i in history if not 0 <= i < len(self.dataset.catalog)]
        if unknown:
            raise InputError(f"unknown internal item id(s) {unknown[:5]}")
        ranked = self.rank(self.history_samples([history]), beam_size=self.ranking_depth(k, history, exclude_seen))
        return top_k(ranked[0], k, history if exclude_seen else ())


def top_k(ranked: np.ndarray | list[int], k: int, exclude: list[int] | tuple = ()) -> list[int]:
    """The first ``k`` item ids of one ranked row (-1 pads dropped), without the ids in ``exclude``."""
    drop = set(exclude)
    return [int(i) for i in ranked if i >= 0 and int(i) not in drop][:k]


def locate_data(source: str, run_dir: Path) -> str:
    """A run's ``data.source`` as it can be opened from here. A relative path was given from
    the directory training ran in (e.g. ``../shared/data/x`` from the repository root), so
    if it is not found from the working directory it is looked up from each folder above the
    run; ``RunError`` names the places tried."""
    path = Path(source)
    if source == "movielens-100k" or path.is_absolute() or path.exists():
        return source
    for base in run_dir.resolve().parents:
        if (base / path).exists():
            return str(base / path)
    raise RunError(f"{run_dir}: its data.source {source!r} is found neither from the working directory "
                   f"({Path.cwd()}) nor from any folder above the run; run from the directory it was trained in")


def run_config(run_dir: Path) -> ExperimentConfig:
    """A run's ``config.yaml``, its ``data.source`` made openable from here (:func:`locate_data`)."""
    cfg = load_config(run_dir / "config.yaml")
    cfg.data.source = locate_data(cfg.data.source, run_dir)
    return cfg


def run_files(run_dir: str | Path) -> tuple[Path, Path]:
    """``(config.yaml, model.safetensors)`` of a trained run; ``RunError`` if either is missing."""
    run_dir = Path(run_dir)
    config, weights = run_dir / "config.yaml", run_dir / "model.safetensors"
    if not config.exists():
        raise RunError(f"{run_dir}: not a run directory (no config.yaml)")
    if not weights.exists():
        raise RunError(f"{weights}: the run has no trained model yet")
    return config, weights


def with_weights(run: Run, weights: Path) -> Run:
    """``run`` with the trained weights of ``weights``, in eval mode, its index refreshed (joint runs)."""
    load_fitting_weights(run.model, weights, run.cfg)
    run.model.eval()
    run.refresh_index()
    return run


# config fields that set parameter shapes, in the order a mismatch is blamed on them
SHAPE_FIELDS = ("model.d_model", "model.d_ff", "data.max_history", "quantizer.latent_dim", "quantizer.codebook_sizes",
                "parallel.digits", "parallel.codebook_size")
LAYER_FIELDS = {"encoder.layers.": "model.encoder_layers", "decoder.layers.": "model.decoder_layers",
                "blocks.": "model.encoder_layers"}


def load_fitting_weights(module: torch.nn.Module, weights: Path, cfg: ExperimentConfig) -> None:
    """Load ``weights`` (a run's safetensors file) into ``module``, built from the run's ``config.yaml``.
    A config edited after training (e.g. ``model.d_model``) gives weights of other shapes: ``RunError``
    in one line naming the file, the config field that likely changed and the parameters that disagree."""
    state = load_tensors(weights)[0]
    ours = module.state_dict()
    shapes = {k: (list(state[k].shape), list(v.shape)) for k, v in ours.items() if k in state and state[k].shape != v.shape}
    missing, unexpected = [k for k in ours if k not in state], [k for k in state if k not in ours]
    if not (shapes or missing or unexpected):
        module.load_state_dict(state)
        return
    values = cfg.to_dict()
    blame: dict[str, int] = {}
    for theirs, mine in shapes.values():
        changed = {m for t, m in zip(theirs, mine, strict=False) if t != m} if len(theirs) == len(mine) else set(mine)
        for field in SHAPE_FIELDS:
            section, name = field.split(".")
            value = values[section][name]
            if changed & set(value if isinstance(value, list) else [value]):
                blame[field] = blame.get(field, 0) + 1
    hints = [max(blame, key=lambda f: (blame[f], -SHAPE_FIELDS.index(f)))] if blame else []
    hints += sorted({field for prefix, field in LAYER_FIELDS.items() for k in missing + unexpected
                     if k.startswith(prefix)} - set(hints))
    parts = [f"{k}: weights {theirs} vs model {mine}" for k, (theirs, mine) in list(shapes.items())[:2]]
    parts += [f"{label} {keys[0]}" + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")
              for label, keys in (("model has no weights for", missing), ("weights have no place in the model for",
                                                                             unexpected)) if keys]
    more = f" ({len(shapes) - 2} more shapes differ)" if len(shapes) > 2 else ""
    config = weights.parent / "config.yaml"
    raise RunError(f"{weights} does not fit {config}: " + "".join(f"{h}? " for h in hints) + "; ".join(parts) + more
                   + f" (was {config.name} edited after training? restore its values or train a new run)")
