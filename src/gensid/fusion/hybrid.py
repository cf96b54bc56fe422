"""A hybrid: a trained gensid run, a full-catalog scorer and the mixing weight chosen on validation.

``gensid hybrid RUN_DIR --out DIR`` (:func:`fit_hybrid`, then :meth:`Hybrid.save`) builds one. The
scorer is a baseline run folder (``--scorer``: ``gensid baseline sasrec`` or ``dense`` on the run's
data; also a SASRec folder of ``gensid train --sasrec-minutes`` or of the SASRec before it trained
through the Trainer); without one, a search run gets the dense dual encoder trained here on its
training split and item text vectors (seconds, :func:`~gensid.baselines.training.train_dense`). The
weight is the one with the best validation ndcg@10. The folder holds ``hybrid.json`` (the run,
relative to the folder; the scorer; the weight; the validation sweep) and, for a dense scorer,
``dense.safetensors``. ``gensid serve DIR`` serves it as it serves a run.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gensid.baselines import baseline_kind
from gensid.baselines.dense import DenseDualEncoder
from gensid.baselines.sasrec import SASRec
from gensid.baselines.training import dense_schedule, train_dense
from gensid.config.loading import load_config
from gensid.config.sections import DenseConfig, TrainConfig
from gensid.data.splits import Samples
from gensid.errors import InputError, RunError
from gensid.eval.metrics import metrics_from_ranks, rank_of_targets
from gensid.evaluation import save_test_ranks
from gensid.fusion.mixture import fused_rankings
from gensid.io import write_json
from gensid.prepare import load_run
from gensid.run import Run

HYBRID_FILE = "hybrid.json"


def hybrid_run_dir(folder: str | Path) -> Path | None:
    """The run a hybrid folder (:mod:`gensid.fusion.hybrid`) mixes, or None if ``folder`` is no hybrid."""
    path = Path(folder) / HYBRID_FILE
    if not path.exists():
        return None
    try:
        return Path(os.path.normpath(Path(folder) / json.loads(path.read_text())["run_dir"]))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RunError(f"{path}: not a hybrid description ({exc!r})") from None


WEIGHTS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@dataclass
class Hybrid:
    run: Run
    scorer: DenseDualEncoder | SASRec
    weight: float
    scorer_source: str  # where the scorer came from: a SASRec folder, or how the dense encoder was trained
    valid_by_weight: dict[float, dict[str, float]] = field(default_factory=dict)
    _dense_items: torch.Tensor = field(default_factory=lambda: torch.zeros(0), repr=False)  # [N, dim], kept

    @property
    def scorer_name(self) -> str:
        return "dense" if isinstance(self.scorer, DenseDualEncoder) else "sasrec"

    def catalog_log_probs(self, samples: Samples, rows: np.ndarray, queries: torch.Tensor | None) -> torch.Tensor:
        """The scorer's log-softmax over the run's current catalog [len(rows), N]. The dense encoder
        scores every item from its text vector, items added to a served run included; SASRec has
        no embedding for an item added after it was trained: such an item gets probability 0 from it
        and is dropped from the histories it reads."""
        histories = samples.histories[rows]
        if isinstance(self.scorer, DenseDualEncoder):
            if len(self._dense_items) != len(self.run.text):  # first call, or items were added
                self._dense_items = self.scorer.item_vectors(self.run.text)
            # recommendation: no query, the dense encoder reads the history alone (as it was trained)
            query = queries[torch.as_tensor(rows)] if queries is not None else torch.zeros(len(rows), self.run.text.shape[1])
            return self.scorer.log_probs(query, histories, self.run.text, self._dense_items)
        known = self.scorer.num_items
        log_probs = self.scorer.log_probs(known_items_only(histories, known))
        added = len(self.run.text) - known
        return torch.cat([log_probs, torch.full((len(rows), added), float("-inf"))], 1) if added else log_probs

    def rank_at(self, samples: Samples, queries: torch.Tensor | None, weights: list[float],
                progress: bool = False, k: int | None = None) -> dict[float, np.ndarray]:
        """{weight: ranked item ids [N, k]} for ``samples`` at each weight, one beam search
        (``k`` defaults to ``eval.beam_size``)."""
        return fused_rankings(self.run, samples, queries, lambda rows: self.catalog_log_probs(samples, rows, queries),
                              weights, k, progress=progress)

    def rank(self, samples: Samples, queries: torch.Tensor | None = None, progress: bool = False,
             k: int | None = None) -> np.ndarray:
        """Ranked item ids [N, k] at the hybrid's weight (the interface of ``Run.rank``; ``k`` defaults
        to ``eval.beam_size``)."""
        return self.rank_at(samples, queries, [self.weight], progress, k)[self.weight]

    def evaluate(self, split: str, weights: list[float], progress: bool = False
                 ) -> dict[float, tuple[dict[str, float], np.ndarray]]:
        """{weight: (metrics at ``eval.ks``, ranked item ids [N, eval.beam_size])} on ``split`` of the run's data."""
        samples = getattr(self.run.splits, split)
        ranked = self.rank_at(samples, self.run.split_queries(split), weights, progress)
        return {w: (metrics_from_ranks(rank_of_targets(r, samples.targets), self.run.cfg.eval.ks), r)
                for w, r in ranked.items()}

    def save(self, out_dir: str | Path, test_ranked: np.ndarray | None = None, **extra: object) -> Path:
        """Write ``hybrid.json`` (and ``dense.safetensors``) into ``out_dir``; ``extra`` goes into the JSON.
        ``test_ranked`` [N, k]: the hybrid's ranking of the test split, kept as ``test_ranks.json`` (for
        ``gensid compare``)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if test_ranked is not None:
            test = self.run.splits.test
            save_test_ranks(out_dir, test, rank_of_targets(test_ranked, test.targets), test_ranked.shape[1],
                            self.run.splits.new_targets(test))
        if isinstance(self.scorer, DenseDualEncoder):
            self.scorer.save(out_dir / "dense.safetensors")
        source = self.scorer_source  # a SASRec folder is kept relative to the hybrid's, as the run is
        if isinstance(self.scorer, SASRec):
            source = os.path.relpath(Path(source).resolve(), out_dir.resolve())
        write_json(out_dir / HYBRID_FILE, {
            "run_dir": os.path.relpath(self.run.run_dir.resolve(), out_dir.resolve()), "scorer": self.scorer_name,
            "scorer_source": source, "weight": self.weight,
            "valid_by_weight": {str(w): m for w, m in self.valid_by_weight.items()}, **extra})
        return out_dir / HYBRID_FILE

    @classmethod
    def load(cls, hybrid_dir: str | Path, splits: bool = True) -> Hybrid:
        """The run, scorer and weight of a folder written by :meth:`save`; ``splits=False``: the run
        without its data split (serving: :meth:`evaluate` and :meth:`save` need the split)."""
        hybrid_dir = Path(hybrid_dir)
        run_dir = hybrid_run_dir(hybrid_dir)
        if run_dir is None:
            raise InputError(f"{hybrid_dir}: no {HYBRID_FILE} (build one with gensid hybrid)")
        saved = json.loads((hybrid_dir / HYBRID_FILE).read_text())
        run = load_run(run_dir, splits=splits)
        source = saved["scorer_source"]
        if saved["scorer"] == "dense":
            scorer = DenseDualEncoder.load(hybrid_dir / "dense.safetensors")
        else:
            source = os.path.normpath(hybrid_dir / source)
            scorer = load_scorer(source, run)
        return cls(run, scorer, saved["weight"], source,
                   {float(w): m for w, m in saved.get("valid_by_weight", {}).items()})


def known_items_only(histories: np.ndarray, known: int) -> np.ndarray:
    """Histories [B, H] (left-padded with -1) without the item ids >= ``known``, left-padded again."""
    if not (histories >= known).any():
        return histories
    out = np.full_like(histories, -1)
    for row, history in enumerate(histories):
        kept = history[(history >= 0) & (history < known)]
        if len(kept):
            out[row, -len(kept):] = kept
    return out


def load_scorer(folder: str | Path, run: Run) -> SASRec | DenseDualEncoder:
    """The scorer of a baseline run folder (``gensid baseline sasrec`` or ``dense``; a SASRec folder
    without ``baseline.json`` is an older one), checked against the run's catalog and text model."""
    folder = Path(folder)
    kind = baseline_kind(folder) or "sasrec"
    path = folder / "model.safetensors"
    if kind not in ("sasrec", "dense"):
        raise InputError(f"--scorer {folder}: a {kind} baseline; a hybrid mixes in a sasrec or dense baseline")
    if not path.exists():
        raise InputError(f"{path} does not exist: --scorer takes a baseline run folder (gensid baseline sasrec or "
                         "dense)")
    if kind == "dense":
        text_model = load_config(folder / "config.yaml").text.model
        if text_model != run.cfg.text.model:
            raise InputError(f"--scorer {folder}: its dense encoder reads {text_model} text vectors, the run's "
                             f"are {run.cfg.text.model}")
        return DenseDualEncoder.load(path)
    model = SASRec.load(path)
    if model.num_items != len(run.dataset.catalog):
        raise InputError(f"{folder} scores {model.num_items} items, the run's catalog has "
                         f"{len(run.dataset.catalog)}: not the same data set")
    return model


