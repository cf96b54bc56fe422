"""SID index and constrained beam search against catalog size, next to exact dense search.

Synthetic catalogs of 10k, 100k and 1M items with random codes (3 levels x 256, plus
TIGER's disambiguation code). For each size, in one run:

- gensid: ``SIDIndex`` build time, peak traced memory of the build (numpy allocations, via
  tracemalloc) and the size of the built tables;
  trie-constrained beam search (beam 20, top-20 items) with a small random
  ``GenerativeRecommender`` (d_model 128, 2+2 layers), median latency at batch 1 and 64;
- faiss ``IndexFlatIP`` (d=128, exact): build time and index size (N x 128 float32; faiss'
  C++ allocations are invisible to tracemalloc) over random unit vectors of the same
  catalog size, median latency of a top-20 search at batch 1 and 64.

One thread for both. Writes ``--out`` (default ``research/results/scale.json``) and ``scale.png`` beside it.

    python benchmarks/scale.py --sizes 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.speed import machine  # noqa: E402
from gensid.config import ModelConfig  # noqa: E402
from gensid.index import SIDIndex, constrained_beam_search  # noqa: E402
from gensid.io import write_json  # noqa: E402
from gensid.model import GenerativeRecommender  # noqa: E402
from gensid.quantize import SemanticIDs  # noqa: E402
from gensid.report.results import git_commit  # noqa: E402

RESULTS = ROOT / "research" / "results"
LEVELS, CODES, DIM, HISTORY, BEAM = 3, 256, 128, 20, 20


def traced(fn: Callable[[], object]) -> tuple[object, float, float]:
    """Run ``fn`` -> (its result, seconds, peak traced MiB)."""
    tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return out, seconds, peak


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def one_size(n: int, model_cfg: ModelConfig, repeats: int, rng: np.random.Generator) -> dict:
    sids = SemanticIDs.from_codes(rng.integers(0, CODES, (n, LEVELS)), [CODES] * LEVELS)
    index, build_s, build_mib = traced(lambda: SIDIndex(sids.codes, sids.sizes))
    torch.manual_seed(0)
    model = GenerativeRecommender(sids.sizes, model_cfg, HISTORY).eval()
    vectors = rng.standard_normal((n, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def build_dense() -> faiss.Index:
        dense = faiss.IndexFlatIP(DIM)
        dense.add(vectors)
        return dense

    start = time.perf_counter()
    dense = build_dense()
    dense_s = time.perf_counter() - start
    index_bytes = sum(t.numel() * t.element_size() for t in [*index.children, index.leaf_items, index.leaf_start])
    row = {"items": n, "sid_sizes": sids.sizes, "max_leaf_size": index.max_leaf_size,
           "gensid": {"build_s": build_s, "build_peak_mib": build_mib, "index_mib": index_bytes / 2**20},
           "faiss_flat_ip": {"build_s": dense_s, "index_mib": n * DIM * 4 / 2**20}}
    for batch in (1, 64):
        history = torch.from_numpy(sids.codes[rng.integers(0, n, (batch, HISTORY))])
        mask = torch.ones(batch, HISTORY, dtype=torch.bool)
        queries = vectors[rng.integers(0, n, batch)]
        row["gensid"][f"latency_ms_batch{batch}"] = median_ms(
            lambda h=history, m=mask: constrained_beam_search(model, index, h, m, BEAM), repeats)
        row["faiss_flat_ip"][f"latency_ms_batch{batch}"] = median_ms(lambda q=queries: dense.search(q, BEAM), repeats)
    print(row, flush=True)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = [r["items"] for r in rows]
    for method, label in (("gensid", "gensid beam 20"), ("faiss_flat_ip", "faiss IndexFlatIP d=128")):
        for batch, style in ((1, "-o"), (64, "--s")):
            ax.plot(sizes, [r[method][f"latency_ms_batch{batch}"] for r in rows], style, label=f"{label}, batch {batch}")
    ax.set(xscale="log", yscale="log", xlabel="catalog size (items)", ylabel="median latency per batch (ms)",
           title="Retrieval latency vs catalog size (1 thread)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    model_cfg = ModelConfig(d_model=128, n_heads=4, encoder_layers=2, decoder_layers=2, d_ff=256, dropout=0.0)
    rng = np.random.default_rng(0)
    rows = [one_size(n, model_cfg, args.repeats, rng) for n in args.sizes]
    plot(rows, args.out.with_suffix(".png"))
    write_json(args.out, {"rows": rows, "beam": BEAM, "threads": 1, "machine": machine(), "commit": git_commit(),
                          "command": shlex.join([os.path.relpath(sys.executable), *sys.argv])})


if __name__ == "__main__":
    main()
