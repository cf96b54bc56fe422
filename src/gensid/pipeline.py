"""A run end to end (two-stage or joint), and loading a finished run.

``train_run``: data -> text vectors -> tokenizer and semantic IDs (fitted once, saved)
-> SID index -> generative recommender (trained, resumable; with a joint ``method``
the tokenizer learns inside it and the index is rebuilt from its final
deterministic assignment) -> valid/test metrics and analyses.
A run directory holds ``config.yaml``, ``quantizer.safetensors``, ``index/``
(``sids.safetensors``, ``item_text.safetensors``), ``model.safetensors``,
``checkpoint.safetensors``, ``metrics.json``, ``test_ranks.json``, ``log.jsonl`` and, for a warm start
(``train.init_from``) or a two-stage run on a learned index (``quantizer.sids_from``),
``init_from.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gensid.baselines.popularity import MostPopular
from gensid.config import ExperimentConfig, load_config
from gensid.data import Dataset, LeaveOneOut, Samples, load_dataset
from gensid.data.search import load_search_log, product_search, time_split
from gensid.data.splits import next_item_split, pack_samples, sequence_windows
from gensid.errors import ConfigError, DataError, InputError, RunError
from gensid.eval.analysis import (
    SIDMonitor,
    hit_rate_by_bucket,
    isotropy,
    norm_vs_popularity,
    popularity_buckets,
)
from gensid.eval.evaluate import rank_exact, recommend_items
from gensid.eval.metrics import metrics_from_ranks, new_and_seen, rank_of_targets
from gensid.index import SIDIndex
from gensid.io import JsonlLog, load_tensors, save_tensors, seed_everything, write_json, write_text
from gensid.model import GenerativeRecommender
from gensid.model.parallel import ParallelSIDRecommender
from gensid.quantize import (
    RQVAE,
    ItemAdapter,
    SemanticIDs,
    code_usage,
    fit_semantic_ids,
)
from gensid.quantize.product import ProductQuantizer, digit_stats
from gensid.quantize.sids import collision_rate
from gensid.report.results import git_commit, total_train_minutes
from gensid.text import embed_split_texts, embed_texts
from gensid.text.encoder import model_path
from gensid.train import ItemFeatures, Trainer, distributed
from gensid.train.objectives import (
    JointObjective,
    NextTokenObjective,
    ParallelObjective,
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
        versions = tuple(p._version for p in self.model.parameters())
        codes, start, kept = self.items.codes, 0, None
        if self.kept_table is not None and self.kept_table[1] == versions:
            items, _, kept = self.kept_table
            if items is self.items:
                return kept
            start = len(items.codes)
            if not (len(codes) >= start and torch.equal(codes[:start], items.codes)):  # not only appended to
                start, kept = 0, None
        with torch.no_grad():
            rows = self.model.item_table(codes[start:], torch.arange(start, len(codes)))
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


def item_text_vectors(cfg: ExperimentConfig, full: Dataset, dataset: Dataset, run_dir: Path, progress: bool
                      ) -> torch.Tensor:
    """[N, T] text vectors of ``dataset``'s items, saved in the run. The whole catalog of ``full``
    is embedded (and cached on disk), so a subset run reuses the full run's vectors."""
    path = run_dir / "index" / "item_text.safetensors"
    if path.exists():
        return load_tensors(path)[0]["vectors"]
    vectors = embed_texts(full.catalog.texts, cfg.text.model, cfg.text.batch_size, progress)
    if dataset is not full:
        vectors = vectors[[full.catalog.index_of(item) for item in dataset.catalog.item_ids]]
    text = torch.from_numpy(np.ascontiguousarray(vectors))
    save_tensors(path, {"vectors": text})
    return text


def tokenizer_and_sids(cfg: ExperimentConfig, text: torch.Tensor, run_dir: Path, progress: bool,
                       fit_items: np.ndarray | None = None) -> tuple[RQVAE, SemanticIDs]:
    """The fitted tokenizer (``quantizer.safetensors``) and the SIDs it gives; fitted once per run
    (on the ``fit_items`` only when given: a cold-start split's trained items)."""
    path, sids_path = run_dir / "quantizer.safetensors", run_dir / "index" / "sids.safetensors"
    decay = cfg.method.noise_decay
    if path.exists() and sids_path.exists():
        tokenizer = RQVAE(text.shape[1], cfg.quantizer, decay)
        load_fitting_weights(tokenizer, path, cfg)
        tensors, meta = load_tensors(sids_path)
        return tokenizer.eval(), SemanticIDs(tensors["codes"].numpy(), meta["sizes"])
    if cfg.quantizer.sids_from:
        tokenizer, sids, stats = learned_semantic_ids(cfg, text.shape[1], run_dir)
    else:
        tokenizer, sids, stats = fit_semantic_ids(text.numpy(), cfg.quantizer, cfg.train.seed, progress, decay,
                                                  fit_items)
    save_tensors(path, tokenizer.state_dict())
    write_json(run_dir / "index" / "sid_stats.json", stats)
    save_tensors(sids_path, {"codes": torch.from_numpy(sids.codes)}, {"sizes": sids.sizes})
    return tokenizer, sids


