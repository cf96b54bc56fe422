"""The typed objects every loader produces: a Catalog of items and the users' Interactions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gensid.errors import DataError

TITLE_FIELDS = ("title", "movie_title", "name")


@dataclass
class Catalog:
    """Items with internal ids ``0..n-1``.

    ``item_ids[i]`` is the external id of item ``i``; ``fields[i]`` its raw text
    fields (title, brand, ...). ``texts`` is what the text encoder reads.
    """

    item_ids: list[str]
    fields: list[dict[str, str]]
    text_fields: list[str]
    texts: list[str] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.item_ids) != len(self.fields):
            raise DataError("catalog: item_ids and fields differ in length")
        self._index = {item: i for i, item in enumerate(self.item_ids)}
        if len(self._index) != len(self.item_ids):
            raise DataError("catalog: duplicate item ids")
        present = {name for f in self.fields for name, v in f.items() if v}
        if self.fields and not present.intersection(self.text_fields):
            raise DataError(
                f"catalog: none of the text fields {self.text_fields} is present; "
                f"the items have {sorted(present)}"
            )
        self.texts = [render_text(f, self.text_fields) for f in self.fields]

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, external_id: object) -> bool:
        return str(external_id) in self._index

    def index_of(self, external_id: str) -> int:
        """Internal id of an external item id; ``KeyError`` naming the id if unknown."""
        try:
            return self._index[str(external_id)]
        except KeyError:
            raise KeyError(f"unknown item id {external_id!r}") from None

    def append(self, external_id: str, fields: dict[str, str]) -> int:
        """Add one item (text rendered as for the others); returns its internal id."""
        if str(external_id) in self._index:
            raise DataError(f"catalog: item id {external_id!r} exists already")
        if not any(fields.get(name) for name in self.text_fields):
            raise DataError(f"item {external_id!r}: none of the text fields {self.text_fields} is given")
        self._index[str(external_id)] = len(self.item_ids)
        self.item_ids.append(str(external_id))
        self.fields.append(dict(fields))
        self.texts.append(render_text(fields, self.text_fields))
        return len(self.item_ids) - 1

    def title(self, item: int) -> str:
        fields = self.fields[item]
        for name in TITLE_FIELDS:
            if fields.get(name):
                return fields[name]
        return self.texts[item] or self.item_ids[item]


def render_text(fields: dict[str, str], text_fields: list[str]) -> str:
    """``"title: X; brand: Y; categories: Z"`` from the non-empty listed fields."""
    parts = [f"{name}: {fields[name]}" for name in text_fields if fields.get(name)]
    return "; ".join(parts)


@dataclass
class Interactions:
    """Per-user item sequences (internal item ids, oldest first) and, where the source has them,
    each interaction's timestamp (aligned with ``sequences``; None for LETTER data)."""

    user_ids: list[str]
    sequences: list[np.ndarray]
    timestamps: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))


@dataclass
class Dataset:
    name: str
    catalog: Catalog
    interactions: Interactions

    def head(self, max_users: int) -> Dataset:
        """The first ``max_users`` users and only the items they touched (quick runs and tests)."""
        if max_users <= 0 or max_users >= len(self.interactions):
            return self
        seqs = self.interactions.sequences[:max_users]
        kept = np.unique(np.concatenate(seqs))
        new_id = np.full(len(self.catalog), -1, dtype=np.int64)
        new_id[kept] = np.arange(len(kept))
        catalog = Catalog([self.catalog.item_ids[i] for i in kept], [self.catalog.fields[i] for i in kept],
                          self.catalog.text_fields)
        times = self.interactions.timestamps
        inter = Interactions(self.interactions.user_ids[:max_users], [new_id[s] for s in seqs],
                             times[:max_users] if times is not None else None)
        return Dataset(f"{self.name}[:{max_users}]", catalog, inter)
