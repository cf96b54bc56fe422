"""Print the Markdown results tables of the README from ``benchmarks/results/*.json``.

    python benchmarks/report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ["recall@5", "recall@10", "ndcg@5", "ndcg@10"]


def quality_table(path: Path, split: str = "test") -> str:
    rows = [r for r in json.loads(path.read_text()) if r["split"] == split]
    lines = [f"**{path.stem}** ({split})", "",
             "| method | variant | seed | R@5 | R@10 | N@5 | N@10 | train min |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["metrics"]["ndcg@10"]):
        cells = " | ".join(f"{r['metrics'][c]:.4f}" for c in COLUMNS)
        lines.append(f"| {r['method']} | {r['variant']} | {r['seed']} | {cells} | {r['train_minutes']:.1f} |")
    return "\n".join(lines)


def speed_table(path: Path) -> str:
    data = json.loads(path.read_text())
    lines = ["**speed**", "", "| comparison | gensid | transformers | ratio |", "|---|---|---|---|"]
    for key, value in data.items():
        if isinstance(value, dict) and "ratio" in value:
            ours = next(v for k, v in value.items() if k.startswith("gensid"))
            theirs = next(v for k, v in value.items() if k.startswith("hf"))
            lines.append(f"| {key} | {ours:.4g} | {theirs:.4g} | {value['ratio']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    for path in sorted(RESULTS.glob("*-rec.json")):
        print(quality_table(path) + "\n")
    if (RESULTS / "speed.json").exists():
        print(speed_table(RESULTS / "speed.json"))


if __name__ == "__main__":
    main()
