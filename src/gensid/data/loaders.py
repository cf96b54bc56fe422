"""Readers for the three input formats; each returns a :class:`Dataset`.

- LETTER JSON: ``X.inter.json`` ``{"user": [item, ...]}`` + ``X.item.json``
  ``{"item": {"title": ..., ...}}`` in one folder.
- RecBole atomic files: ``X.inter`` and ``X.item`` (tab-separated, typed header
  such as ``user_id:token``), interactions ordered by ``timestamp``.
- A plain log (CSV or Parquet) with columns ``user, item, timestamp`` and an
  optional items file beside it (``items.csv`` / ``items.parquet``, column
  ``item`` plus text columns).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd

from gensid.data.catalog import Catalog, Dataset, Interactions
from gensid.errors import DataError


def load_dataset(source: str | Path, fmt: str = "auto", text_fields: list[str] | None = None) -> Dataset:
    """Load ``source`` (a folder or a log file, or ``"movielens-100k"``)."""
    if str(source) == "movielens-100k":
        from gensid.data.movielens import movielens_100k_dir

        source, fmt = movielens_100k_dir(), "recbole"
        text_fields = text_fields if text_fields and "movie_title" in text_fields else [
            "movie_title", "release_year", "class"
        ]
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    fmt = detect_format(path) if fmt == "auto" else fmt
    fields = text_fields or ["title", "brand", "categories"]
    if fmt == "letter":
        return load_letter(path, fields)
    if fmt == "recbole":
        return load_recbole(path, fields)
    if fmt == "csv":
        return load_log(path, fields)
    raise DataError(f"{path}: unknown format {fmt!r}; expected letter, recbole or csv")


def detect_format(path: Path) -> str:
    if path.is_file():
        return "csv"
    if list(path.glob("*.inter.json")):
        return "letter"
    if list(path.glob("*.inter")):
        return "recbole"
    if list(path.glob("*.csv")) or list(path.glob("*.parquet")):
        return "csv"
    raise DataError(
        f"{path}: cannot tell the format: expected *.inter.json (LETTER), *.inter (RecBole) "
        "or a .csv/.parquet log"
    )


def _single(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise DataError(f"{folder}: expected exactly one {pattern} file, found {len(found)}")
    return found[0]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def load_letter(folder: Path, text_fields: list[str]) -> Dataset:
    inter_path = _single(folder, "*.inter.json")
    item_path = _single(folder, "*.item.json")
    raw_items = _read_json(item_path)
    item_ids, fields = [], []
    for key, value in raw_items.items():
        if not isinstance(value, dict):
            raise DataError(f"{item_path}: item {key!r}: expected an object of text fields, got {value!r:.60}")
        item_ids.append(str(key))
        fields.append({k: "" if v is None else str(v) for k, v in value.items()})
    catalog = Catalog(item_ids, fields, text_fields)
    raw_inter = _read_json(inter_path)
    users, seqs = [], []
    for user, items in raw_inter.items():
        if not isinstance(items, list):
            raise DataError(f"{inter_path}: user {user!r}: expected a list of item ids, got {items!r:.60}")
        if not items:
            raise DataError(f"{inter_path}: user {user!r}: empty item sequence")
        seq = np.empty(len(items), dtype=np.int64)
        for pos, item in enumerate(items):
            try:
                seq[pos] = catalog.index_of(str(item))
            except KeyError:
                raise DataError(
                    f"{inter_path}: user {user!r}, position {pos}: item id {item!r} is not in {item_path.name}"
                ) from None
        users.append(str(user))
        seqs.append(seq)
    return Dataset(inter_path.name.removesuffix(".inter.json"), catalog, Interactions(users, seqs))


def _read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file; the header's ``name:type`` columns become plain ``name``."""
    try:
        with open(path, newline="") as fh:
            header = fh.readline().rstrip("\n").split("\t")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:1: not UTF-8 text (byte {exc.start})") from None
    names = [h.split(":")[0] for h in header]
    if not header or any(":" not in h for h in header):
        raise DataError(f"{path}:1: expected a header of name:type columns, got {header!r:.80}")
    if len(set(names)) != len(names):
        raise DataError(f"{path}:1: repeated column name in the header {header!r:.80}")
    try:
        df = pd.read_csv(path, sep="\t", skiprows=1, names=names, dtype=str, keep_default_na=False,
                         quoting=csv.QUOTE_NONE, on_bad_lines="error")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: malformed row ({exc})") from None
    return df


