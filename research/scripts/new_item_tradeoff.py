"""How well a parallel cold-start run ranks new items, against the dense text encoder, and what the
new-item offset and a hybrid with the dense encoder trade (research/RESULTS.md, "Cold start").

    python research/scripts/new_item_tradeoff.py RUN_DIR DENSE_DIR [--offsets 0,1,1.5,2] [--weights 0.5]
        [--out research/results/new-item-tradeoff-beauty-s0.json]

RUN_DIR: a finished parallel run on a ``cold_start`` split; DENSE_DIR: ``gensid baseline dense`` on the
same config and split. Prints, for validation and test:
- within-new recall@10: the share of new-target users whose target is among the top 10 *new* items
  (how well each model orders new items among themselves);
- the parallel run alone at each ``--offsets`` value (in place of its calibrated offset): recall and
  ndcg@10 on every target, recall@10 on new and seen targets, and the new items' share of the top 10;
- the same for the hybrid ``(1 - w) softmax(parallel + offset) + w softmax(dense)`` at each weight.
Nothing here trains; scores are held for one split at a time ([users, items] float32 twice).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from gensid.baselines.dense import DenseDualEncoder
from gensid.eval.evaluate import evaluation_batches
from gensid.prepare import load_run


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


@torch.no_grad()
def split_scores(run, dense: DenseDualEncoder, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Parallel scores without the new-item offset and dense log-probabilities, both [users, items]."""
    samples, text = getattr(run.splits, split), run.text
    table = run.item_table().clone()
    table[:, -1] = 0  # the offset column: swept here instead
    dense_items = dense.item_vectors(text)
    parallel = torch.empty(len(samples), len(table))
    scorer = torch.empty_like(parallel)
    for rows, batch in evaluation_batches(samples, run.items, batch_size=1024):
        states = run.model.user_states(batch.history_codes, batch.history_mask, batch.history_text,
                                       batch.history_items)
        parallel[rows] = run.model.catalog_scores(states, table)
        no_query = torch.zeros(len(rows), text.shape[1])
        scorer[rows] = dense.log_probs(no_query, samples.histories[rows], text, dense_items)
    return parallel, scorer


def ranks_and_share(scores: torch.Tensor, targets: torch.Tensor, new: torch.Tensor) -> tuple[np.ndarray, float]:
    """scores [U, N], targets [U], new [N] bool -> each target's 0-based rank [U], new items' top-10 share."""
    target_scores = scores[torch.arange(len(targets)), targets]
    ranks = (scores > target_scores[:, None]).sum(1).numpy()
    return ranks, float(new[scores.topk(10, 1).indices].float().mean())


def summary(ranks: np.ndarray, share: float, new_targets: np.ndarray) -> dict[str, float]:
    ndcg = np.where(ranks < 10, 1 / np.log2(ranks + 2), 0.0)
    return {"recall@10": float((ranks < 10).mean()), "ndcg@10": float(ndcg.mean()),
            "new:recall@10": float((ranks[new_targets] < 10).mean()),
            "seen:recall@10": float((ranks[~new_targets] < 10).mean()), "new_share_top10": share}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("dense_dir")
    p.add_argument("--offsets", type=floats, default=[0.0, 0.5, 1.0, 1.5, 2.0])
    p.add_argument("--weights", type=floats, default=[0.5])
    p.add_argument("--out", type=Path, default=None, help="write the numbers here as JSON")
    args = p.parse_args()
    torch.set_num_threads(1)
    run = load_run(args.run_dir)
    run.model.eval()
    dense = DenseDualEncoder.load(Path(args.dense_dir) / "model.safetensors").eval()
    new = torch.zeros(len(run.text), dtype=torch.bool)
    new[torch.from_numpy(run.splits.cold_items)] = True
    out: dict = {"run_dir": args.run_dir, "dense_dir": args.dense_dir,
                 "calibrated_offset": float(run.model.new_item_offset)}
    for split in ("valid", "test"):
        samples = getattr(run.splits, split)
        new_targets = run.splits.new_targets(samples)
        targets = torch.from_numpy(samples.targets)
        parallel, scorer = split_scores(run, dense, split)
        within = {}
        for name, scores in (("parallel", parallel), ("dense", scorer)):
            target_scores = scores[torch.arange(len(targets)), targets]
            above = ((scores > target_scores[:, None]) & new).sum(1).numpy()
            within[name] = float((above[new_targets] < 10).mean())
        rows = {"new_target_share": float(new_targets.mean()), "within_new_recall@10": within,
                "dense": summary(*ranks_and_share(scorer, targets, new), new_targets=new_targets), "sweep": []}
        print(f"{split}: {new_targets.mean():.3f} of targets new; within-new recall@10 parallel "
              f"{within['parallel']:.4f}, dense {within['dense']:.4f}", flush=True)
        for weight in [0.0, *args.weights]:
            for offset in args.offsets:
                lifted = parallel + offset * new.float()
                scores = lifted if weight == 0 else (1 - weight) * lifted.softmax(-1) + weight * scorer.exp()
                row = {"weight": weight, "offset": offset,
                       **summary(*ranks_and_share(scores, targets, new), new_targets=new_targets)}
                rows["sweep"].append(row)
                print("  " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
        out[split] = rows
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
