"""Train and evaluate the SASRec (cross-entropy) baseline with gensid's leave-one-out protocol.

    .venv/bin/python benchmarks/sasrec.py --data ../shared/data/amazon-beauty --dataset beauty
    .venv/bin/python benchmarks/sasrec.py --data ../shared/data/amazon-beauty --dataset beauty-cold \
        --split cold_start --text-items      # the cold-start split; items tied to their text vectors

``--split cold_start`` builds gensid's cold-start split (``data.split: cold_start``, the newest
``--cold-share`` of the items never trained on) and adds the metrics of the new-item and the
seen-item targets (``metrics_new``, ``metrics_seen``). ``--text-items`` ties each item's embedding
to a projection of its text vector (method ``sasrec_text``), which can rank a new item.

It trains with ``gensid baseline sasrec`` (:func:`gensid.baselines.training.train_baseline`) on a
config made of these options, into ``--run-dir`` (default
``research/experiments/baselines/runs/sasrec-<dataset>-s<seed>/``), a baseline run folder, and
writes a ``valid`` and a ``test`` row (method ``sasrec``) to ``<results-dir>/<dataset>-rec.json``
(default ``research/results``), with RecBole's protocol (history items removed) beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

from gensid.baselines.training import train_baseline  # noqa: E402
from gensid.config import DataConfig, SASRecConfig, load_config  # noqa: E402
from gensid.eval.metrics import metrics_from_ranks, rank_of_targets  # noqa: E402
from gensid.report.results import upsert_row  # noqa: E402

KS = [1, 5, 10, 20]


def command_line() -> str:
    """The command as typed from the repository root."""
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else "python"
    if __spec__ is not None and __spec__.name == "benchmarks.sasrec":
        script = "-m benchmarks.sasrec"
    else:
        script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return " ".join([python, script, shlex.join(sys.argv[1:])]).strip()


def parse_args() -> argparse.Namespace:
    defaults = SASRecConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset folder or log file")
    p.add_argument("--dataset", required=True, help="short name for the results file (beauty, office)")
    p.add_argument("--max-minutes", type=float, default=defaults.max_minutes)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", type=int, default=defaults.hidden)
    p.add_argument("--layers", type=int, default=defaults.layers)
    p.add_argument("--heads", type=int, default=defaults.heads)
    p.add_argument("--max-len", type=int, default=DataConfig().max_history,
                   help="history length (data.max_history: the split's and SASRec's), e.g. 50 for RPG's protocol")
    p.add_argument("--dropout", type=float, default=defaults.dropout)
    p.add_argument("--attn-dropout", type=float, default=defaults.attn_dropout)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--max-epochs", type=int, default=defaults.epochs)
    p.add_argument("--patience", type=int, default=defaults.patience)
    p.add_argument("--split", choices=["leave_one_out", "cold_start"], default="leave_one_out",
                   help="gensid's data.split")
    p.add_argument("--cold-share", type=float, default=DataConfig().cold_share,
                   help="--split cold_start: the share of the items (the newest) never trained on")
    p.add_argument("--text-items", action="store_true",
                   help="item embedding = projection of the item's text vector + a free vector (method sasrec_text)")
    p.add_argument("--text-fields", nargs="+", default=DataConfig().text_fields, help="the item text (as data.text_fields)")
    p.add_argument("--text-model", default="all-MiniLM-L6-v2", help="the sentence encoder (as text.model)")
    p.add_argument("--variant", default=None, help="results 'variant' (default: from the sizes)")
    p.add_argument("--run-dir", default=None,
                   help="default research/experiments/baselines/runs/sasrec-<dataset>-s<seed> "
                        "(-h<max-len> when it is not 20)")
    p.add_argument("--results-dir", type=Path, default=ROOT / "research" / "results", help="folder of the results JSON")
    p.add_argument("--no-write", action="store_true", help="do not write the results rows")
    return p.parse_args()


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The options as ``--set`` overrides of the default config."""
    sasrec = {"hidden": args.hidden, "layers": args.layers, "heads": args.heads, "dropout": args.dropout,
              "attn_dropout": args.attn_dropout, "lr": args.lr, "batch_size": args.batch_size,
              "epochs": args.max_epochs, "patience": args.patience, "max_minutes": args.max_minutes,
              "text_items": args.text_items}
    return [f"name=sasrec-{args.dataset}", f"data.source={args.data}", f"data.max_history={args.max_len}",
            f"data.split={args.split}", f"data.cold_share={args.cold_share}",
            f"data.text_fields={json.dumps(args.text_fields)}", f"text.model={args.text_model}",
            f"train.seed={args.seed}", f"train.threads={args.threads}",
            *(f"baseline.sasrec.{key}={json.dumps(value)}" for key, value in sasrec.items())]


def main() -> None:
    args = parse_args()
    cfg = load_config(None, config_overrides(args))
    s = cfg.baseline.sasrec
    method = "sasrec_text" if s.text_items else "sasrec"
    variant = args.variant or (f"ce, hidden {s.hidden}, {s.layers} layers, {s.heads} heads, "
                               f"max_len {cfg.data.max_history}" + (", items = text projection + free vector"
                                                                    if s.text_items else ""))
    max_len = cfg.data.max_history
    run_dir = Path(args.run_dir or ROOT / "research" / "experiments" / "baselines" / "runs"
                   / f"{method}-{args.dataset}{'' if max_len == 20 else f'-h{max_len}'}-s{args.seed}")
    done = train_baseline("sasrec", cfg, run_dir)
    metrics, model = done.metrics, done.baseline.model

    command = command_line()
    print(f"\nbest epoch {metrics['best_epoch']} of {metrics['epochs']}, {metrics['train_minutes']:.1f} min")
    print(f"{'split':<6} {'protocol':<18}" + "".join(f"{m + '@' + str(k):>10}"
                                                 for k in KS for m in ("R", "N")))
    for name in ("valid", "test"):
        samples = done.task.samples(name)
        # RecBole's full-sort protocol (history items removed), for comparison only
        excluded = metrics_from_ranks(rank_of_targets(model.rank(samples, max(KS), exclude_history=True),
                                                      samples.targets), KS)
        subsets = {subset: metrics[f"{name}_{subset}"] for subset in ("new", "seen") if f"{name}_{subset}" in metrics}
        shown = [("gensid", metrics[name]), ("exclude history", excluded)]
        shown += [(f"{subset}-item targets", m) for subset, m in subsets.items()]
        for label, m in shown:
            print(f"{name:<6} {label:<18}" + "".join(
                f"{m[f'{key}@{k}']:>10.4f}" for k in KS for key in ("recall", "ndcg")))
        if not args.no_write:
            path = upsert_row(args.dataset, "rec", {
                "method": method, "variant": variant, "split": name, "seed": args.seed,
                "metrics": metrics[name], "train_minutes": round(metrics["train_minutes"], 2),
                "command": command, "best_epoch": metrics["best_epoch"], "metrics_exclude_history": excluded,
                **{f"metrics_{subset}": m for subset, m in subsets.items()},
            }, args.results_dir)
    if not args.no_write:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
