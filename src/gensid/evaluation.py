"""A trained run's metrics on its splits: validation and test metrics, Most popular's, the
new/seen subsets of a cold-start split, the test analysis, and the ``test_ranks.json`` file that
``gensid compare`` pairs runs by."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from gensid.baselines.popularity import MostPopular
from gensid.data import LeaveOneOut, Samples
from gensid.eval.analysis import (
    hit_rate_by_bucket,
    isotropy,
    norm_vs_popularity,
    popularity_buckets,
)
from gensid.eval.metrics import metrics_from_ranks, new_and_seen, rank_of_targets
from gensid.io import write_text
from gensid.quantize import (
    code_usage,
)
from gensid.quantize.product import digit_stats
from gensid.quantize.sids import collision_rate
from gensid.run import Run


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
    ks = run.cfg.eval.ks
    return {split: metrics_from_ranks(ranks, ks), **subset_metrics(run.splits, samples, ranks, ks, split)}


def subset_metrics(splits: LeaveOneOut, samples: Samples, ranks: np.ndarray, ks: list[int], split: str
                   ) -> dict[str, dict[str, float]]:
    """On a cold-start split: ``{split}_new`` and ``{split}_seen``, the metrics at ``ks`` of the samples
    whose target is a new item and of the others (a subset without samples is left out); else empty."""
    if splits.cold_items is None:
        return {}
    subsets = new_and_seen(ranks, splits.new_targets(samples), ks)
    return {f"{split}_{name}": metrics for name, metrics in subsets.items()}


def cold_start_summary(splits: LeaveOneOut, share: float, ranked: np.ndarray) -> dict:
    """A cold-start split's counts (new items, new and seen test and validation targets) and how often
    the test ranking ``ranked`` [N, depth] holds a new item at all (against new items / catalog size)."""
    new = splits.new_targets(splits.test)
    return {"share": share, "new_items": len(splits.cold_items),
            "test_new_targets": int(new.sum()), "test_seen_targets": int((~new).sum()),
            "valid_new_targets": int(splits.new_targets(splits.valid).sum()),
            "new_share_of_ranked": float(np.isin(ranked[ranked >= 0], splits.cold_items).mean())}


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
    ks = run.cfg.eval.ks
    out = {"test": metrics_from_ranks(ranks, ks), **subset_metrics(run.splits, test, ranks, ks, "test"),
           "test_by_popularity": hit_rate_by_bucket(ranked, test.targets, buckets)}
    if run.splits.cold_items is not None:
        out["cold_start"] = cold_start_summary(run.splits, run.cfg.data.cold_share, ranked)
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


def read_test_ranks(run_dir: str | Path) -> dict | None:
    """What :func:`save_test_ranks` wrote (``ranks`` as an int64 array [N]), or None when the run
    has no ``test_ranks.json``."""
    path = Path(run_dir) / "test_ranks.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    saved["ranks"] = np.asarray(saved["ranks"], dtype=np.int64)
    return saved