def product_codes(cfg: ExperimentConfig, text: torch.Tensor, run_dir: Path, fit_items: np.ndarray | None = None
                  ) -> np.ndarray:
    """Parallel runs: the items' digits [N, m] from the product quantizer (``index/pq.safetensors``),
    fitted once per run on the text vectors (of the ``fit_items`` only when given: a cold-start
    split's trained items; the others are encoded by the frozen quantizer)."""
    path, sids_path = run_dir / "index" / "pq.safetensors", run_dir / "index" / "sids.safetensors"
    if path.exists() and sids_path.exists():
        return load_tensors(sids_path)[0]["codes"].numpy()
    p = cfg.parallel
    fitted = text.numpy() if fit_items is None else text.numpy()[fit_items]
    quantizer = ProductQuantizer.fit(fitted, p.digits, p.codebook_size, p.opq, p.whiten)
    codes = quantizer.encode(text.numpy())
    quantizer.save(path)
    write_json(run_dir / "index" / "sid_stats.json", digit_stats(codes, p.codebook_size))
    save_tensors(sids_path, {"codes": torch.from_numpy(codes)}, {"sizes": [p.codebook_size] * p.digits})
    return codes


def prepare(cfg: ExperimentConfig, run_dir: Path, progress: bool = True, splits: bool = True) -> Run:
    """Load data and text vectors, fit (or reload) the tokenizer, build an untrained model.

    Two-stage: the SIDs are fixed now (plus a disambiguation code). A joint method: the tokenizer
    moves into the model and learns with it; the index is rebuilt from its deterministic
    assignment whenever the model is evaluated (:meth:`Run.refresh_index`).
    ``splits=False``: the catalog only, no data split (what serving needs; ``run.splits`` is None).
    """
    seed_everything(cfg.train.seed)
    if cfg.train.init_from:
        copy_item_side(cfg, run_dir)
    full, dataset, samples, query_texts = load_task(cfg, progress, splits)
    queries = embed_split_texts(query_texts, cfg.text.model, cfg.text.batch_size) if query_texts else None
    text = item_text_vectors(cfg, full, dataset, run_dir, progress)
    return assemble(cfg, run_dir, dataset, samples, text, queries, progress)


def assemble(cfg: ExperimentConfig, run_dir: Path, dataset: Dataset, splits: LeaveOneOut | None,
             text: torch.Tensor, queries: dict[str, torch.Tensor] | None = None, progress: bool = False) -> Run:
    """The untrained run over the item text vectors ``text`` [N, T]: the part of :func:`prepare`
    after the data. The tokenizer and SIDs come from ``run_dir`` (fitted and saved there when
    absent). A bundle (:mod:`gensid.bundle`) builds its run with this, from its own files."""
    if len(text) != len(dataset.catalog):
        raise RunError(f"{run_dir / 'index'}: vectors of {len(text)} items, but the catalog has "
                       f"{len(dataset.catalog)}; use a new run directory")
    uses_text = cfg.model.history_input.endswith("+text")
    # a cold-start split: the tokenizer is fitted on the trained items only (when it is fitted: a new run)
    fit_items = splits.trained_items(len(text)) if splits is not None and splits.cold_items is not None else None
    method = cfg.method
    if method.family == "parallel":
        codes = product_codes(cfg, text, run_dir, fit_items)
        p = cfg.parallel
        model = ParallelSIDRecommender(p.digits, p.codebook_size, cfg.model, p, cfg.data.max_history,
                                       text.shape[1] if uses_text else None, num_items=len(dataset.catalog))
        items = ItemFeatures(torch.from_numpy(codes), text if uses_text else None)
        return Run(cfg, run_dir, dataset, splits, text, None, items, model, queries)
    tokenizer, sids = tokenizer_and_sids(cfg, text, run_dir, progress, fit_items)
    text_dim = text.shape[1] if uses_text else None
    # search runs: the queries are embedded by the items' text model, so their vectors are [., T]
    query_dim = text.shape[1] if cfg.data.task == "search" else None
    if method.joint:
        if cfg.quantizer.item_adapter:  # part of the joint model, not of the fitted tokenizer's file
            tokenizer.encoder = ItemAdapter(text.shape[1])
        # the disambiguation position's vocabulary: the largest collision group of the initial SIDs
        sizes = sids.sizes if cfg.quantizer.disambiguation else cfg.quantizer.codebook_sizes
        model = GenerativeRecommender(sizes, cfg.model, cfg.data.max_history, text_dim, tokenizer, query_dim,
                                      method.decoder_input, method.tie_heads, method.logits)
        run = Run(cfg, run_dir, dataset, splits, text, None, None, model, queries)
        run.refresh_index()
        return run
    index = SIDIndex(sids.codes, sids.sizes)
    items = ItemFeatures(torch.from_numpy(sids.codes), text if uses_text else None)
    model = GenerativeRecommender(sids.sizes, cfg.model, cfg.data.max_history, text_dim, query_dim=query_dim)
    return Run(cfg, run_dir, dataset, splits, text, index, items, model, queries)


