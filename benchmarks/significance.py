"""Paired per-user tests: the learned index (DGI) against its control, gensid against the baselines, hybrids.

    python benchmarks/significance.py                      # every comparison below
    python benchmarks/significance.py --only office-rec    # the ones whose name starts so

Each comparison pairs two run folders seed by seed and runs ``gensid compare`` on them: per
user the difference of hit@10 and ndcg@10, averaged over the seeds, a 95% bootstrap interval of
its mean and a randomization p-value; and a t-test of the per-seed differences
(``gensid.eval.significance``); and the same within each item-popularity bucket of the targets
(head -> tail; five tests per comparison, so expect one p < .05 in four comparisons by chance).
A side without ``{seed}`` is one run paired with every seed of the other (a baseline trained
once). The runs' ``test_ranks.json`` are in the repository (the baselines' in
``research/experiments/baselines/``, written by ``benchmarks/sasrec.py`` and
``benchmarks/search_baselines.py``), so this reproduces without the weights; a run without that
file is ranked again from its weights. Writes ``<results-dir>/significance.json`` (default
``research/results``) and prints two Markdown tables (all users; by popularity bucket). Run folders
are named from ``--experiments`` (default ``research/experiments``, from the repository root), as
the file records them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gensid.compare import compare_runs
from gensid.io import write_json

RESULTS = Path(__file__).resolve().parents[1] / "research" / "results"  # the default of --results-dir

METRICS = ["hit@10", "ndcg@10"]
SEEDS = ["1", "2", "3"]
# the learned index against the same training on fixed SIDs: (name, control, treatment[, seeds]),
# run folders under --experiments; both rows warm-start from the same bf16 source of a seed
LEARNED_INDEX = [
    ("office-rec warm start, index frozen after 2", "office-warm/runs/two_stage-continued_bf16-s{seed}",
     "office-warm/runs/dgi-warm_start_freeze_2_bf16-s{seed}"),
    ("office-rec warm start, index frozen after 3", "office-warm/runs/two_stage-continued_bf16-s{seed}",
     "office-warm/runs/dgi-warm_start_freeze_3_bf16-s{seed}", ["1", "2", "3", "4", "5"]),
    ("office-rec warm start, index frozen after 4", "office-warm/runs/two_stage-continued_bf16-s{seed}",
     "office-warm/runs/dgi-warm_start_freeze_4_bf16-s{seed}"),
    ("office-rec warm start, index frozen after 5", "office-warm/runs/two_stage-continued_bf16-s{seed}",
     "office-warm/runs/dgi-warm_start_freeze_5_bf16-s{seed}"),
    ("office-rec warm start, 8 epochs, index frozen after 5", "office-warm/runs/two_stage-continued_8_bf16-s{seed}",
     "office-warm/runs/dgi-warm_start_8_freeze_5_bf16-s{seed}"),
    ("office-rec warm start, hard residual, codebooks 1e-6", "office-warm/runs/two_stage-continued_bf16-s{seed}",
     "office-warm/runs/dgi-warm_start_freeze_3_hard_residual_lr_1e-6_bf16-s{seed}"),
    ("office-rec warm start, index frozen after 3, codes-only history",
     "office-codes-only/runs/two_stage-codes_history_continued_bf16-s{seed}",
     "office-codes-only/runs/dgi-codes_history_warm_start_freeze_3_bf16-s{seed}"),
    ("beauty-rec warm start, hard residual, codebooks 1e-6", "beauty-warm/runs/two_stage-continued_3_bf16-s{seed}",
     "beauty-warm/runs/dgi-warm_start_freeze_1_hard_residual_lr_1e-6_bf16-s{seed}"),
    ("beauty-rec warm start, hard residual, codebooks 1e-6, no InfoNCE",
     "beauty-warm/runs/two_stage-continued_3_bf16-s{seed}",
     "beauty-warm/runs/dgi-warm_start_freeze_1_hard_residual_lr_1e-6_no_infonce_bf16-s{seed}"),
    ("beauty-search warm start, hard residual", "beauty-search/runs/two_stage-continued_4_bf16-s{seed}",
     "beauty-search/runs/dgi-warm_start_freeze_2_hard_residual_bf16-s{seed}", ["1", "2", "3", "4"]),
    ("beauty-search warm start, hard residual, no InfoNCE", "beauty-search/runs/two_stage-continued_4_bf16-s{seed}",
     "beauty-search/runs/dgi-warm_start_freeze_2_hard_residual_no_infonce_bf16-s{seed}", ["1", "2"]),
    ("beauty-search warm start, hard residual: InfoNCE .1 against none",
     "beauty-search/runs/dgi-warm_start_freeze_2_hard_residual_no_infonce_bf16-s{seed}",
     "beauty-search/runs/dgi-warm_start_freeze_2_hard_residual_bf16-s{seed}", ["1", "2"]),
    ("office-search warm start, hard residual", "office-search/runs/two_stage-continued_4_bf16-s{seed}",
     "office-search/runs/dgi-warm_start_freeze_2_hard_residual_bf16-s{seed}"),
    ("office-search warm start, hard residual, no InfoNCE", "office-search/runs/two_stage-continued_4_bf16-s{seed}",
     "office-search/runs/dgi-warm_start_freeze_2_hard_residual_no_infonce_bf16-s{seed}"),
    ("office-search warm start, hard residual: InfoNCE .1 against none",
     "office-search/runs/dgi-warm_start_freeze_2_hard_residual_no_infonce_bf16-s{seed}",
     "office-search/runs/dgi-warm_start_freeze_2_hard_residual_bf16-s{seed}"),
    ("office-search DGI from scratch", "office-search/runs/two_stage-bf16_schedule_8-s{seed}",
     "office-search/runs/dgi-full_bf16_schedule_8-s{seed}"),
    # the learned index apart from learning it (quantizer.sids_from): a fresh two-stage model on DGI's
    # final index against the same model on the index DGI started from (or on RQ-KMeans, + 4 epochs)
    ("beauty-rec learned index against its initial index", "beauty-best/runs/two_stage-pca_index_bf16-s{seed}",
     "beauty-best/runs/two_stage-dgi_index_bf16-s{seed}"),
    ("office-search learned index against its initial index",
     "office-search/runs/two_stage-pca_index_bf16_schedule_8-s{seed}",
     "office-search/runs/two_stage-dgi_index_bf16_schedule_8-s{seed}"),
    ("office-search learned index + 4 epochs against RQ-KMeans + 4 epochs",
     "office-search/runs/two_stage-continued_4_bf16-s{seed}",
     "office-search/runs/two_stage-dgi_index_continued_4_bf16-s{seed}"),
]
# gensid's rows against the baselines (control = the baseline); SASRec has seeds 1-3 on both sets, each paired
# with gensid's seed of the same number; BM25 and dense (frozen or fine-tuned text encoder) one run each
BASELINES = [
    ("office-rec two-stage 14 epochs against SASRec", "baselines/runs/sasrec-office-s{seed}",
     "office-best/runs/two_stage-bf16-s{seed}"),
    ("office-rec DGI frozen after 3 against SASRec", "baselines/runs/sasrec-office-s{seed}",
     "office-warm/runs/dgi-warm_start_freeze_3_bf16-s{seed}"),
    ("beauty-rec two-stage 14 epochs against SASRec", "baselines/runs/sasrec-beauty-s{seed}",
     "beauty-best/runs/two_stage-bf16-s{seed}"),
    ("beauty-rec DGI hard residual against SASRec", "baselines/runs/sasrec-beauty-s{seed}",
     "beauty-warm/runs/dgi-warm_start_freeze_1_hard_residual_lr_1e-6_bf16-s{seed}"),
    ("beauty-search two-stage 12 epochs against dense", "baselines/runs/dense-beauty-search-s0",
     "beauty-search/runs/two_stage-continued_4_bf16-s{seed}"),
    ("beauty-search DGI hard residual against dense", "baselines/runs/dense-beauty-search-s0",
     "beauty-search/runs/dgi-warm_start_freeze_2_hard_residual_bf16-s{seed}"),
    ("beauty-search DGI hard residual against BM25", "baselines/runs/bm25-beauty-search-s0",
     "beauty-search/runs/dgi-warm_start_freeze_2_hard_residual_bf16-s{seed}"),
    ("office-search two-stage 8 epochs against dense", "baselines/runs/dense-office-search-s0",
     "office-search/runs/two_stage-bf16_schedule_8-s{seed}"),
    ("office-search two-stage 12 epochs against dense", "baselines/runs/dense-office-search-s0",
     "office-search/runs/two_stage-continued_4_bf16-s{seed}"),
    ("office-search DGI hard residual against dense", "baselines/runs/dense-office-search-s0",
     "office-search/runs/dgi-warm_start_freeze_2_hard_residual_bf16-s{seed}"),
    ("office-search two-stage 8 epochs against fine-tuned dense", "baselines/runs/dense_finetuned_text-office-search-s0",
     "office-search/runs/two_stage-bf16_schedule_8-s{seed}"),
    ("office-search two-stage 12 epochs against fine-tuned dense", "baselines/runs/dense_finetuned_text-office-search-s0",
     "office-search/runs/two_stage-continued_4_bf16-s{seed}"),
    ("office-search DGI hard residual against fine-tuned dense", "baselines/runs/dense_finetuned_text-office-search-s0",
     "office-search/runs/dgi-warm_start_freeze_2_hard_residual_bf16-s{seed}"),
    ("office-search DGI hard residual against BM25", "baselines/runs/bm25-office-search-s0",
     "office-search/runs/dgi-warm_start_freeze_2_hard_residual_bf16-s{seed}"),
]
# hybrids (benchmarks/fusion.py, research/experiments/hybrid/runs/<experiment>-<run>+<scorer>) against each of their two parts,
# and the DGI hybrid against the two-stage hybrid. A search hybrid's dense encoder is trained with the run's
# seed, so it is compared with the dense baseline row (seed 0); a rec hybrid mixes in the SASRec of its seed.
_DGI = {"beauty-search": "beauty-search/runs/dgi-warm_start_freeze_2_hard_residual_bf16-s{seed}",
        "office-search": "office-search/runs/dgi-warm_start_freeze_2_hard_residual_bf16-s{seed}",
        "beauty-rec": "beauty-warm/runs/dgi-warm_start_freeze_1_hard_residual_lr_1e-6_bf16-s{seed}",
        "office-rec": "office-warm/runs/dgi-warm_start_freeze_3_bf16-s{seed}"}
_TWO_STAGE = {"beauty-search": "beauty-search/runs/two_stage-continued_4_bf16-s{seed}",
              "office-search": "office-search/runs/two_stage-continued_4_bf16-s{seed}",
              "beauty-rec": "beauty-warm/runs/two_stage-continued_3_bf16-s{seed}",
              "office-rec": "office-warm/runs/two_stage-continued_bf16-s{seed}"}
_SCORER = {"beauty-search": ("dense", "baselines/runs/dense-beauty-search-s0"),
           "office-search": ("dense", "baselines/runs/dense-office-search-s0"),
           "beauty-rec": ("sasrec", "baselines/runs/sasrec-beauty-s{seed}"),
           "office-rec": ("sasrec", "baselines/runs/sasrec-office-s{seed}")}


def _hybrid(run: str, scorer: str) -> str:
    experiment, _, name = run.split("/")
    return f"hybrid/runs/{experiment}-{name}+{scorer}"


HYBRID = [row for task, (scorer, baseline) in _SCORER.items() for row in (
    (f"{task} DGI + {scorer} against DGI", _DGI[task], _hybrid(_DGI[task], scorer)),
    (f"{task} DGI + {scorer} against {scorer}", baseline, _hybrid(_DGI[task], scorer)),
    (f"{task} DGI + {scorer} against two-stage + {scorer}", _hybrid(_TWO_STAGE[task], scorer),
     _hybrid(_DGI[task], scorer)))]


def markdown(results: dict[str, dict]) -> str:
    lines = ["| comparison (treatment - control) | users | metric | control | treatment | difference "
             "| 95% interval | p (users) | p (seeds) | per seed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        for metric, r in result["metrics"].items():
            pooled = r["pooled"]
            lines.append(f"| {name} | {result['test_users']} | {metric} | {r['control']:.4f} | {r['treatment']:.4f} "
                         f"| {pooled['mean']:+.4f} | {pooled['ci_low']:+.4f} .. {pooled['ci_high']:+.4f} "
                         f"| {pooled['p_value']:.3f} | {r['across_pairs']['p_value']:.3f} | " + ", ".join(f"{p['mean']:+.4f}" for p in r["pairs"]) + " |")
    return "\n".join(lines)


def markdown_by_popularity(results: dict[str, dict], metric: str = "hit@10") -> str:
    """One row per comparison: the difference in ``metric`` within each item-popularity bucket of
    the targets, head -> tail, with its p (users) and the bucket's test users."""
    buckets = max(len(r.get("by_popularity", [])) for r in results.values())
    lines = [f"| comparison ({metric}, treatment - control) | " + " | ".join(
        ["head"] + [str(b) for b in range(1, buckets - 1)] + ["tail"]) + " |", "|---" * (buckets + 1) + "|"]
    for name, result in results.items():
        cells = [f"{b['metrics'][metric]['pooled']['mean']:+.4f} ({b['metrics'][metric]['pooled']['p_value']:.3f}; "
                 f"{b['test_users']})" for b in result.get("by_popularity", [])]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the comparisons whose name starts with this")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--experiments", default="research/experiments", help="folder of the experiments' run folders")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="folder of the results JSON")
    args = parser.parse_args()
    results = {}
    for name, control, treatment, *seeds in LEARNED_INDEX + BASELINES + HYBRID:
        if name.startswith(args.only):
            print(f"{name} ...", file=sys.stderr)
            results[name] = compare_runs(f"{args.experiments}/{control}", f"{args.experiments}/{treatment}",
                                         seeds[0] if seeds else SEEDS, METRICS, args.resamples, progress=True,
                                         by_popularity=True)
    out = args.results_dir / "significance.json"
    saved = json.loads(out.read_text())["comparisons"] if out.exists() else {}
    saved.update(results)  # --only refreshes its rows and keeps the others
    order = [name for name, *_ in LEARNED_INDEX + BASELINES + HYBRID if name in saved]
    write_json(out, {"command": "python benchmarks/significance.py",
                     "comparisons": {name: saved[name] for name in order}})
    print(markdown({name: saved[name] for name in order}))
    print()
    print(markdown_by_popularity({name: saved[name] for name in order}))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
