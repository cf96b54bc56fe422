"""Train + evaluate the two-stage pipeline on a data set and record it in the results JSON.

    python benchmarks/two_stage.py configs/beauty.yaml --dataset beauty [--set train.seed=1]

Writes rows for ``two_stage`` and ``most_popular`` (valid and test) into
``<results-dir>/<dataset>-rec.json`` (default ``research/results``). The run directory is resumable.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from gensid.config import load_config
from gensid.pipeline import train_run
from gensid.report.results import run_rows, upsert_rows

RESULTS = Path(__file__).resolve().parents[1] / "research" / "results"  # the default of --results-dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--dataset", required=True, help="name in the results file, e.g. beauty")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--variant", default="", help="free text describing the configuration")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="folder of the results JSON")
    args = parser.parse_args()

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir or f"runs/{cfg.name}-seed{cfg.train.seed}")
    metrics = train_run(cfg, run_dir)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    m = cfg.model
    variant = args.variant or (f"{cfg.quantizer.method} {cfg.quantizer.codebook_sizes}+dedup, "
                               f"{m.encoder_layers}+{m.decoder_layers} layers d{m.d_model}, "
                               f"history {m.history_input}, {m.logits} logits")
    popular = [{"method": "most_popular", "variant": "training interaction counts", "split": split, "seed": 0,
                "metrics": metrics["most_popular"][split], "train_minutes": 0.0, "command": command}
               for split in ("valid", "test")]
    upsert_rows(args.results_dir / f"{args.dataset}-rec.json",
                run_rows("two_stage", variant, cfg.train.seed, metrics, run_dir, command) + popular)
    t = metrics["test"]
    print(f"{args.dataset} two_stage test: R@5 {t['recall@5']:.4f} R@10 {t['recall@10']:.4f} "
          f"N@5 {t['ndcg@5']:.4f} N@10 {t['ndcg@10']:.4f} ({metrics['train_minutes']:.1f} train min)")


if __name__ == "__main__":
    main()