def learned_semantic_ids(cfg: ExperimentConfig, text_dim: int, run_dir: Path) -> tuple[RQVAE, SemanticIDs, dict]:
    """``quantizer.sids_from``: the tokenizer of a finished joint run as it ended (the index it
    learned) and its deterministic SIDs, with a fresh disambiguation code; ``init_from.json``
    records the source and its training minutes, which count toward this run's."""
    source, metrics = learned_index_source(cfg)
    learned = load_run(source)
    seed_everything(cfg.train.seed)  # loading the source seeded torch with its seed, not this run's
    tokenizer = RQVAE(text_dim, cfg.quantizer)
    tokenizer.load_state_dict(learned.model.tokenizer.state_dict())
    sids = SemanticIDs.from_codes(learned.quantizer_codes(), cfg.quantizer.codebook_sizes)
    write_json(run_dir / "init_from.json", {"sids_from": str(source), "init_train_minutes": total_train_minutes(metrics)})
    return tokenizer.eval(), sids, {**sids.stats(), "sids_from": str(source)}


def learned_index_source(cfg: ExperimentConfig) -> tuple[Path, dict]:
    """``quantizer.sids_from``'s run and its metrics, after checking that it is a finished joint run
    over the same items, without an item adapter."""
    source, metrics = finished_source(cfg, cfg.quantizer.sids_from, "quantizer.sids_from")
    theirs = load_config(source / "config.yaml")
    if not theirs.method.joint:
        raise ConfigError(f"quantizer.sids_from {source}: a two-stage run, whose SIDs were fitted on text; "
                          "use train.init_from to continue it")
    if theirs.quantizer.item_adapter:
        raise ConfigError(f"quantizer.sids_from {source}: its items pass through an item adapter, which a "
                          "two-stage tokenizer does not have")
    return source, metrics


def check_inputs(cfg: ExperimentConfig, run_dir: Path) -> None:
    """What a (valid) config names outside itself, checked before a run writes anything: the data
    source, the text model and, for a run not started yet, the source runs of ``train.init_from``
    and ``quantizer.sids_from``. Reads a few small files; raises the error the run would hit later."""
    if cfg.data.source != "movielens-100k" and not Path(cfg.data.source).exists():
        raise DataError(f"data.source {cfg.data.source}: no such file or folder (from {Path.cwd()})")
    model_path(cfg.text.model)
    fresh = not (run_dir / "quantizer.safetensors").exists()
    if fresh and cfg.train.init_from:
        finished_source(cfg, cfg.train.init_from, "train.init_from")
    if fresh and cfg.quantizer.sids_from:
        learned_index_source(cfg)


# what decides a run's items and their tokenizer: a warm start must agree on all of them
ITEM_SIDE = {"data": ("source", "format", "task", "query_field", "text_fields", "max_users", "split", "cold_share"),
             "text": ("model",),
             "quantizer": ("method", "codebook_sizes", "geometry", "latent_dim", "hidden_dims", "epochs", "lr",
                           "beta", "batch_size")}
ITEM_SIDE_FILES = ("quantizer.safetensors", "index/sids.safetensors", "index/sid_stats.json",
                   "index/item_text.safetensors")


