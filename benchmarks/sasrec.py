"""Train and evaluate the SASRec (cross-entropy) baseline with gensid's leave-one-out protocol.

    .venv/bin/python benchmarks/sasrec.py --data ../shared/data/amazon-beauty --dataset beauty
    .venv/bin/python benchmarks/sasrec.py --data ../shared/data/amazon-beauty --dataset beauty-cold \
        --split cold_start --text-items      # the cold-start split; items tied to their text vectors

``--split cold_start`` builds gensid's cold-start split (``data.split: cold_start``, the newest
``--cold-share`` of the items never trained on) and adds the metrics of the new-item and the
seen-item targets (``metrics_new``, ``metrics_seen``). ``--text-items`` ties each item's embedding
to a projection of its text vector (method ``sasrec_text``), which can rank a new item.

Writes a ``valid`` and a ``test`` row (method ``sasrec``) to
``<results-dir>/<dataset>-rec.json`` (default ``research/results``); the training log, the best
weights and the per-user test ranks (``test_ranks.json``, for ``gensid compare``) go to
``--run-dir`` (default ``research/experiments/baselines/runs/sasrec-<dataset>-s<seed>/``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gensid.baselines.sasrec import SASRecConfig, evaluate, fit  # noqa: E402
from gensid.config import DataConfig  # noqa: E402
from gensid.data import load_dataset  # noqa: E402
from gensid.data.splits import next_item_split, training_sequences  # noqa: E402
from gensid.eval.metrics import metrics_from_ranks, new_and_seen, rank_of_targets  # noqa: E402
from gensid.io import JsonlLog  # noqa: E402
from gensid.pipeline import save_test_ranks  # noqa: E402
from gensid.report.results import upsert_row  # noqa: E402
from gensid.text import embed_texts  # noqa: E402

KS = [1, 5, 10, 20]


def command_line() -> str:
    """The command as typed from the repository root."""
    python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) else "python"
    if __spec__ is not None and __spec__.name == "benchmarks.sasrec":
        script = "-m benchmarks.sasrec"
    else:
        script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    return " ".join([python, script, shlex.join(sys.argv[1:])]).strip()


def main() -> None:
    defaults = SASRecConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset folder or log file")
    p.add_argument("--dataset", required=True, help="short name for the results file (beauty, office)")
    p.add_argument("--max-minutes", type=float, default=defaults.max_minutes)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--hidden", type=int, default=defaults.hidden)
    p.add_argument("--layers", type=int, default=defaults.layers)
    p.add_argument("--heads", type=int, default=defaults.heads)
    p.add_argument("--max-len", type=int, default=defaults.max_len,
                   help="history length (the split's max_history too), e.g. 50 for RPG's protocol")
    p.add_argument("--dropout", type=float, default=defaults.dropout)
    p.add_argument("--attn-dropout", type=float, default=defaults.attn_dropout)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
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
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    cfg = SASRecConfig(hidden=args.hidden, layers=args.layers, heads=args.heads, max_len=args.max_len,
                       dropout=args.dropout, attn_dropout=args.attn_dropout, lr=args.lr,
                       batch_size=args.batch_size, max_epochs=args.max_epochs, patience=args.patience,
                       max_minutes=args.max_minutes, seed=args.seed, text_items=args.text_items)
    method = "sasrec_text" if cfg.text_items else "sasrec"
    variant = args.variant or (f"ce, hidden {cfg.hidden}, {cfg.layers} layers, {cfg.heads} heads, "
                               f"max_len {cfg.max_len}" + (", items = text projection + free vector"
                                                           if cfg.text_items else ""))
    run_dir = Path(args.run_dir or ROOT / "research" / "experiments" / "baselines" / "runs"
                   / f"{method}-{args.dataset}{'' if cfg.max_len == 20 else f'-h{cfg.max_len}'}-s{cfg.seed}")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = JsonlLog(run_dir / "log.jsonl")

    data = load_dataset(args.data, "auto", args.text_fields)
    num_items = len(data.catalog)
    split = next_item_split(data.interactions, num_items, args.max_len, args.split, args.cold_share)  # the history SASRec reads
    cold = split.cold_items
    print(f"{data.name}: {len(data.interactions)} users, {num_items} items, "
          f"{len(split.valid)} valid / {len(split.test)} test samples"
          + (f"; {len(cold)} new items, {split.new_targets(split.test).sum()} new test targets"
             if cold is not None else ""), flush=True)
    item_text = torch.from_numpy(embed_texts(data.catalog.texts, args.text_model)) if cfg.text_items else None

    result = fit(training_sequences(data.interactions, cold), split.valid, num_items, cfg, log=log,
                 cold_items=cold, item_text=item_text)
    result.model.save(run_dir / "model.safetensors", best_epoch=result.best_epoch)

    command = command_line()
    print(f"\nbest epoch {result.best_epoch} of {result.epochs}, {result.train_minutes:.1f} min")
    print(f"{'split':<6} {'protocol':<18}" + "".join(f"{m + '@' + str(k):>10}"
                                                 for k in KS for m in ("R", "N")))
    for name, samples in (("valid", split.valid), ("test", split.test)):
        ranks = rank_of_targets(result.model.rank(samples, max(KS)), samples.targets)
        metrics = metrics_from_ranks(ranks, KS)
        excluded = evaluate(result.model, samples, KS, exclude_history=True)
        subsets = new_and_seen(ranks, split.new_targets(samples), KS) if cold is not None else {}
        shown = [("gensid", metrics), ("exclude history", excluded)]
        shown += [(f"{subset}-item targets", m) for subset, m in subsets.items()]
        for label, m in shown:
            print(f"{name:<6} {label:<18}" + "".join(
                f"{m[f'{key}@{k}']:>10.4f}" for k in KS for key in ("recall", "ndcg")))
        log.write(event="eval", split=name, metrics=metrics, metrics_exclude_history=excluded,
                  **{f"metrics_{subset}": m for subset, m in subsets.items()})
        if name == "test":
            save_test_ranks(run_dir, samples, ranks, max(KS), split.new_targets(samples))
        if not args.no_write:
            path = upsert_row(args.dataset, "rec", {
                "method": method, "variant": variant, "split": name, "seed": cfg.seed,
                "metrics": metrics, "train_minutes": round(result.train_minutes, 2),
                "command": command, "best_epoch": result.best_epoch,
                # RecBole's full-sort protocol (history items removed), for comparison only.
                "metrics_exclude_history": excluded,
                **{f"metrics_{subset}": m for subset, m in subsets.items()},
            }, args.results_dir)
    if not args.no_write:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
