"""Full-catalog ranking speed: parallel SIDs (exact scoring of every item) against the two-stage
model's trie-constrained beam search (beam 20) and SASRec's full-catalog matmul, in one run.

Same test users, same threads, interleaved (one batch of each in turn), so that a concurrent
load hits all three alike. Models keep random weights: ranking cost does not depend on training.
The parallel models score against an item table built once per catalog, as a served run does.
Architectures are the Beauty presets: ``configs/beauty-parallel-shared.yaml`` (parallel, shared head;
``parallel_exact``) and ``configs/beauty-parallel.yaml`` (RPG's digit heads), the default
two-stage model (RQ-KMeans 3 x 256 + disambiguation code, one token per history item) and
SASRec-CE (hidden 64, 2 layers). The parallel model's digits come from plain PQ (the OPQ rotation
changes which digits, not how many, so the cost is the same and the fit is 10x faster).

    .venv/bin/python benchmarks/ranking_speed.py --threads 2

Writes ``full_ranking_users_per_s_batch256`` and ``full_ranking_latency_ms_batch1`` into
``--out`` (default research/results/speed.json; other keys of the file are kept).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.speed import load_inputs, machine, other_load, watch_machine  # noqa: E402
from gensid.baselines.sasrec import SASRec  # noqa: E402
from gensid.config import ModelConfig, load_config  # noqa: E402
from gensid.data import Samples  # noqa: E402
from gensid.eval.evaluate import rank_exact  # noqa: E402
from gensid.index import SIDIndex, constrained_beam_search  # noqa: E402
from gensid.io import write_json  # noqa: E402
from gensid.model import GenerativeRecommender  # noqa: E402
from gensid.model.parallel import ParallelSIDRecommender  # noqa: E402
from gensid.quantize.product import ProductQuantizer  # noqa: E402
from gensid.report.results import git_commit  # noqa: E402
from gensid.text import embed_texts  # noqa: E402
from gensid.train.batches import Batch, ItemFeatures  # noqa: E402


def rankers(dataset, sids, max_history: int, seed: int) -> dict:
    """name -> rank(samples [n users]) -> [n, 20] item ids, for the three models."""
    torch.manual_seed(seed)
    rpg, shared = (load_config(ROOT / "configs" / name) for name in ("beauty-parallel.yaml",
                                                                    "beauty-parallel-shared.yaml"))
    p = rpg.parallel
    vectors = embed_texts(dataset.catalog.texts, progress=False)
    digits = ProductQuantizer.fit(vectors, p.digits, p.codebook_size, opq=False).encode(vectors)
    digit_items = ItemFeatures(torch.from_numpy(digits))
    n = len(dataset.catalog)
    parallel = {name: ParallelSIDRecommender(p.digits, p.codebook_size, c.model, c.parallel, max_history,
                                             num_items=n).eval() for name, c in (("rpg", rpg), ("shared", shared))}
    generative = GenerativeRecommender(sids.sizes, ModelConfig(), max_history).eval()
    index, sid_items = SIDIndex(sids.codes, sids.sizes), ItemFeatures(torch.from_numpy(sids.codes))
    sasrec = SASRec(len(dataset.catalog)).eval()

    def beam(samples: Samples) -> np.ndarray:
        batch = Batch.build(samples, slice(None), sid_items)
        with torch.no_grad():
            return constrained_beam_search(generative, index, batch.history_codes, batch.history_mask, 20).items

    # the item table is built once per catalog, as a served run keeps it (Run.item_table)
    ids = torch.arange(n)
    with torch.no_grad():
        tables = {name: model.item_table(digit_items.codes, ids) for name, model in parallel.items()}
    return {"parallel_exact": lambda s: rank_exact(parallel["shared"], s, digit_items, 20, batch_size=len(s),
                                                   table=tables["shared"]),
            "parallel_rpg_heads_exact": lambda s: rank_exact(parallel["rpg"], s, digit_items, 20, batch_size=len(s),
                                                             table=tables["rpg"]),
            "two_stage_beam20": beam,
            "sasrec": lambda s: sasrec.rank(s, 20, batch_size=len(s))}


def measure(rank: dict, test: Samples, users: int, latency_users: int, batch_size: int, seed: int) -> dict:
    order = np.random.default_rng(seed).permutation(len(test))
    big = [order[i:i + batch_size] for i in range(0, min(users, len(test)), batch_size)]
    single = order[:latency_users]

    def rows(r: np.ndarray) -> Samples:
        return Samples(test.histories[r], test.targets[r], test.users[r])

    for fn in rank.values():  # warm-up, not timed
        fn(rows(big[0][:8]))
    seconds = dict.fromkeys(rank, 0.0)
    latency: dict[str, list[float]] = {name: [] for name in rank}
    for r in big:
        watch_machine()
        for name, fn in rank.items():
            start = time.perf_counter()
            fn(rows(r))
            seconds[name] += time.perf_counter() - start
    for i in single:
        for name, fn in rank.items():
            start = time.perf_counter()
            fn(rows(np.array([i])))
            latency[name].append(1000 * (time.perf_counter() - start))
    n = sum(len(r) for r in big)
    per_s = {name: n / s for name, s in seconds.items()}
    median = {name: float(np.median(v)) for name, v in latency.items()}
    return {
        "full_ranking_users_per_s_batch256": {**per_s, "ratio": per_s["parallel_exact"] / per_s["two_stage_beam20"],
                                              "ratio_vs_sasrec": per_s["parallel_exact"] / per_s["sasrec"],
                                              "users": n, "batch_size": batch_size},
        "full_ranking_latency_ms_batch1": {**median, "ratio": median["two_stage_beam20"] / median["parallel_exact"],
                                           "users": len(single), "statistic": "median"},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--users", type=int, default=2048, help="test users ranked at batch --batch-size")
    p.add_argument("--latency-users", type=int, default=100, help="single users for the batch-1 latency")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--data", default="auto", help="data folder; auto = ../shared/data/amazon-beauty, "
                   "else movielens-100k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "research" / "results" / "speed.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = other_load()
    data, dataset, splits, sids, _ = load_inputs(args.data, 20, args.seed)
    print(f"data {data}: {len(dataset.catalog)} items, {len(splits.test)} test users", flush=True)
    result = measure(rankers(dataset, sids, 20, args.seed), splits.test, args.users, args.latency_users,
                     args.batch_size, args.seed)
    result["full_ranking_machine"] = {"machine": machine(), "threads": args.threads, "data": data,
                                      "load_before": load_before, "load_after": other_load(),
                                      "command": "python benchmarks/ranking_speed.py " + shlex.join(sys.argv[1:]),
                                      "commit": git_commit()}
    out = Path(args.out)
    existing = json.loads(out.read_text()) if out.exists() else {}
    write_json(out, {**existing, **result})
    print(json.dumps({k: v for k, v in result.items() if k != "full_ranking_machine"}, indent=1))
    return result


if __name__ == "__main__":
    main()