def finished_source(cfg: ExperimentConfig, folder: str, option: str) -> tuple[Path, dict]:
    """The run ``folder`` that ``option`` (``train.init_from``, ``quantizer.sids_from``) names:
    (run folder, its metrics) after checking that it is a finished run over the same items and
    tokenizer; ``ConfigError`` names what differs."""
    source = Path(folder)
    config, _ = run_files(source)
    if not (source / "metrics.json").exists():
        raise RunError(f"{option} {source}: the run has not finished (no metrics.json)")
    theirs, ours = load_config(config).to_dict(), cfg.to_dict()
    differ = [f"{section}.{name} ({theirs[section][name]!r} there, {ours[section][name]!r} here)"
              for section, names in ITEM_SIDE.items() for name in names
              if theirs[section][name] != ours[section][name]]
    if differ:
        raise ConfigError(f"{option} {source}: another item side; differs in {', '.join(differ)}")
    return source, json.loads((source / "metrics.json").read_text())


def copy_item_side(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Start a run on ``train.init_from``'s item text vectors, tokenizer and SIDs, copied once
    (with ``init_from.json``: the source and its training minutes), so the new run never needs
    the source again after its first step: its codes are exactly the source's."""
    if (run_dir / "quantizer.safetensors").exists():
        return
    source, metrics = finished_source(cfg, cfg.train.init_from, "train.init_from")
    for name in ITEM_SIDE_FILES:
        if (source / name).exists():
            (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, run_dir / name)
    # the budget of a warm start includes the source's training (and the source's own warm start)
    write_json(run_dir / "init_from.json",
               {"init_from": str(source), "init_train_minutes": total_train_minutes(metrics)})


def load_init_weights(model: GenerativeRecommender, source: Path) -> None:
    """The source run's trained weights into ``model``. A two-stage source has no item side in
    the model (a joint model's tokenizer comes from the copied quantizer) and no projection of
    codebook vectors into the decoder: that projection starts at zero, so the warm-started
    model first computes exactly what the source did."""
    _, weights = run_files(source)
    state = load_tensors(weights)[0]
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: another architecture
        raise ConfigError(f"train.init_from {source}: weights do not fit this model ({exc})") from None
    joint_only = ("tokenizer.", "latent_proj.", "context_proj.")
    if unexpected or any(not key.startswith(joint_only) for key in missing):
        raise ConfigError(f"train.init_from {source}: weights do not fit this model; missing "
                          f"{[k for k in missing if not k.startswith(joint_only)][:5]}, unexpected {unexpected[:5]}")
    if "latent_proj.weight" in missing:
        with torch.no_grad():
            model.latent_proj.weight.zero_()
            model.latent_proj.bias.zero_()


def load_task(cfg: ExperimentConfig, progress: bool = True, splits: bool = True
              ) -> tuple[Dataset, Dataset, LeaveOneOut | None, dict[str, list[str]] | None]:
    """(full dataset, dataset used, splits, query texts per split or None).

    ``data.task: rec``: next-item samples, leave-one-out or cold start (``data.split``). ``search``: a search log
    (``data.format: search_log``, split by time) or, for a purchase data set, the Amazon
    product-search construction. ``splits=False``: the two datasets only (splits and query
    texts None).
    """
    if cfg.data.format == "search_log":  # with data.task search (checked at load)
        log = load_search_log(cfg.data.source, cfg.data.text_fields)
        full = dataset = log.dataset
        if not splits:
            return full, dataset, None, None
        search = time_split(log, cfg.data.max_history)
    else:
        full = load_dataset(cfg.data.source, cfg.data.format, cfg.data.text_fields)
        dataset = full.head(cfg.data.max_users)
        if not splits:
            return full, dataset, None, None
        if cfg.data.task == "rec":
            d = cfg.data
            split = next_item_split(dataset.interactions, len(dataset.catalog), d.max_history, d.split, d.cold_share)
            return full, dataset, split, None
        search = product_search(dataset, cfg.data.max_history, cfg.data.query_field)
    parts = {"train": search.train, "valid": search.valid, "test": search.test}
    splits = LeaveOneOut(*(part.as_samples() for part in parts.values()))
    return full, dataset, splits, {name: part.queries for name, part in parts.items()}


def evaluate_split(run: Run, split: str, max_users: int = 0, progress: bool = False) -> dict[str, float]:
    run.refresh_index()
    samples = getattr(run.splits, split).head(max_users)
    queries = run.split_queries(split)
    queries = queries[: len(samples)] if queries is not None else None
    return run.evaluate(samples, queries, progress)


def popularity_metrics(run: Run, split: str) -> dict[str, dict[str, float]]:
    """Most popular's metrics on ``split``: ``{split: ...}``, and on a cold-start split also
    ``{split}_new`` and ``{split}_seen`` (:func:`gensid.eval.metrics.new_and_seen`)."""
    model = MostPopular.fit(run.splits.train, len(run.dataset.catalog))
    samples = getattr(run.splits, split)
    ranks = rank_of_targets(model.rank(len(samples), max(run.cfg.eval.ks)), samples.targets)
    return {split: metrics_from_ranks(ranks, run.cfg.eval.ks), **subset_metrics(run, samples, ranks, split)}


def subset_metrics(run: Run, samples: Samples, ranks: np.ndarray, split: str) -> dict[str, dict[str, float]]:
    """On a cold-start split: ``{split}_new`` and ``{split}_seen``, the metrics of the samples whose
    target is a new item and of the others (a subset without samples is left out); else empty."""
    if run.splits.cold_items is None:
        return {}
    subsets = new_and_seen(ranks, run.splits.new_targets(samples), run.cfg.eval.ks)
    return {f"{split}_{name}": metrics for name, metrics in subsets.items()}


def training_popularity(splits: LeaveOneOut, num_items: int) -> np.ndarray:
    """[num_items] how often each item is a training target: the popularity that the test
    analysis and ``compare --by-popularity`` cut their buckets on."""
    return np.bincount(splits.train.targets, minlength=num_items)


def test_analysis(run: Run, progress: bool = False) -> tuple[dict, np.ndarray]:
    """Test metrics, hit@10 by item-popularity bucket (head -> tail), SID statistics and, for
    joint runs, the hubness check (item-vector norm against popularity) and the isotropy of the
    item and quantized vectors; and the test ranks [N]
    (each user's target position, -1 = not in the beam)."""
    run.refresh_index()
    test = run.splits.test
    ranked = run.rank(test, run.split_queries("test"), progress=progress)
    ranks = rank_of_targets(ranked, test.targets)
    popularity = training_popularity(run.splits, len(run.dataset.catalog))
    buckets = popularity_buckets(popularity)
    codes = run.quantizer_codes()
    out = {"test": metrics_from_ranks(ranks, run.cfg.eval.ks), **subset_metrics(run, test, ranks, "test"),
           "test_by_popularity": hit_rate_by_bucket(ranked, test.targets, buckets)}
    if run.splits.cold_items is not None:
        new = run.splits.new_targets(test)
        out["cold_start"] = {"share": run.cfg.data.cold_share, "new_items": len(run.splits.cold_items),
                             "test_new_targets": int(new.sum()), "test_seen_targets": int((~new).sum()),
                             "valid_new_targets": int(run.splits.new_targets(run.splits.valid).sum()),
                             # how often the model ranks a new item at all: against new_items / catalog size
                             "new_share_of_ranked": float(np.isin(ranked[ranked >= 0], run.splits.cold_items).mean())}
    if run.parallel:
        out["sid"] = digit_stats(codes, run.cfg.parallel.codebook_size)
    else:
        out["sid"] = {"sizes": run.index.sizes, "collision_rate": collision_rate(codes),
                      "max_leaf_size": run.index.max_leaf_size,
                      "code_usage": code_usage(codes, run.index.sizes[:codes.shape[1]])}
    if run.joint:
        out["hubness"] = norm_vs_popularity(run.items.item_vectors.numpy(), popularity, buckets)
        out["isotropy"] = {"item_vectors": isotropy(run.items.item_vectors.numpy()),
                           "quantized": isotropy(run.items.quantized.numpy())}
    return out, ranks


def split_digest(samples: Samples, new_targets: np.ndarray | None = None) -> str:
    """Fingerprint of a split (its users and targets, in order, and on a cold-start split which targets
    are new items): two runs compare per user only when equal."""
    rows = [samples.users, samples.targets] + ([new_targets] if new_targets is not None else [])
    return hashlib.sha256(np.ascontiguousarray(np.stack(rows), dtype=np.int64)).hexdigest()


def save_test_ranks(run_dir: str | Path, test: Samples, ranks: np.ndarray, depth: int,
                    new_targets: np.ndarray | None = None) -> None:
    """Write ``test_ranks.json``: each test user's target rank [N] (-1 = not in the ranked list),
    the split's digest and ``depth``, the length of the ranked lists (a metric @K needs K <= depth);
    on a cold-start split (``new_targets`` [N] bool, :meth:`LeaveOneOut.new_targets`) also ``new_targets``, the rows whose target
    is a new item. Baselines outside the pipeline (SASRec, BM25, dense) write the same file, so
    ``gensid compare`` pairs any two systems ranked on the same test users (``--subset new|seen``)."""
    saved = {"test_users": split_digest(test, new_targets), "depth": depth, "ranks": ranks.tolist()}
    if new_targets is not None:
        saved["new_targets"] = np.flatnonzero(new_targets).tolist()
    # one line, not write_json's one number per line: the files are committed with the runs
    write_text(Path(run_dir) / "test_ranks.json", json.dumps(saved, separators=(",", ":")) + "\n")


def validation_subset(samples: Samples, max_users: int, seed: int = 0) -> np.ndarray:
    """Rows of a fixed random subset of ``max_users`` samples (all when 0): unbiased, unlike the first N."""
    if not max_users or max_users >= len(samples):
        return np.arange(len(samples))
    return np.sort(np.random.default_rng(seed).choice(len(samples), max_users, replace=False))


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
        cold = run.splits.cold_items
        log.write(event="prepared", users=len(run.dataset.interactions), items=len(run.dataset.catalog),
                  train_samples=len(run.splits.train), new_items=len(cold) if cold is not None else 0, sid_sizes=run.index.sizes if run.index is not None
                  else [cfg.parallel.codebook_size] * cfg.parallel.digits,
                  world_size=distributed.rank_and_size()[1])
    started = {}
    if (run_dir / "init_from.json").exists():  # a warm start, or a run on a learned index
        started = json.loads((run_dir / "init_from.json").read_text())
    if cfg.train.init_from and not (run_dir / "checkpoint.safetensors").exists():  # resumed: its own weights
        load_init_weights(run.model, Path(started["init_from"]))
        run.refresh_index()
    rows = validation_subset(run.splits.valid, cfg.eval.max_users)
    valid = run.splits.valid
    valid_subset = Samples(valid.histories[rows], valid.targets[rows], valid.users[rows])
    valid_queries = run.split_queries("valid")[rows] if run.queries is not None else None

    def validate(_: GenerativeRecommender) -> dict[str, float]:
        run.refresh_index()
        return run.evaluate(valid_subset, valid_queries)

    train = run.splits.train
    if run.joint:
        objective = JointObjective(cfg, run.text)
        observe = SIDMonitor(run.text, run.quantizer_codes(), run_dir / "index" / "codes_last_epoch.safetensors",
                             lambda: objective.assignment)
    elif run.parallel:  # every history position is a prediction: windows, not one sample per prefix
        trained = torch.from_numpy(run.splits.trained_items(len(run.dataset.catalog)))
        objective, observe = ParallelObjective(cfg, run.items.codes, trained), None
        train = sequence_windows(run.dataset.interactions, cfg.data.max_history, run.splits.cold_items)
    else:
        objective, observe = NextTokenObjective(cfg), None

    def before_epoch(epochs_done: int) -> None:
        freeze = cfg.train.freeze_index_epoch
        if freeze and epochs_done >= freeze:
            # a run resumed inside the freeze epoch has logged it already
            if main and epochs_done == freeze and not any(e.get("event") == "index_frozen" for e in log.read()):
                log.write(event="index_frozen", epoch=epochs_done)
            objective.freeze_item_side(run.model)
        run.refresh_index()

    trainer = Trainer(run.model, cfg.train, train, lambda: run.items, run_dir, validate, objective, observe,
                      progress=progress, queries=run.split_queries("train"), before_epoch=before_epoch)
    summary = trainer.fit()
    if not main:
        return summary
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


def load_run(run_dir: str | Path, splits: bool = True) -> Run:
    """A finished (or checkpointed) run, ready to rank items, from any working directory.
    ``splits=False``: without the data split (``run.splits`` None), as the service loads it."""
    run_dir = Path(run_dir)
    if (run_dir / "bundle.json").exists():
        raise RunError(f"{run_dir}: a bundle (gensid export), which holds no data; load it with "
                       "gensid.bundle.load_bundle, or evaluate the run it was exported from")
    _, weights = run_files(run_dir)
    return with_weights(prepare(run_config(run_dir), run_dir, progress=False, splits=splits), weights)


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
