"""The numbers ``gensid report`` shows (:mod:`gensid.report.run_page`), each from plain arrays or
one folder's files: metric tables, code usage, the code tree, collisions, parallel SIDs' digit values,
hit@10 by popularity and the example users."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gensid.io import JsonlLog
from gensid.quantize.sids import code_usage

TITLES_PER_NODE = 3  # example titles shown on a tree node or digit value
MAX_CHILDREN = 32  # children shown under a tree node, most items first



def split_metrics(folder: Path) -> dict[str, dict[str, float]]:
    """``{split: metrics}`` (valid and/or test) of a finished system's folder: a gensid run or bundle, a
    baseline (``gensid baseline``, ``RUN_DIR/sasrec``: ``metrics.json``), or an older SASRec folder (its
    ``log.jsonl`` "eval" events); {} when the folder records none."""
    metrics_file, log_file = folder / "metrics.json", folder / "log.jsonl"
    if metrics_file.exists():
        saved = json.loads(metrics_file.read_text())
        return {split: saved[split] for split in ("valid", "test") if isinstance(saved.get(split), dict)}
    return {e["split"]: e["metrics"] for e in JsonlLog(log_file).read() if e.get("event") == "eval" and "split" in e}


def metric_columns(ks: list[int]) -> list[str]:
    """The table's columns: recall and NDCG at every K (hit@K equals recall@K with one target)."""
    return [f"{name}@{k}" for name in ("recall", "ndcg") for k in ks]


def metric_rows(systems: dict[str, dict[str, dict[str, float]]], columns: list[str]) -> list[dict]:
    """One row per (system, split): ``{"system", "split", "values": [float | None per column]}``."""
    return [{"system": name, "split": split, "values": [metrics.get(c) for c in columns]}
            for name, splits in systems.items() for split, metrics in splits.items()]


def usage_rows(codes: np.ndarray, sizes: list[int], label: str = "level") -> list[dict]:
    """Per position of ``codes`` [N, L]: codes used and dead, perplexity ``exp(entropy)`` of the code
    distribution and that perplexity as a share of the codebook size (1 = every code equally used)."""
    return [{"name": f"{label} {i + 1}", **u, "share": u["perplexity"] / u["size"]}
            for i, u in enumerate(code_usage(codes, sizes))]


@dataclass
class Node:
    """A semantic-ID prefix: its last code, the path of codes, items under it and a few titles."""

    code: int
    path: str
    count: int
    titles: list[str]
    children: list[Node] = field(default_factory=list)
    hidden: int = 0  # children not shown (beyond MAX_CHILDREN)


def sid_tree(codes: np.ndarray, title: Callable[[int], str], order: np.ndarray,
             max_children: int = MAX_CHILDREN, titles: int = TITLES_PER_NODE) -> list[Node]:
    """The code tree of ``codes`` [N, L]: level-1 nodes (every code used, most items first), each with
    its level-2 children and so on to level L. A node's titles are its first items in ``order``
    [N] (item ids, e.g. most popular first); a level-L node lists up to ``2 * titles``."""
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))

    def grow(items: np.ndarray, level: int, prefix: str) -> tuple[list[Node], int]:
        values, counts = np.unique(codes[items, level], return_counts=True)
        shown = np.argsort(-counts, kind="stable")[:max_children]
        nodes = []
        for v in shown:
            members = items[codes[items, level] == values[v]]
            members = members[np.argsort(rank[members], kind="stable")]
            path = f"{prefix}-{values[v]}" if prefix else str(values[v])
            last = level == codes.shape[1] - 1
            node = Node(int(values[v]), path, len(members), [title(int(i)) for i in members[:titles * (2 if last else 1)]])
            if not last:
                node.children, node.hidden = grow(members, level + 1, path)
            nodes.append(node)
        return nodes, len(values) - len(shown)

    return grow(np.arange(len(codes)), 0, "")[0]


def collision_groups(codes: np.ndarray, top: int = 5) -> list[np.ndarray]:
    """The ``top`` largest groups of items [n_g] sharing all of their codes (``codes`` [N, L]),
    largest first; only groups of two or more items."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    groups = [g for g in np.argsort(-counts, kind="stable")[:top] if counts[g] > 1]
    return [np.flatnonzero(inverse == g) for g in groups]


def digit_values(codes: np.ndarray, distances: np.ndarray, digits: list[int], values: int, nearest: int
                 ) -> list[dict]:
    """Parallel SIDs: for each digit of ``digits``, its ``values`` most used values, each with its item
    count and its ``nearest`` items [n] (smallest ``distances`` [N, m] to the value's centroid)."""
    out = []
    for d in digits:
        counts = np.bincount(codes[:, d])
        top = np.argsort(-counts, kind="stable")[:values]
        rows = []
        for v in top:
            members = np.flatnonzero(codes[:, d] == v)
            rows.append({"value": int(v), "count": int(counts[v]),
                         "nearest": members[np.argsort(distances[members, d], kind="stable")[:nearest]]})
        out.append({"digit": d, "values": rows})
    return out


def hits_by_bucket(ranks: dict[str, np.ndarray], target_bucket: np.ndarray, k: int = 10, buckets: int = 5
                   ) -> list[dict]:
    """Hit@k per popularity bucket of the test targets (0 = head): ``ranks[system]`` [N] the target's
    0-based rank (-1 = not ranked), ``target_bucket`` [N]. Rows ``{"bucket", "users", system: hit}``."""
    rows = []
    for b in range(buckets):
        users = target_bucket == b
        row = {"bucket": b, "users": int(users.sum())}
        for name, r in ranks.items():
            row[name] = float(((r[users] >= 0) & (r[users] < k)).mean()) if users.any() else float("nan")
        rows.append(row)
    return rows


def example_rows(ranks: np.ndarray, hits: int = 3, misses: int = 3, k: int = 10) -> np.ndarray:
    """Rows of the test split to show (``ranks`` [N]: each test target's 0-based rank, -1 = not
    ranked): the first ``hits`` users whose target is in their top ``k`` and the first ``misses``
    whose target is not, in test order."""
    found = (ranks >= 0) & (ranks < k)
    return np.sort(np.concatenate([np.flatnonzero(found)[:hits], np.flatnonzero(~found)[:misses]]))
