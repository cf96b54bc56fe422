"""What ``gensid train`` prints beside a finished run: a small SASRec trained on the run's own
split (``--sasrec-minutes``), and test metrics with the user's seen items excluded.

Evaluation keeps the published protocol: the items a user has already seen stay rankable. A run
that answers without them (``serve.exclude_seen``) is also shown as its users see it: each test
ranking without every item the user had before the held-out one (RecBole's full-sort protocol),
the next items moving up. Those metrics are labelled as such and never replace the protocol's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gensid.baselines.popularity import MostPopular
from gensid.baselines.sasrec import SASRec
from gensid.baselines.training import train_baseline
from gensid.config.sections import ExperimentConfig
from gensid.data import Samples
from gensid.errors import InputError
from gensid.eval.metrics import metrics_from_ranks, rank_of_targets
from gensid.run import Run

SASREC_DIR = "sasrec"  # inside the run folder: a gensid baseline sasrec run folder


def seen_before_test(run: Run) -> list[np.ndarray]:
    """Each test user's items before the held-out one (leave-one-out: all of the sequence but its last)."""
    return [run.dataset.interactions.sequences[user][:-1] for user in run.splits.test.users]


def rank_without(rank: Callable[[np.ndarray, int], np.ndarray], seen: list[np.ndarray], depth: int) -> np.ndarray:
    """[N, depth] each row's best ``depth`` items that are not in its ``seen`` items (-1 where fewer
    remain). ``rank(rows, width)`` ranks the samples ``rows`` [n] to ``width`` items [n, width]; rows are
    ranked in groups of similar width (``depth`` plus the distinct seen items, to the next power of
    two), so a user with a long past does not make everyone's ranking deep."""
    distinct = [np.unique(items) for items in seen]
    need = depth + np.array([len(items) for items in distinct], dtype=np.int64)
    widths = 2 ** np.ceil(np.log2(need)).astype(np.int64)
    out = np.full((len(seen), depth), -1, dtype=np.int64)
    for width in np.unique(widths):
        rows = np.flatnonzero(widths == width)
        ranked = rank(rows, int(width))
        for row, items in zip(rows, ranked, strict=True):
            kept = items[(items >= 0) & ~np.isin(items, distinct[row])][:depth]
            out[row, : len(kept)] = kept
    return out


def seen_excluded(run: Run, sasrec: SASRec | None = None) -> dict[str, dict[str, float]]:
    """Test metrics at ``eval.ks`` once every item a test user saw before the held-out one is dropped
    from the ranking (``eval.beam_size`` items remain), per system: the run, ``sasrec`` if given, and
    most popular. Recommendation runs only (leave-one-out)."""
    test, ks, depth = run.splits.test, run.cfg.eval.ks, run.cfg.eval.beam_size
    seen = seen_before_test(run)
    popular = MostPopular.fit(run.splits.train, len(run.dataset.catalog))
    systems: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
        "gensid": lambda rows, width: run.rank(subset(test, rows), beam_size=width)}
    if sasrec is not None:
        systems["sasrec"] = lambda rows, width: sasrec.rank(subset(test, rows), width)
    systems["most_popular"] = lambda rows, width: popular.rank(len(rows), width)
    return {name: metrics_from_ranks(rank_of_targets(rank_without(rank, seen, depth), test.targets), ks)
            for name, rank in systems.items()}


def subset(samples: Samples, rows: np.ndarray) -> Samples:
    return Samples(samples.histories[rows], samples.targets[rows], samples.users[rows])


def sasrec_beside(run: Run, minutes: float, progress: bool = True) -> tuple[SASRec, dict]:
    """``gensid baseline sasrec`` on the run's config (``baseline.sasrec``'s defaults, ``data.max_history``
    positions, the run's seed) for at most ``minutes`` of training, into ``RUN_DIR/sasrec``; and its
    ``metrics.json`` (test metrics, epochs, minutes). ``gensid compare RUN_DIR RUN_DIR/sasrec`` and
    ``gensid hybrid RUN_DIR --scorer RUN_DIR/sasrec`` take it; a second call resumes the finished
    SASRec, which ends where it was."""
    if run.cfg.data.task != "rec":
        raise InputError("--sasrec-minutes: SASRec is a recommendation baseline; this run is a search run")
    settings = run.cfg.to_dict()
    settings["baseline"]["sasrec"]["max_minutes"] = minutes
    done = train_baseline("sasrec", ExperimentConfig.model_validate(settings), run.run_dir / SASREC_DIR, progress)
    return done.baseline.model, done.metrics


def sasrec_label(summary: dict) -> str:
    return f"sasrec ({summary['epochs']} epochs, {summary['train_minutes']:.1f} min)"
