"""Building a run's pieces: data and splits (:func:`load_task`), item text vectors, tokenizer and
semantic IDs (fitted once, saved in the run folder), the untrained model (:func:`prepare`,
:func:`assemble`); a warm start's or learned index's source run (``train.init_from``,
``quantizer.sids_from``); and a finished run loaded from its folder (:func:`load_run`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from gensid.baselines import baseline_kind
from gensid.config.loading import load_config
from gensid.config.sections import ExperimentConfig
from gensid.data import Dataset, LeaveOneOut, load_dataset
from gensid.data.search import load_search_log, product_search, time_split
from gensid.data.splits import next_item_split
from gensid.errors import ConfigError, DataError, RunError
from gensid.index import SIDIndex
from gensid.io import load_tensors, save_tensors, seed_everything, write_json
from gensid.model import GenerativeRecommender
from gensid.model.parallel import ParallelSIDRecommender
from gensid.quantize import (
    RQVAE,
    ItemAdapter,
    SemanticIDs,
    fit_semantic_ids,
)
from gensid.quantize.product import ProductQuantizer, digit_stats
from gensid.report.results import total_train_minutes
from gensid.run import Run, load_fitting_weights, run_config, run_files, with_weights
from gensid.text import embed_split_texts, embed_texts
from gensid.text.encoder import model_path
from gensid.train import ItemFeatures


def catalog_text_vectors(cfg: ExperimentConfig, full: Dataset, dataset: Dataset, progress: bool) -> torch.Tensor:
    """[N, T] text vectors of ``dataset``'s items. The whole catalog of ``full`` is embedded (and
    cached on disk), so a subset run reuses the full run's vectors."""
    vectors = embed_texts(full.catalog.texts, cfg.text.model, cfg.text.batch_size, progress)
    if dataset is not full:
        vectors = vectors[[full.catalog.index_of(item) for item in dataset.catalog.item_ids]]
    return torch.from_numpy(np.ascontiguousarray(vectors))


def item_text_vectors(cfg: ExperimentConfig, full: Dataset, dataset: Dataset, run_dir: Path, progress: bool
                      ) -> torch.Tensor:
    """[N, T] text vectors of ``dataset``'s items (:func:`catalog_text_vectors`), saved in the run."""
    path = run_dir / "index" / "item_text.safetensors"
    if path.exists():
        return load_tensors(path)[0]["vectors"]
    text = catalog_text_vectors(cfg, full, dataset, progress)
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
        trained = None  # a cold-start split's new items have no free vector (parallel.item_dropout)
        if fit_items is not None:
            trained = torch.zeros(len(text), dtype=torch.bool)
            trained[torch.from_numpy(fit_items)] = True
        model = ParallelSIDRecommender(p.digits, p.codebook_size, cfg.model, p, cfg.data.max_history,
                                       text.shape[1] if uses_text else None, num_items=len(dataset.catalog),
                                       trained_items=trained)
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


def load_run(run_dir: str | Path, splits: bool = True) -> Run:
    """A finished (or checkpointed) run, ready to rank items, from any working directory.
    ``splits=False``: without the data split (``run.splits`` None), as the service loads it."""
    run_dir = Path(run_dir)
    if (run_dir / "bundle.json").exists():
        raise RunError(f"{run_dir}: a bundle (gensid export), which holds no data; load it with "
                       "gensid.bundle.load_bundle, or evaluate the run it was exported from")
    kind = baseline_kind(run_dir)
    if kind:
        raise RunError(f"{run_dir}: a {kind} baseline (gensid baseline), not a gensid model; pair it with a run "
                       f"(gensid compare) or mix it into one (gensid hybrid RUN_DIR --scorer {run_dir})")
    _, weights = run_files(run_dir)
    return with_weights(prepare(run_config(run_dir), run_dir, progress=False, splits=splits), weights)
