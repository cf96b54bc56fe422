"""Request and response models of the HTTP API (pydantic validates; 422 names the field)."""

from __future__ import annotations

from pydantic import BaseModel, Field

MAX_HISTORY = 200  # items a /recommend history may hold; the model reads the last data.max_history
MAX_ITEMS_PER_REQUEST = 256
ItemId = Field(min_length=1, max_length=200, pattern=r"^[^/\x00-\x1f]+$")


class RecommendRequest(BaseModel):
    history: list[str] = Field(min_length=1, max_length=MAX_HISTORY,
                               description="external item ids, oldest first")
    k: int = Field(10, ge=1, le=100, description="how many items to return (at most the run's beam size)")


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=1000, pattern=r"\S", description="the search query text")
    history: list[str] = Field(default_factory=list, max_length=MAX_HISTORY,
                               description="external ids of the user's last clicked items, oldest first")
    k: int = Field(10, ge=1, le=100, description="how many items to return (at most the run's beam size)")


class Recommendation(BaseModel):
    rank: int
    id: str
    title: str


class RecommendResponse(BaseModel):
    items: list[Recommendation]


class NewItem(BaseModel):
    id: str = ItemId
    fields: dict[str, str] = Field(description="text fields, e.g. {\"movie_title\": ..., \"class\": ...}",
                                   max_length=50)


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
