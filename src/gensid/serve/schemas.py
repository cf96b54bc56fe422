"""Request and response models of the HTTP API (pydantic validates; 422 names the field).

Every input is bounded: histories (``MAX_HISTORY`` ids of at most ``MAX_ID_CHARS`` characters),
item text fields (``MAX_FIELD_CHARS`` characters each, never only white space), items per request,
``k`` (a strict integer: ``true`` is not 1). The whole body is bounded before parsing
(``--max-body-bytes``, :mod:`gensid.serve.guard`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StrictBool, StrictInt, StringConstraints, field_validator

MAX_HISTORY = 1000  # items a history may hold; the model reads the last data.max_history
MAX_ITEMS_PER_REQUEST = 256
MAX_ID_CHARS = 200
MAX_FIELD_CHARS = 2000  # an item text field (title, class, ...)
MAX_FIELD_NAME_CHARS = 100
MAX_QUERY_CHARS = 1000
NewItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^/\x00-\x1f]+$")]
HistoryId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
FieldName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_FIELD_NAME_CHARS)]
FieldText = Annotated[str, StringConstraints(max_length=MAX_FIELD_CHARS)]
K = Annotated[StrictInt, Field(ge=1, le=100, description="how many items to return (at most the run's beam size)")]
EXCLUDE_SEEN = ("drop the history's items from the answer (which still has k items when the catalog allows); "
                "null: the run's default (serve.exclude_seen in its config where present, else false)")


class RecommendRequest(BaseModel):
    history: list[HistoryId] = Field(min_length=1, max_length=MAX_HISTORY,
                                     description="external item ids, oldest first")
    k: K = 10
    exclude_seen: StrictBool | None = Field(None, description=EXCLUDE_SEEN)


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S", description="the search query text")
    history: list[HistoryId] = Field(default_factory=list, max_length=MAX_HISTORY,
                                     description="external ids of the user's last clicked items, oldest first")
    k: K = 10
    exclude_seen: StrictBool | None = Field(None, description=EXCLUDE_SEEN)


class Recommendation(BaseModel):
    rank: int
    id: str
    title: str


class RecommendResponse(BaseModel):
    items: list[Recommendation]


class NewItem(BaseModel):
    id: NewItemId
    fields: dict[FieldName, FieldText] = Field(
        description=f"text fields, e.g. {{\"movie_title\": ..., \"class\": ...}}, each at most {MAX_FIELD_CHARS} "
                    "characters and not only white space", max_length=50)

    @field_validator("fields")
    @classmethod
    def not_blank(cls, fields: dict[str, str]) -> dict[str, str]:
        blank = [name for name, text in fields.items() if text and not text.strip()]
        if blank:
            raise ValueError(f"field {blank[0][:40]!r} is only white space")
        return fields


class AddItemsRequest(BaseModel):
    items: list[NewItem] = Field(min_length=1, max_length=MAX_ITEMS_PER_REQUEST)


class ItemOut(BaseModel):
    id: str
    title: str
    fields: dict[str, str]
    sid: list[int]
    added: bool = Field(description="added through the API (not in the training catalog)")


class AddItemsResponse(BaseModel):
    items: list[ItemOut]


class Health(BaseModel):
    status: str
    strategy: str
    items: int
    added_items: int
    sid_sizes: list[int]
    hybrid: str | None = None  # a hybrid's scorer and mixing weight
