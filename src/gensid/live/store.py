"""The catalog of items added to a served run, in SQLite (``RUN_DIR/catalog.sqlite``).

One row per added item: external id, text fields (JSON), SID (JSON list of codes) and the
item's text vector (float32 bytes, so a restart replays without re-embedding). A request's
items are written in one transaction; the service acknowledges only after the commit, so
an acknowledged item survives a crash.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL UNIQUE,
    fields TEXT NOT NULL,
    sid TEXT NOT NULL,
    vector BLOB NOT NULL
)"""


@dataclass
class AddedItem:
    item_id: str
    fields: dict[str, str]
    sid: list[int]
    vector: np.ndarray  # [T] float32 text vector


STORE_FILE = "catalog.sqlite"


class ItemStore:
    """Read-write: the service's store (created if absent)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(SCHEMA)

    def add(self, items: list[AddedItem]) -> None:
        """Write ``items`` in one transaction (all or none)."""
        rows = [(it.item_id, json.dumps(it.fields), json.dumps([int(c) for c in it.sid]),
                 np.asarray(it.vector, dtype=np.float32).tobytes()) for it in items]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT INTO items (item_id, fields, sid, vector) VALUES (?, ?, ?, ?)", rows)

    def all(self) -> list[AddedItem]:
        """Every added item, in the order it was added."""
        return read_rows(self.db)

    def close(self) -> None:
        self.db.close()


def read_rows(db: sqlite3.Connection) -> list[AddedItem]:
    rows = db.execute("SELECT item_id, fields, sid, vector FROM items ORDER BY seq").fetchall()
    return [AddedItem(i, json.loads(f), json.loads(s), np.frombuffer(v, dtype=np.float32)) for i, f, s, v in rows]


def stored_items(run_dir: str | Path) -> list[AddedItem]:
    """The items added to ``run_dir`` so far (none when it has no store), read without creating or
    writing anything: a server may be adding items at the same time (WAL: the read sees the last
    committed request)."""
    path = Path(run_dir) / STORE_FILE
    if not path.exists():
        return []
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return read_rows(db)
    finally:
        db.close()