def fit_hybrid(run: Run, scorer: str | Path | None = None, weights: list[float] | None = None, seed: int | None = None,
               dense_epochs: int = 5, progress: bool = False) -> tuple[Hybrid, float]:
    """A hybrid of ``run`` with its weight chosen on the validation split (best ndcg@10, ties: the smaller
    weight) among ``weights``; and the minutes it took to train the scorer (0 for a given one).
    ``scorer``: a baseline run folder (:func:`load_scorer`); without it a search run gets a dense dual
    encoder trained here with ``seed`` (default: the run's)."""
    weights = sorted(set(WEIGHTS if weights is None else weights))
    if not weights or any(not 0.0 <= w <= 1.0 for w in weights):
        raise InputError(f"mixing weights {weights}: give at least one, each in [0, 1]")
    minutes = 0.0
    if scorer is not None:
        model, source = load_scorer(scorer, run), str(scorer)
    elif run.cfg.data.task == "search":
        seed = run.cfg.train.seed if seed is None else seed
        torch.manual_seed(seed)
        model = DenseDualEncoder(run.text.shape[1])
        schedule = dense_schedule(DenseConfig(epochs=dense_epochs), TrainConfig(seed=seed))
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as checkpoints:
            train_dense(model, run.splits, run.queries, run.text, schedule, Path(checkpoints), progress)
        minutes = (time.perf_counter() - start) / 60
        source = f"dense dual encoder trained on the run's training split, seed {seed}, {dense_epochs} epochs"
    else:
        raise InputError(f"{run.run_dir} is a recommendation run: give a baseline run folder to mix "
                         "(--scorer, from gensid baseline sasrec or dense)")
    hybrid = Hybrid(run, model, 0.0, source)
    hybrid.valid_by_weight = {w: m for w, (m, _) in hybrid.evaluate("valid", weights, progress).items()}
    hybrid.weight = max(weights, key=lambda w: (hybrid.valid_by_weight[w]["ndcg@10"], -w))
    return hybrid, minutes


def test_comparison(hybrid: Hybrid, progress: bool = False) -> dict[str, tuple[dict[str, float], np.ndarray]]:
    """The run alone (w = 0), the hybrid and the scorer alone (w = 1) on the test split, from one beam
    search: {"gensid" | "hybrid" | scorer name: (metrics at eval.ks, ranked item ids [N, beam_size])}."""
    scored = hybrid.evaluate("test", sorted({0.0, hybrid.weight, 1.0}), progress)
    return {name: scored[w] for name, w in (("gensid", 0.0), ("hybrid", hybrid.weight), (hybrid.scorer_name, 1.0))}
