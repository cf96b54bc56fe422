"""BM25 and the dense dual encoder on Amazon personalized product search, one run.

    python benchmarks/search_baselines.py --data ../shared/data/amazon-beauty --dataset beauty

``--text-model DIR`` gives the dense encoder a fine-tuned sentence encoder (``gensid finetune-text``),
recorded as the row ``dense (finetuned_text)``.

Builds the product-search splits (query = the target's category path, history = the
previous <= 10 items), trains each baseline with ``gensid baseline bm25|dense``
(:func:`gensid.baselines.training.train_baseline`) on a config made of these options, and writes
test and validation rows into ``<results-dir>/<dataset>-search.json`` (default ``research/results``);
each baseline's run folder (weights, metrics, per-user test ranks for ``gensid compare``) is
``<runs>/<method>-<dataset>-search-s<seed>/`` (default ``research/experiments/baselines/runs``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from gensid.baselines.training import train_baseline
from gensid.config import DenseConfig, load_config
from gensid.report.results import upsert_row

MAX_HISTORY = 10
RESEARCH = Path(__file__).resolve().parents[1] / "research"  # the defaults of --results-dir and --runs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset", required=True, help="name in the results file, e.g. beauty")
    parser.add_argument("--text-fields", nargs="+", default=["title", "brand", "categories"])
    parser.add_argument("--epochs", type=int, default=DenseConfig().epochs, help="dense dual encoder epochs")
    parser.add_argument("--text-model", default="all-MiniLM-L6-v2",
                        help="sentence encoder: a known name or a folder from gensid finetune-text")
    parser.add_argument("--methods", nargs="+", default=["bm25", "dense"], choices=["bm25", "dense"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="dense dual encoder initialisation and batch order")
    parser.add_argument("--runs", type=Path, default=RESEARCH / "experiments" / "baselines" / "runs",
                        help="folder of the baselines' run folders")
    parser.add_argument("--results-dir", type=Path, default=RESEARCH / "results", help="folder of the results JSON")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    cfg = load_config(None, [f"name={args.dataset}-search", f"data.source={args.data}", "data.task=search",
                             f"data.max_history={MAX_HISTORY}", f"data.text_fields={json.dumps(args.text_fields)}",
                             f"text.model={args.text_model}", f"train.seed={args.seed}",
                             f"train.threads={args.threads}", f"baseline.dense.epochs={args.epochs}"])
    finetuned = None
    if (Path(args.text_model) / "finetune.json").exists():  # a gensid finetune-text folder: its own row,
        finetuned = json.loads((Path(args.text_model) / "finetune.json").read_text())  # its minutes count
        finetuned["folder"] = args.text_model
    for method in args.methods:
        name = "dense_finetuned_text" if method == "dense" and finetuned else method
        done = train_baseline(method, cfg, Path(args.runs) / f"{name}-{args.dataset}-search-s{args.seed}")
        metrics, minutes = done.metrics, done.metrics["train_minutes"]
        if method == "bm25":
            variant = f"query + history titles, k1 {cfg.baseline.bm25.k1:g}, b {cfg.baseline.bm25.b:g}"
        elif finetuned:
            variant, minutes = "finetuned_text", minutes + finetuned["minutes"]
        else:
            variant = (f"all-MiniLM-L6-v2 frozen, linear projections d{cfg.baseline.dense.dim}, InfoNCE, "
                       f"{args.epochs} epochs (final loss {metrics['final_loss']:.3f})")
        for split in ("valid", "test"):
            row = {"method": method, "variant": variant, "split": split, "seed": args.seed, "metrics": metrics[split],
                   "train_minutes": round(minutes, 2), "command": command}
            if method == "dense" and finetuned:
                row["text_encoder"] = {**finetuned, "dense_final_loss": round(metrics["final_loss"], 4)}
            if split == "test":  # the same buckets as gensid's runs: training-target counts
                row["test_by_popularity"] = metrics["test_by_popularity"]
            upsert_row(args.dataset, "search", row, args.results_dir)
            print(f"{split} {method}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics[split].items()
                                                   if k.startswith(("hit", "ndcg@5", "ndcg@10", "ndcg@20"))))


if __name__ == "__main__":
    main()
