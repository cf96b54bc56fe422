"""Fuzzed input files: every loader either loads them or raises a DataError naming the file."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gensid.data import load_dataset
from gensid.errors import DataError

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
ids = st.sampled_from(["a", "b", "c", "1", ""]) | st.text(max_size=4)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ids,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ids, inner, max_size=4),
                           max_leaves=10)
letter_items = st.dictionaries(ids, st.dictionaries(st.sampled_from(["title", "brand", "x"]), json_values,
                                                    max_size=3) | json_values, max_size=4)
letter_inter = st.dictionaries(ids, st.lists(ids | json_values, max_size=4) | json_values, max_size=4)
cells = st.sampled_from(["a", "b", "1", "2.5", "", "x y", '"', "\t", "nan"]) | st.text(max_size=5)


def rows(columns: list[str]) -> st.SearchStrategy[str]:
    """Text of a delimited file: a header that is usually right, then rows of fuzzed cells."""
    header = st.just(columns) | st.lists(st.sampled_from([*columns, "junk", "a:b:c", ""]), max_size=4)
    return st.tuples(header, st.lists(st.lists(cells, max_size=5), max_size=5)).map(
        lambda t: "\n".join(["\t".join(t[0])] + ["\t".join(r) for r in t[1]]))


def load(files: dict[str, str | bytes], **kwargs) -> None:
    folder = Path(tempfile.mkdtemp())
    try:
        for name, content in files.items():
            path = folder / name
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        try:
            load_dataset(folder, **kwargs)
        except DataError as exc:
            assert str(folder) in str(exc) or "catalog" in str(exc), exc
    finally:
        shutil.rmtree(folder)


@FUZZ
@given(letter_items | json_values, letter_inter | json_values, st.binary(max_size=20) | st.none())
def test_letter_json(items, inter, garbage):
    files = {"x.item.json": json.dumps(items), "x.inter.json": json.dumps(inter)}
    if garbage is not None:
        files["x.inter.json"] = garbage
    load(files, fmt="letter", text_fields=["title", "brand"])


@FUZZ
@given(rows(["item_id:token", "movie_title:token_seq"]), rows(["user_id:token", "item_id:token", "timestamp:float"]),
       st.binary(max_size=20) | st.none())
def test_recbole_atomic(items, inter, garbage):
    files = {"x.item": items, "x.inter": inter if garbage is None else garbage}
    load(files, fmt="recbole", text_fields=["movie_title"])


@FUZZ
@given(rows(["user", "item", "timestamp"]), rows(["item", "title"]) | st.none(), st.binary(max_size=20) | st.none())
def test_csv_log(log, items, garbage):
    files = {"log.csv": (log if garbage is None else garbage)}
    if items is not None:
        files["items.csv"] = items
    load({k: v.replace("\t", ",") if isinstance(v, str) else v for k, v in files.items()}, fmt="csv",
         text_fields=["title"])
