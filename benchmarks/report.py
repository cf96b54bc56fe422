"""Print the Markdown results tables of research/RESULTS.md from ``research/results/*.json`` (and draw
the hybrids' popularity plots, ``research/results/hybrid_popularity_*.png``); ``--results-dir``
reads (and draws into) another folder.

    python benchmarks/report.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

from gensid.report import plots
from gensid.report.results import epochs_cell, mean_std

RESULTS = Path(__file__).resolve().parents[1] / "research" / "results"  # the default of --results-dir
REC_COLUMNS = {"recall@5": "R@5", "recall@10": "R@10", "ndcg@5": "N@5", "ndcg@10": "N@10"}
SEARCH_COLUMNS = {"hit@1": "H@1", "hit@5": "H@5", "hit@10": "H@10", "hit@20": "H@20", "ndcg@5": "N@5",
                  "ndcg@10": "N@10", "ndcg@20": "N@20"}


def quality_table(path: Path, split: str = "test") -> str:
    """One row per (method, variant): the mean ± sample std over its seeds."""
    columns = SEARCH_COLUMNS if path.stem.endswith("-search") else REC_COLUMNS
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in json.loads(path.read_text()):
        if r["split"] == split:
            groups.setdefault((r["method"], r["variant"]), []).append(r)
    lines = [f"**{path.stem}** ({split}; mean ± std over seeds)", "",
             "| method | variant | seeds | " + " | ".join(columns.values()) + " | train min | epochs |",
             "|---|---|---|" + "---|" * (len(columns) + 2)]
    for (method, variant), rows in sorted(groups.items(), key=lambda g: -mean(r["metrics"]["ndcg@10"] for r in g[1])):
        cells = " | ".join(mean_std([r["metrics"][c] for r in rows]) for c in columns)
        minutes = mean(r["train_minutes"] for r in rows)
        lines.append(f"| {method} | {variant} | {len(rows)} | {cells} | {minutes:.1f} | {epochs_cell(rows)} |")
    return "\n".join(lines)


def speed_table(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = ["**speed**", "", "| comparison | gensid | transformers | ratio |", "|---|---|---|---|"]
    train = data["train_samples_per_s"]
    lines.append(f"| training samples/s (gensid length-bucketed, T5 random batches) | "
                 f"{train['gensid_bucketed']:.4g} | {train['hf_t5']:.4g} | {train['ratio']:.2f}x |")
    lines.append(f"| training samples/s (both length-bucketed) | {train['gensid_bucketed']:.4g} | "
                 f"{train['hf_t5_bucketed']:.4g} | {train['ratio_both_bucketed']:.2f}x |")
    if "gensid_bucketed_bf16" in train:
        lines.append(f"| training samples/s (both length-bucketed, bf16 autocast) | "
                     f"{train['gensid_bucketed_bf16']:.4g} | {train['hf_t5_bucketed_bf16']:.4g} | "
                     f"{train['ratio_both_bucketed_bf16']:.2f}x |")
    beam = data["beam20_users_per_s_batch256"]
    lines.append(f"| beam 20, users/s at batch 256 | {beam['gensid']:.4g} | {beam['hf_generate']:.4g} | "
                 f"{beam['ratio']:.2f}x |")
    latency = data["beam20_latency_ms_batch1"]
    lines.append(f"| beam 20, median ms at batch 1 (lower is better) | {latency['gensid_median']:.4g} | "
                 f"{latency['hf_generate_median']:.4g} | {latency['ratio']:.2f}x |")
    return "\n".join(lines)


def search_latency_table(data: dict) -> str:
    """Per-search latency of generative search by stage and of dense exact search (search_latency.py)."""
    ms, rate = data["batch1_ms"], data["batch256_searches_per_s"]
    lines = [f"**search latency** (Beauty, {data['catalog_items']} items, beam {data['beam']}, "
             f"{data['threads']} thread)", "",
             "| stage | median ms (batch 1) | p95 ms (batch 1) |", "|---|---|---|"]
    for stage in ("context_encoding", "generative_search", "geometric_verification", "gensid_total", "hybrid_mixing",
                  "hybrid_total", "dense_exact"):
        if stage in ms:  # the hybrid stages were added later
            lines.append(f"| {stage.replace('_', ' ')} | {ms[stage]['median']:.2f} | {ms[stage]['p95']:.2f} |")
    lines.append("| searches/s at batch 256 | " + " | ".join(f"{name.replace('_exact', '')} {rate[name]:.0f}"
                                                        for name in ("gensid", "hybrid", "dense_exact") if name in rate) + " |")
    return "\n".join(lines)


def hybrid_table(entries: dict) -> str:
    """The hybrids of fusion.json: the run alone, the scorer alone and their mixture, each from one
    beam search of the same run (benchmarks/fusion.py); mean ± std over seeds, and hit@10 on the head
    and tail buckets of item popularity."""
    groups: dict[tuple, list[dict]] = {}
    for e in entries.values():
        groups.setdefault((e["dataset"], e["task"], Path(e["run_dir"]).name.rpartition("-s")[0]), []).append(e)
    lines = ["**hybrids** (test; mean ± std over seeds; head / tail: hit@10 on the most / least popular "
             "fifth of the training interactions)", "",
             "| data | gensid run | seeds | w (valid) | gensid @10 | scorer @10 | hybrid @10 "
             "| head: gensid / scorer / hybrid | tail: gensid / scorer / hybrid |", "|---|---|---|---|---|---|---|---|---|"]
    for (dataset, task, variant), rows in sorted(groups.items()):
        scorer = next(name for name in rows[0]["test"] if name not in ("gensid", "hybrid"))
        hit = "hit@10" if task == "search" else "recall@10"
        cells = [" / ".join(mean_std([r["test"][name][m] for r in rows]) for m in (hit, "ndcg@10"))
                 for name in ("gensid", scorer, "hybrid")]
        buckets = [" / ".join(f"{mean(r['test_by_popularity'][name][b]['hit@10'] for r in rows):.3f}"
                              for name in ("gensid", scorer, "hybrid")) for b in (0, -1)]
        weights = ", ".join(f"{r['weight']:g}" for r in sorted(rows, key=lambda r: r["run_dir"]))
        lines.append(f"| {dataset}-{task} | {variant} + {scorer} | {len(rows)} | {weights} | {cells[0]} | {cells[1]} "
                     f"| {cells[2]} | {buckets[0]} | {buckets[1]} |")
    return "\n".join(lines)


def hybrid_plots(entries: dict, results: Path = RESULTS) -> list[Path]:
    """One bar chart per data set and task: hit@10 by item-popularity bucket of the DGI run alone,
    its scorer alone, the DGI hybrid and the two-stage hybrid (means over seeds), written to
    ``<results>/hybrid_popularity_<dataset>-<task>.png``."""
    by_task: dict[tuple[str, str], dict[str, list[list[float]]]] = {}
    for e in entries.values():
        scorer = next(name for name in e["test"] if name not in ("gensid", "hybrid"))
        method = Path(e["run_dir"]).name.split("-")[0]  # dgi or two_stage
        series = by_task.setdefault((e["dataset"], e["task"]), {})
        names = {"hybrid": f"{method} + {scorer}"}
        if method == "dgi":
            names |= {"gensid": "dgi alone", scorer: f"{scorer} alone"}
        for name, label in names.items():
            series.setdefault(label, []).append([b["hit@10"] for b in e["test_by_popularity"][name]])
    paths = []
    for (dataset, task), series in sorted(by_task.items()):
        order = sorted(series, key=lambda label: ("alone" not in label, label.startswith("two_stage"), label))
        values = {label: [mean(col) for col in zip(*series[label], strict=True)] for label in order}
        paths.append(plots.buckets(values, "test hit@10", f"{dataset} {task}: hybrids by item popularity",
                                   results / f"hybrid_popularity_{dataset}-{task}.png"))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="folder of the results JSON")
    results = parser.parse_args().results_dir
    for path in sorted([*results.glob("*-rec.json"), *results.glob("*-search.json")]):
        print(quality_table(path) + "\n")
    if (results / "speed.json").exists():
        print(speed_table(results / "speed.json") + "\n")
    if (results / "fusion.json").exists():
        hybrids = json.loads((results / "fusion.json").read_text())
        print(hybrid_table(hybrids) + "\n")
        hybrid_plots(hybrids, results)
    if (results / "search_latency.json").exists():
        print(search_latency_table(json.loads((results / "search_latency.json").read_text())))


if __name__ == "__main__":
    main()
