"""Hybrid retrieval: a trained gensid run mixed with a full-catalog scorer, the weight chosen on validation.

    python benchmarks/fusion.py experiments/beauty-search/runs/<run>            # search: + dense dual encoder
    python benchmarks/fusion.py experiments/beauty-warm/runs/<run> \\
        --sasrec experiments/baselines/runs/sasrec-beauty-s1                      # recommendation: + SASRec

p(item) = (1 - w) p_gen(item) + w p_catalog(item) (``gensid.fusion``). For search the catalog scorer is
the dense dual encoder of ``benchmarks/search_baselines.py``, trained here on the run's own training
split and item text vectors (seconds); for recommendation a SASRec saved by ``benchmarks/sasrec.py``.
``w`` is the weight with the best validation ndcg@10 (ties: the smaller); the test split is then
ranked with w = 0 (the gensid run alone), the chosen w, and w = 1 (the scorer alone), in the same
run. Writes ``hybrid`` rows (test and validation) into ``benchmarks/results/<dataset>-<task>.json``,
the fused test ranks and ``hybrid.json`` (the run, the scorer, the weight; and the dense encoder) into
``experiments/hybrid/runs/<run>+<scorer>/`` (for ``gensid compare``), and
the sweep with all three rankings by item popularity into ``benchmarks/results/fusion.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gensid.baselines.dense import DenseDualEncoder
from gensid.baselines.sasrec import SASRec
from gensid.eval.analysis import hit_rate_by_bucket, popularity_buckets
from gensid.eval.metrics import metrics_from_ranks, rank_of_targets
from gensid.fusion import fused_rankings
from gensid.io import write_json
from gensid.pipeline import Run, load_run, save_test_ranks, training_popularity
from gensid.report.results import RESULTS, total_train_minutes, update_entry, upsert_row

WEIGHTS = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def catalog_scorer(run: Run, args: argparse.Namespace) -> tuple[str, Callable, float, DenseDualEncoder | None]:
    """(scorer name, log-probs function of (split, rows), training minutes, the dense encoder trained
    here or None) for the run's task."""
    if run.cfg.data.task == "search":
        torch.manual_seed(args.seed)
        dense = DenseDualEncoder(run.text.shape[1])
        start = time.perf_counter()
        dense.fit(run.splits.train, run.queries["train"], run.text, epochs=args.dense_epochs, seed=args.seed,
                  progress=False)
        minutes = (time.perf_counter() - start) / 60

        def log_probs(split: str, rows: np.ndarray) -> torch.Tensor:
            samples = getattr(run.splits, split)
            return dense.log_probs(run.queries[split][rows], samples.histories[rows], run.text)
        return "dense", log_probs, minutes, dense
    if not args.sasrec:
        raise SystemExit(f"{args.run_dir} is a recommendation run: give --sasrec DIR (a benchmarks/sasrec.py run)")
    sasrec = SASRec.load(Path(args.sasrec) / "model.safetensors")
    if sasrec.num_items != len(run.dataset.catalog):
        raise SystemExit(f"{args.sasrec} scores {sasrec.num_items} items, the run's catalog has "
                         f"{len(run.dataset.catalog)}: not the same data set")
    log = [json.loads(line) for line in (Path(args.sasrec) / "log.jsonl").read_text().splitlines()]
    minutes = max((e.get("minutes", 0.0) for e in log if e.get("event") == "epoch"), default=0.0)

    def log_probs(split: str, rows: np.ndarray) -> torch.Tensor:
        return sasrec.log_probs(getattr(run.splits, split).histories[rows])
    return "sasrec", log_probs, minutes, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--sasrec", help="recommendation: a SASRec run folder with model.safetensors and log.jsonl")
    parser.add_argument("--weights", type=float, nargs="+", default=WEIGHTS)
    parser.add_argument("--seed", type=int, default=None, help="dense encoder seed (default: the run's seed)")
    parser.add_argument("--dense-epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if any(not 0 <= w <= 1 for w in args.weights):
        raise SystemExit(f"--weights {args.weights}: each must lie in [0, 1]")
    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    run = load_run(args.run_dir)
    args.seed = run.cfg.train.seed if args.seed is None else args.seed
    scorer, log_probs, scorer_minutes, dense = catalog_scorer(run, args)
    ks, hit = run.cfg.eval.ks, ("hit" if run.cfg.data.task == "search" else "recall")

    def score(split: str, weights: list[float]) -> tuple[dict, dict]:
        samples = getattr(run.splits, split)
        ranked = fused_rankings(run, split, lambda rows: log_probs(split, rows), weights, progress=True)
        return ranked, {w: metrics_from_ranks(rank_of_targets(r, samples.targets), ks) for w, r in ranked.items()}

    start = time.perf_counter()
    _, valid = score("valid", sorted(set(args.weights)))
    best = max(valid, key=lambda w: (valid[w]["ndcg@10"], -w))
    ranked, test = score("test", sorted({0.0, best, 1.0}))
    seconds = time.perf_counter() - start

    targets = run.splits.test.targets
    buckets = popularity_buckets(training_popularity(run.splits, len(run.dataset.catalog)))
    names = {0.0: "gensid", best: "hybrid", 1.0: scorer}
    for w in (0.0, best, 1.0):
        m = test[w]
        print(f"test {names[w]:<7} (w {w:.2f}): {hit}@10 {m[f'{hit}@10']:.4f}  ndcg@10 {m['ndcg@10']:.4f}")
    print("valid ndcg@10 by weight: " + ", ".join(f"{w:g}: {m['ndcg@10']:.4f}" for w, m in valid.items()))
    if args.no_write:
        return

    run_name = Path(args.run_dir).name
    variant = f"{run_name.rpartition('-s')[0]} + {scorer}"
    minutes = total_train_minutes(json.loads((Path(args.run_dir) / "metrics.json").read_text())) + scorer_minutes
    dataset, task = run.dataset.name.lower(), run.cfg.data.task  # beauty-search.json, as the plans name it
    scorer_source = args.sasrec or f"dense dual encoder, seed {args.seed}, {args.dense_epochs} epochs"
    components = {"gensid": test[0.0], scorer: test[1.0]}
    for split, metrics in (("valid", valid[best]), ("test", test[best])):
        row = {"method": "hybrid", "variant": variant, "split": split, "seed": run.cfg.train.seed,
               "metrics": metrics, "train_minutes": round(minutes, 2), "command": command, "weight": best,
               "run_dir": str(args.run_dir), "scorer": scorer_source}
        if split == "test":
            row["components"] = components
            row["test_by_popularity"] = hit_rate_by_bucket(ranked[best], targets, buckets)
        upsert_row(dataset, task, row)
    out_dir = Path("experiments") / "hybrid" / "runs" / f"{run_name}+{scorer}"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_test_ranks(out_dir, run.splits.test, rank_of_targets(ranked[best], targets), ranked[best].shape[1])
    if dense is not None:  # the scorer trained here is kept, so the hybrid can be ranked again
        dense.save(out_dir / "dense.safetensors")
    write_json(out_dir / "hybrid.json", {"run_dir": str(args.run_dir), "scorer": scorer, "scorer_source": scorer_source,
                                         "weight": best, "command": command})
    update_entry(RESULTS / "fusion.json", f"{args.run_dir}+{scorer}", {
        "run_dir": str(args.run_dir), "scorer": scorer_source, "dataset": dataset, "task": task,
        "weight": best, "valid_by_weight": {str(w): m for w, m in valid.items()},
        "test": {names[w]: m for w, m in test.items()},
        "test_by_popularity": {names[w]: hit_rate_by_bucket(r, targets, buckets) for w, r in ranked.items()},
        "scorer_train_minutes": round(scorer_minutes, 2), "seconds": round(seconds, 1), "command": command})
    print(f"w = {best} on validation; rows in {RESULTS}/{dataset}-{task}.json, ranks in {out_dir}")


if __name__ == "__main__":
    main()
