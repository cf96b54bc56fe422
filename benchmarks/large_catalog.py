"""Top-k for catalogs too large to score exactly: faiss inverted lists over the item vectors against exact scoring.

A trained parallel-SID run with the shared head (``--run-dir``, weights needed) gives real user
states (its test users) and real item vectors. The catalog is then grown to each ``--sizes``
with synthetic items: random digits drawn from each digit's code frequencies among the real
items, scored by their digits alone (as an item added after training is). For each size, in
one run: exact top-10 (:func:`gensid.model.parallel.top_items`, chunked) and
:class:`gensid.index.item_search.ItemVectorSearch` at each ``--probes``: users/s at batch 256,
median ms at batch 1, index build seconds, and recall@10 against the exact top-10.

    python benchmarks/large_catalog.py --run-dir research/experiments/beauty-parallel/runs/parallel-shared_items_ids_d64-s2 --threads 1

Writes ``--out`` (default research/results/large_catalog.json).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.speed import machine, other_load  # noqa: E402
from gensid.eval.evaluate import evaluation_batches  # noqa: E402
from gensid.index.item_search import ItemVectorSearch, recall_against  # noqa: E402
from gensid.io import write_json  # noqa: E402
from gensid.model.parallel import top_items  # noqa: E402
from gensid.pipeline import load_run  # noqa: E402
from gensid.report.results import git_commit  # noqa: E402

K = 10


def catalog_vectors(run, size: int, seed: int, chunk: int = 100_000) -> torch.Tensor:
    """Item vectors [size, d]: the run's real items, then synthetic ones (digits drawn per digit
    from the real items' code frequencies, no item-id vector), ``chunk`` at a time."""
    model, codes = run.model, run.items.codes
    unknown = len(codes)  # an id past the trained items: no free vector, as for an added item
    g = torch.Generator().manual_seed(seed)
    counts = torch.stack([torch.bincount(codes[:, j], minlength=model.codebook_size)
                          for j in range(model.digits)]).float()  # [m, K]
    with torch.no_grad():
        parts = [model.item_vectors(codes, torch.arange(len(codes)))[:size]]
        for start in range(len(codes), size, chunk):
            n = min(chunk, size - start)
            drawn = torch.multinomial(counts, n, replacement=True, generator=g).T  # [n, m]
            parts.append(model.item_vectors(drawn, torch.full((n,), unknown)))
    return torch.cat(parts)


def user_states(run, users: int) -> torch.Tensor:
    """The hidden states [users, d] of the run's first ``users`` test users (by history length)."""
    run.model.eval()
    states = []
    with torch.no_grad():
        for _, batch in evaluation_batches(run.splits.test, run.items, batch_size=256):
            states.append(run.model.user_states(batch.history_codes, batch.history_mask, batch.history_text,
                                                batch.history_items))
            if sum(len(s) for s in states) >= users:
                break
    return torch.cat(states)[:users].float()


def timed(rank, states: torch.Tensor, batch_size: int, latency_users: int) -> tuple[np.ndarray, float, float]:
    """(top ids [U, k], users/s at ``batch_size``, median ms for one user)."""
    rank(states[:8])  # warm-up
    start, ids = time.perf_counter(), []
    for s in range(0, len(states), batch_size):
        ids.append(rank(states[s:s + batch_size]))
    per_s = len(states) / (time.perf_counter() - start)
    latency = []
    for i in range(latency_users):
        start = time.perf_counter()
        rank(states[i:i + 1])
        latency.append(1000 * (time.perf_counter() - start))
    return np.concatenate(ids), per_s, float(np.median(latency))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="a trained parallel run, head shared (weights needed)")
    p.add_argument("--sizes", default="0,100000,1000000", help="catalog sizes; 0 = the run's own catalog")
    p.add_argument("--probes", default="8,32", help="cells each query scans")
    p.add_argument("--users", type=int, default=2048)
    p.add_argument("--latency-users", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "research" / "results" / "large_catalog.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import faiss
    faiss.omp_set_num_threads(args.threads)
    load_before = other_load()
    run = load_run(args.run_dir)
    if not run.parallel or run.model.head != "shared":
        raise SystemExit(f"{args.run_dir}: needs a parallel run with parallel.head shared")
    states = user_states(run, args.users)
    rows = []
    for size in (int(s) or len(run.items.codes) for s in args.sizes.split(",")):
        vectors = catalog_vectors(run, size, args.seed)
        exact, exact_per_s, exact_ms = timed(
            lambda s, v=vectors: top_items(lambda a, b: s @ v[a:b].T, len(v), K)[1].numpy(),
            states, args.batch_size, args.latency_users)
        row = {"items": size, "exact": {"users_per_s": exact_per_s, "ms_batch1": exact_ms}, "approximate": []}
        start = time.perf_counter()
        search = ItemVectorSearch(vectors)
        build = time.perf_counter() - start
        for probes in (int(e) for e in args.probes.split(",")):
            search.probes = probes
            ids, per_s, ms = timed(lambda s, sr=search: sr.search(s, K)[1].numpy(), states, args.batch_size,
                                   args.latency_users)
            row["approximate"].append({"cells": search.cells, "probes": probes, "users_per_s": per_s, "ms_batch1": ms,
                                "recall@10_vs_exact": recall_against(exact, ids),
                                "speedup_vs_exact": per_s / exact_per_s, "build_seconds": build})
        rows.append(row)
        print(row, flush=True)
    result = {"rows": rows, "users": len(states), "batch_size": args.batch_size, "threads": args.threads,
              "run_dir": args.run_dir, "machine": machine(), "load_before": load_before, "load_after": other_load(),
              "command": "python benchmarks/large_catalog.py " + shlex.join(sys.argv[1:] if argv is None else argv),
              "commit": git_commit()}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
