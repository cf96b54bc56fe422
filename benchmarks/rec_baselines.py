"""Most popular and the dense text encoder on next-item recommendation, one run.

    python benchmarks/rec_baselines.py --data ../shared/data/amazon-beauty --dataset beauty-cold --split cold_start

Builds gensid's split (``--split``: ``data.split``, leave-one-out or cold start, history 20) and
ranks the full catalog with
- ``most_popular``: items by how often they are training targets (a new item never is);
- ``dense``: the dense dual encoder of ``gensid.baselines.dense`` with an empty query: the mean of
  the history items' frozen text vectors, projected, against each item's projected text vector
  (in-batch InfoNCE on the training samples, exact inner-product search with faiss). Every item,
  new or not, is scored by its text.

Writes test and validation rows into ``<results-dir>/<dataset>-rec.json`` (default
``research/results``), on a cold-start split with the metrics of the new-item and the seen-item
targets (``metrics_new``, ``metrics_seen``), and each baseline's per-user test ranks (for
``gensid compare``) into ``<runs>/<method>-<dataset>-s<seed>/`` (default
``research/experiments/baselines/runs``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gensid.baselines.dense import DenseDualEncoder
from gensid.baselines.popularity import MostPopular
from gensid.config import DataConfig
from gensid.data import load_dataset
from gensid.data.splits import next_item_split
from gensid.eval.analysis import hit_rate_by_bucket, popularity_buckets
from gensid.eval.metrics import metrics_from_ranks, new_and_seen, rank_of_targets
from gensid.pipeline import save_test_ranks
from gensid.report.results import upsert_row
from gensid.text import embed_texts

KS = [1, 5, 10, 20]
MAX_HISTORY = 20
RESEARCH = Path(__file__).resolve().parents[1] / "research"  # the defaults of --results-dir and --runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--dataset", required=True, help="name in the results file, e.g. beauty-cold")
    parser.add_argument("--split", choices=["leave_one_out", "cold_start"], default="leave_one_out",
                        help="gensid's data.split")
    parser.add_argument("--cold-share", type=float, default=DataConfig().cold_share,
                        help="--split cold_start: the share of the items (the newest) never trained on")
    parser.add_argument("--text-fields", nargs="+", default=DataConfig().text_fields)
    parser.add_argument("--text-model", default="all-MiniLM-L6-v2")
    parser.add_argument("--methods", nargs="+", default=["most_popular", "dense"], choices=["most_popular", "dense"])
    parser.add_argument("--epochs", type=int, default=5, help="dense encoder epochs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="dense encoder initialisation and batch order")
    parser.add_argument("--runs", type=Path, default=RESEARCH / "experiments" / "baselines" / "runs",
                        help="folder of the test-rank run folders")
    parser.add_argument("--results-dir", type=Path, default=RESEARCH / "results", help="folder of the results JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    dataset = load_dataset(args.data, "auto", args.text_fields)
    num_items = len(dataset.catalog)
    split = next_item_split(dataset.interactions, num_items, MAX_HISTORY, args.split, args.cold_share)
    cold = split.cold_items
    print(f"{args.dataset}: {len(split.train)} train / {len(split.valid)} valid / {len(split.test)} test samples, "
          f"{num_items} items" + (f", {len(cold)} new" if cold is not None else ""), flush=True)
    buckets = popularity_buckets(np.bincount(split.train.targets, minlength=num_items))

    rankers, variants, minutes = {}, {}, {}
    if "most_popular" in args.methods:
        popular = MostPopular.fit(split.train, num_items)
        rankers["most_popular"] = lambda samples: popular.rank(len(samples), max(KS))
        variants["most_popular"], minutes["most_popular"] = "training-target counts", 0.0
    if "dense" in args.methods:
        item_text = torch.from_numpy(embed_texts(dataset.catalog.texts, args.text_model))
        start = time.perf_counter()
        dense = DenseDualEncoder(item_text.shape[1])
        no_query = torch.zeros(len(split.train), item_text.shape[1])  # recommendation: the history alone
        losses = dense.fit(split.train, no_query, item_text, epochs=args.epochs, seed=args.seed)
        minutes["dense"] = (time.perf_counter() - start) / 60
        rankers["dense"] = lambda samples: dense.rank(samples, torch.zeros(len(samples), item_text.shape[1]),
                                                      item_text, max(KS))
        variants["dense"] = (f"{args.text_model} frozen, mean history text -> item text, linear projections d128, "
                             f"InfoNCE, {args.epochs} epochs (final loss {losses[-1]:.3f})")

    for name in ("valid", "test"):
        samples = getattr(split, name)
        for method, rank in rankers.items():
            ranked = rank(samples)
            ranks = rank_of_targets(ranked, samples.targets)
            metrics = metrics_from_ranks(ranks, KS)
            subsets = new_and_seen(ranks, split.new_targets(samples), KS) if cold is not None else {}
            row = {"method": method, "variant": variants[method], "split": name, "seed": args.seed,
                   "metrics": metrics, "train_minutes": round(minutes[method], 2), "command": command,
                   **{f"metrics_{subset}": m for subset, m in subsets.items()}}
            if name == "test":  # the same buckets as gensid's runs: training-target counts
                row["test_by_popularity"] = hit_rate_by_bucket(ranked, samples.targets, buckets)
                run_dir = Path(args.runs) / f"{method}-{args.dataset}-s{args.seed}"
                run_dir.mkdir(parents=True, exist_ok=True)
                save_test_ranks(run_dir, samples, ranks, max(KS), split.new_targets(samples))
            upsert_row(args.dataset, "rec", row, args.results_dir)
            shown = {"all": metrics, **subsets}
            print(f"{name} {method}: " + "  ".join(f"{subset} R@10 {m['recall@10']:.4f} N@10 {m['ndcg@10']:.4f}"
                                                   for subset, m in shown.items()), flush=True)


if __name__ == "__main__":
    main()
