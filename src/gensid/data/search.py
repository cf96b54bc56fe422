"""Personalized search data: (query text, the user's previous items) -> the clicked item.

Two sources:

- :func:`product_search` builds the standard Amazon product-search benchmark (Van Gysel et
  al. 2016; Ai et al. 2017) from a recommendation data set: the query of a purchase is the
  purchased item's category path as text (lower-cased, punctuation dropped, repeated words
  removed), the history is the user's previous <= ``max_history`` items; the last purchase
  of each user is the test sample, the second-to-last the validation sample.
- :func:`load_search_log` reads a real search log (CSV/Parquet ``user, timestamp, query,
  item`` plus an optional ``items`` file with text) and :func:`time_split` cuts it globally
  by time, 80/20 as in DGI (validation = the last 10% of the first 80%). A history holds
  only the user's clicks *before* the event, so no split sees the future.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gensid.data.catalog import Dataset, Interactions
from gensid.data.loaders import _read_table, catalog_beside
from gensid.data.splits import Samples, pack_samples
from gensid.errors import DataError


@dataclass
class SearchSamples:
    """``queries`` N strings; ``histories`` [N, H] left-padded with PAD; ``targets`` [N]; ``users`` [N]."""

    queries: list[str]
    histories: np.ndarray
    targets: np.ndarray
    users: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)

    def as_samples(self) -> Samples:
        """The history-only view (for recommenders that ignore the query)."""
        return Samples(self.histories, self.targets, self.users)

    def head(self, n: int) -> SearchSamples:
        if n <= 0 or n >= len(self):
            return self
        return SearchSamples(self.queries[:n], self.histories[:n], self.targets[:n], self.users[:n])


@dataclass
class SearchSplits:
    train: SearchSamples
    valid: SearchSamples
    test: SearchSamples


def category_query(path: str) -> str:
    """``"Beauty, Makeup, Nails, Nail Polish"`` -> ``"beauty makeup nails nail polish"``."""
    words = re.findall(r"[a-z0-9]+", path.lower())
    return " ".join(dict.fromkeys(words))


def _pack(rows: list[tuple[int, str, np.ndarray, int]], max_history: int) -> SearchSamples:
    """(user, query, history, target) rows -> SearchSamples (histories as in ``pack_samples``)."""
    samples = pack_samples([(user, history, target) for user, _, history, target in rows], max_history)
    return SearchSamples([r[1] for r in rows], samples.histories, samples.targets, samples.users)


def product_search(dataset: Dataset, max_history: int = 10, category_field: str = "categories") -> SearchSplits:
    """Search samples from purchase sequences; every purchase with a non-empty category path
    gives one sample (the first purchase too, with an empty history)."""
    queries = [category_query(fields.get(category_field, "")) for fields in dataset.catalog.fields]
    if not any(queries):
        raise DataError(f"{dataset.name}: no item has a {category_field!r} field to build queries from")
    train, valid, test = [], [], []
    for user, seq in enumerate(dataset.interactions.sequences):
        n = len(seq)
        for t in range(n):
            query = queries[seq[t]]
            if not query:
                continue
            row = (user, query, seq[:t], int(seq[t]))
            (test if t == n - 1 and n >= 3 else valid if t == n - 2 and n >= 3 else train).append(row)
    return SearchSplits(_pack(train, max_history), _pack(valid, max_history), _pack(test, max_history))


@dataclass
class SearchLog:
    """Events in time order: ``users`` [E] internal user ids, ``items`` [E], ``timestamps`` [E], ``queries``."""

    dataset: Dataset
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    queries: list[str]


def load_search_log(path: str | Path, text_fields: list[str] | None = None) -> SearchLog:
    """A CSV/Parquet log with columns ``user, timestamp, query, item``; item text from an
    ``items.csv``/``items.parquet`` beside it (column ``item`` + text fields), else the id."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    log = _read_table(path)
    missing = {"user", "timestamp", "query", "item"} - set(log.columns)
    if missing:
        raise DataError(f"{path}:1: missing column(s) {sorted(missing)}; expected user, timestamp, query, item")
    ts = pd.to_numeric(log["timestamp"], errors="coerce")
    if ts.isna().any():
        row = int(ts.isna().to_numpy().nonzero()[0][0])
        raise DataError(f"{path}:{row + 2}: timestamp {log['timestamp'].iloc[row]!r} is not a number")
    empty = (log["query"].str.strip() == "").to_numpy().nonzero()[0]
    if len(empty):
        raise DataError(f"{path}:{empty[0] + 2}: empty query")
    catalog = catalog_beside(path, log["item"], text_fields)
    index = {item: i for i, item in enumerate(catalog.item_ids)}
    items = log["item"].map(index)
    if items.isna().any():
        row = int(items.isna().to_numpy().nonzero()[0][0])
        raise DataError(f"{path}:{row + 2}: item id {log['item'].iloc[row]!r} is not in the catalog")
    order = np.lexsort((np.arange(len(log)), ts.to_numpy()))  # by time, ties in file order
    user_ids = list(dict.fromkeys(log["user"].iloc[order]))
    user_index = {u: i for i, u in enumerate(user_ids)}
    users = log["user"].iloc[order].map(user_index).to_numpy(np.int64)
    items_sorted = items.iloc[order].to_numpy(np.int64)
    sequences = [items_sorted[users == u] for u in range(len(user_ids))]
    dataset = Dataset(path.stem, catalog, Interactions(user_ids, sequences))
    return SearchLog(dataset, users, items_sorted, ts.to_numpy()[order], log["query"].iloc[order].tolist())


def time_split(log: SearchLog, max_history: int = 10, test_share: float = 0.2, valid_share: float = 0.1
               ) -> SearchSplits:
    """Global split by time: the last ``test_share`` of events is test, the ``valid_share``
    before it validation, the rest training; histories use only earlier clicks."""
    n = len(log.items)
    test_start = int(round(n * (1 - test_share)))
    valid_start = int(round(n * (1 - test_share - valid_share)))
    seen: dict[int, list[int]] = {}
    rows: list[list] = [[], [], []]
    for e in range(n):
        user = int(log.users[e])
        history = np.asarray(seen.get(user, []), dtype=np.int64)
        part = 2 if e >= test_start else 1 if e >= valid_start else 0
        rows[part].append((user, log.queries[e], history, int(log.items[e])))
        seen.setdefault(user, []).append(int(log.items[e]))
    return SearchSplits(*(_pack(r, max_history) for r in rows))
