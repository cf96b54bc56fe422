"""Hybrid retrieval: a trained gensid run mixed with a full-catalog scorer, the weight chosen on validation.

    python benchmarks/fusion.py research/experiments/beauty-search/runs/<run>   # search: + dense dual encoder
    python benchmarks/fusion.py research/experiments/beauty-warm/runs/<run> \\
        --sasrec research/experiments/baselines/runs/sasrec-beauty-s1             # recommendation: + SASRec

p(item) = (1 - w) p_gen(item) + w p_catalog(item) (``gensid.fusion``). ``gensid.fusion.fit_hybrid``
trains the dense dual encoder on the run's own training split and item text vectors (search; the
model of ``benchmarks/search_baselines.py``) or takes a SASRec run folder of ``gensid baseline sasrec``
or ``benchmarks/sasrec.py`` (recommendation), and picks ``w`` by validation ndcg@10. The test split is then ranked with w = 0
(the gensid run alone), the chosen w, and w = 1 (the scorer alone), from one beam search.
Writes ``hybrid`` rows (test and validation) into ``<results-dir>/<dataset>-<task>.json``; the
hybrid (``hybrid.json``, the dense encoder) and its test ranks (for ``gensid compare``) into
``<hybrids>/<experiment>-<run>+<scorer>/``; the sweep and all three rankings by item popularity
into ``<results-dir>/fusion.json``. ``--results-dir`` defaults to ``research/results`` and
``--hybrids`` to ``research/experiments/hybrid/runs``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from gensid.eval.analysis import hit_rate_by_bucket, popularity_buckets
from gensid.fusion.hybrid import WEIGHTS, fit_hybrid, test_comparison
from gensid.pipeline import load_run, training_popularity
from gensid.report.results import total_train_minutes, update_entry, upsert_row

RESEARCH = Path(__file__).resolve().parents[1] / "research"  # the defaults of --results-dir and --hybrids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--sasrec", help="recommendation: a SASRec run folder (gensid baseline sasrec)")
    parser.add_argument("--weights", type=float, nargs="+", default=WEIGHTS)
    parser.add_argument("--seed", type=int, default=None, help="dense encoder seed (default: the run's seed)")
    parser.add_argument("--dense-epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results-dir", type=Path, default=RESEARCH / "results", help="folder of the results JSON")
    parser.add_argument("--hybrids", type=Path, default=RESEARCH / "experiments" / "hybrid" / "runs",
                        help="folder of the hybrid folders")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    run = load_run(args.run_dir)
    start = time.perf_counter()
    hybrid, scorer_minutes = fit_hybrid(run, args.sasrec, args.weights, args.seed, args.dense_epochs, progress=True)
    compared = test_comparison(hybrid, progress=True)
    seconds = time.perf_counter() - start
    if args.sasrec:  # SASRec's own training minutes
        scorer_minutes = json.loads((Path(args.sasrec) / "metrics.json").read_text())["train_minutes"]

    hit = "hit" if run.cfg.data.task == "search" else "recall"
    for name, (m, _) in compared.items():
        print(f"test {name:<7}: {hit}@10 {m[f'{hit}@10']:.4f}  ndcg@10 {m['ndcg@10']:.4f}")
    print(f"w = {hybrid.weight} (valid ndcg@10 by weight: "
          + ", ".join(f"{w:g}: {m['ndcg@10']:.4f}" for w, m in hybrid.valid_by_weight.items()) + ")")

    run_name = Path(args.run_dir).name
    scorer = hybrid.scorer_name
    dataset, task = run.dataset.name.lower(), run.cfg.data.task  # beauty-search.json, as the plans name it
    targets = run.splits.test.targets
    buckets = popularity_buckets(training_popularity(run.splits, len(run.dataset.catalog)))
    by_bucket = {name: hit_rate_by_bucket(r, targets, buckets) for name, (_, r) in compared.items()}
    minutes = total_train_minutes(json.loads((Path(args.run_dir) / "metrics.json").read_text())) + scorer_minutes
    for split, metrics in (("valid", hybrid.valid_by_weight[hybrid.weight]), ("test", compared["hybrid"][0])):
        row = {"method": "hybrid", "variant": f"{run_name.rpartition('-s')[0]} + {scorer}", "split": split,
               "seed": run.cfg.train.seed, "metrics": metrics, "train_minutes": round(minutes, 2), "command": command,
               "weight": hybrid.weight, "run_dir": str(args.run_dir), "scorer": hybrid.scorer_source}
        if split == "test":
            row["components"] = {name: m for name, (m, _) in compared.items() if name != "hybrid"}
            row["test_by_popularity"] = by_bucket["hybrid"]
        upsert_row(dataset, task, row, args.results_dir)
    experiment = Path(args.run_dir).resolve().parent.parent.name  # beauty-search and office-search name runs alike
    out_dir = args.hybrids / f"{experiment}-{run_name}+{scorer}"
    hybrid.save(out_dir, test_ranked=compared["hybrid"][1], command=command)
    update_entry(args.results_dir / "fusion.json", f"{args.run_dir}+{scorer}", {
        "run_dir": str(args.run_dir), "scorer": hybrid.scorer_source, "dataset": dataset, "task": task,
        "weight": hybrid.weight, "valid_by_weight": {str(w): m for w, m in hybrid.valid_by_weight.items()},
        "test": {name: m for name, (m, _) in compared.items()},
        "test_by_popularity": by_bucket,
        "scorer_train_minutes": round(scorer_minutes, 2), "seconds": round(seconds, 1), "command": command})
    print(f"rows in {args.results_dir}/{dataset}-{task}.json, the hybrid in {out_dir}")


if __name__ == "__main__":
    main()
