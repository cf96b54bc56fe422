"""Most popular and the dense text encoder on next-item recommendation, one run.

    python benchmarks/rec_baselines.py --data ../shared/data/amazon-beauty --dataset beauty-cold --split cold_start

Builds gensid's split (``--split``: ``data.split``, leave-one-out or cold start, history 20) and
ranks the full catalog with
- ``most_popular``: items by how often they are training targets (a new item never is);
- ``dense``: the dense dual encoder of ``gensid.baselines.dense`` with an empty query: the mean of
  the history items' frozen text vectors, projected, against each item's projected text vector
  (in-batch InfoNCE on the training samples, exact inner-product search with faiss). Every item,
  new or not, is scored by its text.

Each trains with ``gensid baseline popular|dense`` (:func:`gensid.baselines.training.train_baseline`)
on a config made of these options. Writes test and validation rows into ``<results-dir>/<dataset>-rec.json`` (default
``research/results``), on a cold-start split with the metrics of the new-item and the seen-item
targets (``metrics_new``, ``metrics_seen``); each baseline's run folder (weights, metrics, per-user
test ranks for ``gensid compare``) is ``<runs>/<method>-<dataset>-s<seed>/`` (default
``research/experiments/baselines/runs``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from gensid.baselines.training import train_baseline
from gensid.config import DataConfig, DenseConfig, load_config
from gensid.report.results import upsert_row

MAX_HISTORY = 20
RESEARCH = Path(__file__).resolve().parents[1] / "research"  # the defaults of --results-dir and --runs
KINDS = {"most_popular": "popular", "dense": "dense"}  # results method -> gensid baseline KIND


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset", required=True, help="name in the results file, e.g. beauty-cold")
    parser.add_argument("--split", choices=["leave_one_out", "cold_start"], default="leave_one_out",
                        help="gensid's data.split")
    parser.add_argument("--cold-share", type=float, default=DataConfig().cold_share,
                        help="--split cold_start: the share of the items (the newest) never trained on")
    parser.add_argument("--text-fields", nargs="+", default=DataConfig().text_fields)
    parser.add_argument("--text-model", default="all-MiniLM-L6-v2")
    parser.add_argument("--methods", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--epochs", type=int, default=DenseConfig().epochs, help="dense encoder epochs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="dense encoder initialisation and batch order")
    parser.add_argument("--runs", type=Path, default=RESEARCH / "experiments" / "baselines" / "runs",
                        help="folder of the baselines' run folders")
    parser.add_argument("--results-dir", type=Path, default=RESEARCH / "results", help="folder of the results JSON")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    cfg = load_config(None, [f"name={args.dataset}", f"data.source={args.data}", f"data.max_history={MAX_HISTORY}",
                             f"data.split={args.split}", f"data.cold_share={args.cold_share}",
                             f"data.text_fields={json.dumps(args.text_fields)}", f"text.model={args.text_model}",
                             f"train.seed={args.seed}", f"train.threads={args.threads}",
                             f"baseline.dense.epochs={args.epochs}"])
    for method in args.methods:
        done = train_baseline(KINDS[method], cfg, Path(args.runs) / f"{method}-{args.dataset}-s{args.seed}")
        metrics = done.metrics
        variant = "training-target counts" if method == "most_popular" else (
            f"{args.text_model} frozen, mean history text -> item text, linear projections d{cfg.baseline.dense.dim}, "
            f"InfoNCE, {args.epochs} epochs (final loss {metrics['final_loss']:.3f})")
        for name in ("valid", "test"):
            subsets = {subset: metrics[f"{name}_{subset}"] for subset in ("new", "seen") if f"{name}_{subset}" in metrics}
            row = {"method": method, "variant": variant, "split": name, "seed": args.seed,
                   "metrics": metrics[name], "train_minutes": round(metrics["train_minutes"], 2), "command": command,
                   **{f"metrics_{subset}": m for subset, m in subsets.items()}}
            if name == "test":  # the same buckets as gensid's runs: training-target counts
                row["test_by_popularity"] = metrics["test_by_popularity"]
            upsert_row(args.dataset, "rec", row, args.results_dir)
            shown = {"all": metrics[name], **subsets}
            print(f"{name} {method}: " + "  ".join(f"{subset} R@10 {m['recall@10']:.4f} N@10 {m['ndcg@10']:.4f}"
                                                   for subset, m in shown.items()), flush=True)


if __name__ == "__main__":
    main()
