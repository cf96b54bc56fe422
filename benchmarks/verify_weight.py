"""Choose ``eval.verify_weight`` of a trained joint run on its validation split (never on test).

    python benchmarks/verify_weight.py research/experiments/office-search/runs/<run> --weights 0 0.5 1 2 4 8

Geometric verification ranks the beam's items by ``log-probability + w * cosine(context, item)``
(``gensid.index.beam.verify``). The beam search runs once per batch and every weight re-ranks the
same candidates, so the sweep costs one evaluation. For reference it also ranks the whole catalog
by the cosine alone (the context vector as a dense retriever): what the fused score can add.
Writes ``<results-dir>/verify_weight.json`` (default ``research/results``; one entry per run folder).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gensid.eval.evaluate import evaluation_batches
from gensid.eval.metrics import metrics_from_ranks, rank_of_targets
from gensid.index.beam import encode_context, search_leaves, verify
from gensid.pipeline import load_run
from gensid.report.results import update_entry

RESULTS = Path(__file__).resolve().parents[1] / "research" / "results"  # the default of --results-dir


@torch.no_grad()
def sweep(run_dir: str, weights: list[float], split: str) -> dict:
    run = load_run(run_dir)
    if not run.joint:
        raise SystemExit(f"{run_dir}: a {run.cfg.method.name} run has no context and item vectors to fuse")
    model, index, items, e = run.model, run.index, run.items, run.cfg.eval
    samples, queries = getattr(run.splits, split), run.split_queries(split)
    item_vectors = F.normalize(items.item_vectors, dim=-1)
    ranked = {w: np.full((len(samples), e.beam_size), -1, dtype=np.int64) for w in weights}
    dense = np.zeros((len(samples), e.beam_size), dtype=np.int64)
    for rows, batch in evaluation_batches(samples, items, queries, e.batch_size, f"{split} beam search", True):
        memory, memory_mask, context = encode_context(model, batch.history_codes, batch.history_mask,
                                                      batch.history_text, batch.history_vectors, batch.query)
        leaves, scores = search_leaves(model, index, memory, memory_mask, e.beam_size)
        for w in weights:
            result = verify(index, leaves, scores, e.beam_size, context, items.item_vectors, w)
            ranked[w][rows, : result.items.shape[1]] = result.items.numpy()
        dense[rows] = (F.normalize(context, dim=-1) @ item_vectors.T).topk(e.beam_size, dim=1).indices.numpy()
    score = {w: metrics_from_ranks(rank_of_targets(r, samples.targets), e.ks) for w, r in ranked.items()}
    best = max(weights, key=lambda w: (score[w]["ndcg@10"], -w))  # ties: the smaller weight
    return {"run_dir": str(run_dir), "dataset": run.dataset.name, "task": run.cfg.data.task, "split": split,
            "configured_weight": e.verify_weight, "best_weight_by_ndcg@10": best,
            "by_weight": {str(w): score[w] for w in weights},
            "context_cosine_alone": metrics_from_ranks(rank_of_targets(dense, samples.targets), e.ks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--weights", type=float, nargs="+", default=[0, 0.5, 1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="folder of the results JSON")
    args = parser.parse_args()
    if any(w < 0 for w in args.weights):
        raise SystemExit(f"--weights {args.weights}: weights must be >= 0")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = sweep(args.run_dir, sorted(set(args.weights)), "valid")
    out["seconds"] = round(time.perf_counter() - start, 1)
    out["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    path = update_entry(args.results_dir / "verify_weight.json", out["run_dir"], out)
    hit = "hit@10" if "hit@10" in out["context_cosine_alone"] else "recall@10"
    for w, m in out["by_weight"].items():
        print(f"w {w:>5}: {hit} {m[hit]:.4f}  ndcg@10 {m['ndcg@10']:.4f}")
    alone = out["context_cosine_alone"]
    print(f"cosine alone: {hit} {alone[hit]:.4f}  ndcg@10 {alone['ndcg@10']:.4f}")
    print(f"best on valid: w = {out['best_weight_by_ndcg@10']} ({path})")


if __name__ == "__main__":
    main()
