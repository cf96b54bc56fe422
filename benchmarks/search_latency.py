"""Latency of generative search stage by stage, against exact dense search, in one run.

    python benchmarks/search_latency.py --data ../shared/data/amazon-beauty --threads 1

On the Amazon product-search test searches (query + history <= 10), with a DGI search
model (``configs/beauty-search-dgi.yaml``: 4+4 layers d128, 3 x 256 codes, beam 20) and a
dense dual encoder over the same catalog:

- batch 1, per search: context encoding (query + history -> memory, context vector),
  generative search (trie-constrained beam search -> leaves), geometric verification
  (leaves -> items -> ranking by beam score, then cosine), and the dense retriever's
  context projection + exact faiss inner-product search; median and p95 in ms;
- the hybrid's extra stage (``gensid.fusion``): the dense encoder's softmax over the whole catalog
  (item vectors kept, as the hybrid keeps them) mixed with the beam's items;
- batch 256: searches per second of the whole generative pipeline, of the hybrid and of dense search.

Stages of the two systems are interleaved per search, so load on the machine hits both
alike. Weights are random (speed does not depend on training); the codes come from the
tokenizer's k-means initialisation, so the trie has the real catalog's shape. Writes
``--out`` (default ``research/results/search_latency.json``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from gensid.baselines.dense import DenseDualEncoder, context_inputs
from gensid.config import load_config
from gensid.fusion import generative_log_probs, mix
from gensid.index import SIDIndex
from gensid.index.beam import encode_context, search_leaves, verify
from gensid.io import write_json
from gensid.model import GenerativeRecommender
from gensid.pipeline import load_task
from gensid.quantize import fit_semantic_ids
from gensid.text import embed_split_texts, embed_texts
from gensid.train import Batch, ItemFeatures


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default="configs/beauty-search-dgi.yaml")
    parser.add_argument("--searches", type=int, default=300, help="batch-1 searches timed")
    parser.add_argument("--throughput-searches", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "research" / "results"
                                             / "search_latency.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = load_config(args.config, [f"data.source={args.data}"])
    _, dataset, splits, query_texts = load_task(cfg, progress=False)
    queries = embed_split_texts(query_texts, cfg.text.model, cfg.text.batch_size)
    text = torch.from_numpy(embed_texts(dataset.catalog.texts, cfg.text.model, cfg.text.batch_size, progress=False))
    tokenizer, _, _ = fit_semantic_ids(text.numpy(), cfg.quantizer, progress=False)
    model = GenerativeRecommender(cfg.quantizer.codebook_sizes, cfg.model, cfg.data.max_history, text.shape[1],
                                  tokenizer, query_dim=queries["test"].shape[1]).eval()
    with torch.no_grad():
        z_base = tokenizer.encoder(text)
        codes = tokenizer.quantizer.encode(z_base)
        items = ItemFeatures(codes, text, tokenizer.quantizer.decode(codes), z_base)
    index = SIDIndex(codes.numpy(), cfg.quantizer.codebook_sizes)
    beam = cfg.eval.beam_size

    dense = DenseDualEncoder(text.shape[1]).eval()
    with torch.no_grad():
        item_matrix = F.normalize(dense.item(text), dim=-1).numpy()
    flat = faiss.IndexFlatIP(item_matrix.shape[1])
    flat.add(np.ascontiguousarray(item_matrix, dtype=np.float32))

    test, test_queries = splits.test, queries["test"]

    @torch.no_grad()
    def generative(rows):
        batch = Batch.build(test, rows, items, test_queries)
        (memory, mask, context), encode_ms = timed(lambda: encode_context(
            model, batch.history_codes, batch.history_mask, batch.history_text, batch.history_vectors, batch.query))
        (leaves, scores), search_ms = timed(lambda: search_leaves(model, index, memory, mask, beam))
        result, verify_ms = timed(lambda: verify(index, leaves, scores, beam, context, items.item_vectors))
        return result, (encode_ms, search_ms, verify_ms)

    dense_items = dense.item_vectors(text)

    @torch.no_grad()
    def hybrid_mixing(rows, result):
        return timed(lambda: mix(result.items, generative_log_probs(index, result),
                                 dense.log_probs(test_queries[rows], test.histories[rows], text, dense_items), 0.5, beam))[1]

    @torch.no_grad()
    def dense_search(rows):
        def run():
            context = F.normalize(dense.context(context_inputs(test_queries[rows], test.histories[rows], text)), dim=-1)
            return flat.search(np.ascontiguousarray(context.numpy(), dtype=np.float32), beam)
        return timed(run)[1]

    rng = np.random.default_rng(0)
    stages, mixing_ms, dense_ms = [], [], []
    for row in rng.choice(len(test), args.searches, replace=False):
        result, parts = generative(np.array([row]))
        stages.append(parts)
        mixing_ms.append(hybrid_mixing(np.array([row]), result))
        dense_ms.append(dense_search(np.array([row])))
    stages = np.array(stages)
    totals = stages.sum(1)
    hybrid_totals = totals + np.array(mixing_ms)

    rows = rng.choice(len(test), args.throughput_searches, replace=False)
    gen_time = mixing_time = dense_time = 0.0
    for start in range(0, len(rows), 256):
        chunk = rows[start:start + 256]
        result, parts = generative(chunk)
        gen_time += sum(parts)
        mixing_time += hybrid_mixing(chunk, result)
        dense_time += dense_search(chunk)
    result = {
        "batch1_ms": {
            "context_encoding": {"median": float(np.median(stages[:, 0])), "p95": float(np.percentile(stages[:, 0], 95))},
            "generative_search": {"median": float(np.median(stages[:, 1])), "p95": float(np.percentile(stages[:, 1], 95))},
            "geometric_verification": {"median": float(np.median(stages[:, 2])),
                                       "p95": float(np.percentile(stages[:, 2], 95))},
            "gensid_total": {"median": float(np.median(totals)), "p95": float(np.percentile(totals, 95))},
            "hybrid_mixing": {"median": float(np.median(mixing_ms)), "p95": float(np.percentile(mixing_ms, 95))},
            "hybrid_total": {"median": float(np.median(hybrid_totals)), "p95": float(np.percentile(hybrid_totals, 95))},
            "dense_exact": {"median": float(np.median(dense_ms)), "p95": float(np.percentile(dense_ms, 95))},
        },
        "batch256_searches_per_s": {"gensid": len(rows) / (gen_time / 1000),
                                    "hybrid": len(rows) / ((gen_time + mixing_time) / 1000),
                                    "dense_exact": len(rows) / (dense_time / 1000)},
        "catalog_items": len(dataset.catalog), "beam": beam, "threads": args.threads,
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
