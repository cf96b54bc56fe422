"""BM25 and the dense dual encoder on Amazon personalized product search, one run.

    python benchmarks/search_baselines.py --data ../shared/data/amazon-beauty --dataset beauty

``--text-model DIR`` gives the dense encoder a fine-tuned sentence encoder (``gensid finetune-text``),
recorded as the row ``dense (finetuned_text)``.

Builds the product-search splits (query = the target's category path, history = the
previous <= 10 items), ranks the full catalog with each baseline and writes test and
validation rows into ``<results-dir>/<dataset>-search.json`` (default ``research/results``), and each
baseline's per-user test ranks (for ``gensid compare``) into
``<runs>/<method>-<dataset>-search-s<seed>/`` (default ``research/experiments/baselines/runs``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gensid.baselines.bm25 import BM25Search
from gensid.baselines.dense import DenseDualEncoder
from gensid.data import load_dataset
from gensid.data.search import product_search
from gensid.eval.analysis import hit_rate_by_bucket, popularity_buckets
from gensid.eval.metrics import metrics_from_ranks, rank_of_targets
from gensid.pipeline import save_test_ranks
from gensid.report.results import upsert_row
from gensid.text import embed_split_texts, embed_texts

KS = [1, 5, 10, 20]
RESEARCH = Path(__file__).resolve().parents[1] / "research"  # the defaults of --results-dir and --runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset", required=True, help="name in the results file, e.g. beauty")
    parser.add_argument("--text-fields", nargs="+", default=["title", "brand", "categories"])
    parser.add_argument("--epochs", type=int, default=5, help="dense dual encoder epochs")
    parser.add_argument("--text-model", default="all-MiniLM-L6-v2",
                        help="sentence encoder: a known name or a folder from gensid finetune-text")
    parser.add_argument("--methods", nargs="+", default=["bm25", "dense"], choices=["bm25", "dense"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="dense dual encoder initialisation and batch order")
    parser.add_argument("--runs", type=Path, default=RESEARCH / "experiments" / "baselines" / "runs",
                        help="folder of the test-rank run folders")
    parser.add_argument("--results-dir", type=Path, default=RESEARCH / "results", help="folder of the results JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    dataset = load_dataset(args.data, "auto", args.text_fields)
    splits = product_search(dataset)
    item_text = torch.from_numpy(embed_texts(dataset.catalog.texts, args.text_model))
    parts = {name: getattr(splits, name) for name in ("train", "valid", "test")}
    queries = embed_split_texts({name: part.queries for name, part in parts.items()}, args.text_model)
    distinct = len({q for part in parts.values() for q in part.queries})
    print(f"{args.dataset}: {len(splits.train)} train / {len(splits.valid)} valid / {len(splits.test)} test "
          f"searches, {distinct} distinct queries, {len(dataset.catalog)} items")

    popularity = np.bincount(splits.train.targets, minlength=len(dataset.catalog))
    buckets = popularity_buckets(popularity)

    start = time.perf_counter()
    bm25 = BM25Search(dataset.catalog)
    bm25_minutes = (time.perf_counter() - start) / 60
    start = time.perf_counter()
    dense = DenseDualEncoder(item_text.shape[1])
    losses = dense.fit(splits.train, queries["train"], item_text, epochs=args.epochs, seed=args.seed)
    dense_minutes = (time.perf_counter() - start) / 60
    dense_variant = (f"all-MiniLM-L6-v2 frozen, linear projections d128, InfoNCE, {args.epochs} epochs "
                     f"(final loss {losses[-1]:.3f})")
    finetuned = None
    if (Path(args.text_model) / "finetune.json").exists():  # a gensid finetune-text folder: its own row,
        finetuned = json.loads((Path(args.text_model) / "finetune.json").read_text())  # its minutes count
        finetuned["folder"] = args.text_model
        dense_variant = "finetuned_text"
        dense_minutes += finetuned["minutes"]

    for split in ("valid", "test"):
        samples = parts[split]
        for method in args.methods:
            if method == "bm25":
                ranked, variant, minutes = bm25.rank(samples, max(KS)), "query + history titles, k1 1.5, b 0.75", bm25_minutes
            else:
                ranked, variant, minutes = dense.rank(samples, queries[split], item_text, max(KS)), dense_variant, dense_minutes
            ranks = rank_of_targets(ranked, samples.targets)
            metrics = metrics_from_ranks(ranks, KS)
            row = {"method": method, "variant": variant, "split": split, "seed": args.seed, "metrics": metrics,
                   "train_minutes": round(minutes, 2), "command": command}
            if method == "dense" and finetuned:
                row["text_encoder"] = {**finetuned, "dense_final_loss": round(losses[-1], 4)}
            if split == "test":  # the same buckets as gensid's runs: training-target counts
                row["test_by_popularity"] = hit_rate_by_bucket(ranked, samples.targets, buckets)
                name = "dense_finetuned_text" if method == "dense" and finetuned else method
                run_dir = Path(args.runs) / f"{name}-{args.dataset}-search-s{args.seed}"
                run_dir.mkdir(parents=True, exist_ok=True)
                save_test_ranks(run_dir, samples.as_samples(), ranks, max(KS))
            upsert_row(args.dataset, "search", row, args.results_dir)
            print(f"{split} {method}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                   if k.startswith(("hit", "ndcg@5", "ndcg@10", "ndcg@20"))))


if __name__ == "__main__":
    main()