def load_recbole(folder: Path, text_fields: list[str]) -> Dataset:
    inter_path = _single(folder, "*.inter")
    item_path = _single(folder, "*.item")
    items = _read_atomic(item_path)
    if "item_id" not in items:
        raise DataError(f"{item_path}:1: no item_id column")
    fields = items.drop(columns=["item_id"]).to_dict("records")
    catalog = Catalog(items["item_id"].tolist(), fields, text_fields)
    inter = _read_atomic(inter_path)
    return _group_log(inter.rename(columns={"user_id": "user", "item_id": "item"}), catalog, inter_path,
                      header_rows=1, name=inter_path.stem)


def load_log(path: Path, text_fields: list[str]) -> Dataset:
    """A CSV/Parquet log ``user, item, timestamp`` (+ optional items file beside it)."""
    if path.is_dir():
        logs = [p for p in sorted(path.iterdir()) if p.suffix in (".csv", ".parquet") and p.stem != "items"]
        if len(logs) != 1:
            raise DataError(f"{path}: expected one interaction log (.csv/.parquet), found {len(logs)}")
        path = logs[0]
    log = _read_table(path)
    missing = {"user", "item", "timestamp"} - set(log.columns)
    if missing:
        raise DataError(f"{path}:1: missing column(s) {sorted(missing)}; expected user, item, timestamp")
    return _group_log(log, catalog_beside(path, log["item"], text_fields), path, header_rows=1, name=path.stem)


def catalog_beside(path: Path, item_ids: pd.Series, text_fields: list[str] | None) -> Catalog:
    """Item text from ``items.csv``/``items.parquet`` beside ``path`` (column ``item`` + text
    fields; all other columns when ``text_fields`` is None), else the ids themselves as titles."""
    items_path = next((p for p in (path.with_name("items.csv"), path.with_name("items.parquet")) if p.exists()), None)
    if items_path is None:
        ids = sorted(set(item_ids))
        return Catalog(ids, [{"title": i} for i in ids], ["title"])
    items = _read_table(items_path)
    if "item" not in items:
        raise DataError(f"{items_path}:1: no item column")
    fields = text_fields or [c for c in items.columns if c != "item"]
    return Catalog(items["item"].tolist(), items.drop(columns=["item"]).to_dict("records"), fields)


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path).astype(str)
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


def _group_log(log: pd.DataFrame, catalog: Catalog, path: Path, header_rows: int, name: str) -> Dataset:
    """Sort a ``user, item, timestamp`` frame per user by time and map items to internal ids."""
    for column in ("user", "item", "timestamp"):
        if column not in log:
            raise DataError(f"{path}:1: missing column {column!r}")
    ts = pd.to_numeric(log["timestamp"], errors="coerce")
    bad = ts.isna().to_numpy().nonzero()[0]
    if len(bad):
        row = bad[0]
        raise DataError(f"{path}:{row + 1 + header_rows}: timestamp {log['timestamp'].iloc[row]!r} is not a number")
    index = {item: i for i, item in enumerate(catalog.item_ids)}
    item_idx = log["item"].map(index)
    unknown = item_idx.isna().to_numpy().nonzero()[0]
    if len(unknown):
        row = unknown[0]
        raise DataError(f"{path}:{row + 1 + header_rows}: item id {log['item'].iloc[row]!r} is not in the catalog")
    frame = pd.DataFrame({"user": log["user"], "item": item_idx.astype(np.int64), "ts": ts,
                          "row": np.arange(len(log))})
    frame = frame.sort_values(["user", "ts", "row"], kind="stable")
    users, seqs, times = [], [], []
    for user, group in frame.groupby("user", sort=False):
        users.append(str(user))
        seqs.append(group["item"].to_numpy())
        times.append(group["ts"].to_numpy(dtype=np.float64))
    if not users:
        raise DataError(f"{path}: no interactions")
    return Dataset(name, catalog, Interactions(users, seqs, times))
