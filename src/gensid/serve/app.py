"""The FastAPI app over a trained run directory.

Serves a run directory or a hybrid folder (``gensid hybrid``: the run mixed with a full-catalog
scorer). Endpoints: ``POST /recommend`` (runs of ``data.task: rec``), ``POST /search`` (runs of
``data.task: search``: query text plus history), ``POST /items``, ``GET /items/{id}``,
``GET /health``. Model calls and item inserts run in worker threads under one lock, so the
event loop never blocks on the model; ``/recommend`` and ``/search`` calls are
micro-batched (:class:`MicroBatcher`), queries embedded once per batch.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, HTTPException

from gensid.data.catalog import render_text
from gensid.fusion import Hybrid
from gensid.fusion.hybrid import hybrid_run_dir
from gensid.live import ItemAdder
from gensid.live.store import AddedItem, ItemStore
from gensid.pipeline import Run, load_run
from gensid.serve.batcher import MicroBatcher
from gensid.serve.schemas import (
    AddItemsRequest,
    AddItemsResponse,
    Health,
    ItemOut,
    Recommendation,
    RecommendRequest,
    RecommendResponse,
    SearchRequest,
)
from gensid.text import TextEncoder


class Service:
    """A loaded run (or hybrid, :mod:`gensid.fusion.hybrid`) plus its added-items store; every method is
    thread-safe."""

    def __init__(self, run_dir: str | Path):
        self.hybrid: Hybrid | None = Hybrid.load(run_dir) if hybrid_run_dir(run_dir) else None
        self.run: Run = self.hybrid.run if self.hybrid else load_run(run_dir)
        self.adder = ItemAdder(self.run)
        self.store = ItemStore(self.run.run_dir / "catalog.sqlite")  # a hybrid adds items to its run
        self.lock = threading.Lock()
        self.trained_items = len(self.run.dataset.catalog)
        self.encoder: TextEncoder | None = None  # loaded by text_encoder(), at startup or on first use
        self.encoder_lock = threading.Lock()
        self.replay()

    def replay(self) -> None:
        """Re-insert the stored added items (with their stored SIDs and vectors)."""
        added = self.store.all()
        if added:
            self.adder.add([a.item_id for a in added], [a.fields for a in added],
                           torch.from_numpy(np.stack([a.vector for a in added])),
                           np.asarray([a.sid for a in added], dtype=np.int64))

    @property
    def beam_size(self) -> int:
        return self.run.cfg.eval.beam_size

    @property
    def task(self) -> str:
        return self.run.cfg.data.task

    def recommend_batch(self, histories: list[list[int]]) -> list[list[int]]:
        """Internal item-id histories (oldest first) -> ranked internal ids, ``beam_size`` each."""
        return self.rank(histories)

    def search_batch(self, requests: list[tuple[str, list[int]]]) -> list[list[int]]:
        """(query text, internal item-id history) pairs -> ranked internal ids, ``beam_size`` each."""
        queries = torch.from_numpy(self.text_encoder().encode([q for q, _ in requests], progress=False))
        return self.rank([h for _, h in requests], queries)

    def rank(self, histories: list[list[int]], queries: torch.Tensor | None = None) -> list[list[int]]:
        samples = self.run.history_samples(histories)
        with self.lock:
            ranked = (self.hybrid.rank(samples, queries) if self.hybrid
                      else self.run.rank(samples, queries, batch_size=len(histories)))
        return [[int(i) for i in row if i >= 0] for row in ranked]

    def add_items(self, request: AddItemsRequest) -> list[ItemOut]:
        """Embed, tokenize, commit to the store, then insert into the live index."""
        catalog = self.run.dataset.catalog
        fields = [dict(it.fields) for it in request.items]
        texts = [render(f, catalog.text_fields) for f in fields]
        self.refuse_existing(request)  # before the slow part; again under the lock for racing requests
        vectors = torch.from_numpy(self.text_encoder().encode(texts, progress=False))
        with self.lock:
            self.refuse_existing(request)
            sids = self.adder.sids(vectors)
            self.store.add([AddedItem(it.id, f, s.tolist(), v.numpy())
                            for it, f, s, v in zip(request.items, fields, sids, vectors, strict=True)])
            internal = self.adder.add([it.id for it in request.items], fields, vectors, sids)
        return [self.item_out(i) for i in internal]

    def refuse_existing(self, request: AddItemsRequest) -> None:
        existing = [it.id for it in request.items if it.id in self.run.dataset.catalog]
        if existing:
            raise HTTPException(409, f"item id(s) already in the catalog: {existing[:5]}")

    def text_encoder(self) -> TextEncoder:
        """The run's text encoder, loaded once (``embed_texts`` would reload it per request)."""
        with self.encoder_lock:  # concurrent first requests load it once
            if self.encoder is None:
                self.encoder = TextEncoder(self.run.cfg.text.model, self.run.cfg.text.batch_size)
        return self.encoder

    def item_out(self, internal: int) -> ItemOut:
        catalog = self.run.dataset.catalog
        return ItemOut(id=catalog.item_ids[internal], title=catalog.title(internal), fields=catalog.fields[internal],
                       sid=self.run.index.codes[internal].tolist(), added=internal >= self.trained_items)

    def internal_ids(self, external: list[str]) -> list[int]:
        catalog = self.run.dataset.catalog
        unknown = [i for i in external if i not in catalog]
        if unknown:
            raise HTTPException(404, f"unknown item id(s) in history: {unknown[:5]}")
        return [catalog.index_of(i) for i in external]


def render(fields: dict[str, str], text_fields: list[str]) -> str:
    """Item text as the catalog renders it; a 422 naming the fields when none is given."""
    text = render_text(fields, text_fields)
    if not text:
        raise HTTPException(422, f"an item needs at least one of the text fields {text_fields}; got {sorted(fields)}")
    return text


def create_app(run_dir: str | Path, max_batch: int = 64, max_wait_ms: float = 5.0,
               preload_text_encoder: bool = False) -> FastAPI:
    """The app for ``run_dir``; the run is loaded (and added items replayed) at startup, and the
    text encoder too with ``preload_text_encoder`` (else on the first ``POST /items`` or ``/search``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service = await asyncio.to_thread(Service, run_dir)
        if preload_text_encoder:
            await asyncio.to_thread(service.text_encoder)
        batch = service.search_batch if service.task == "search" else service.recommend_batch
        batcher = MicroBatcher(batch, max_batch, max_wait_ms)
        batcher.start()
        app.state.service, app.state.batcher = service, batcher
        yield
        await batcher.stop()
        service.store.close()

    app = FastAPI(title="gensid", summary="Generative recommendation with semantic IDs", lifespan=lifespan)

    def service() -> Service:
        return app.state.service

    def checked(task: str, k: int) -> Service:
        svc = service()
        if svc.task != task:
            other = "/search" if svc.task == "search" else "/recommend"
            raise HTTPException(422, f"this run was trained for data.task {svc.task!r}: use POST {other}")
        if k > svc.beam_size:
            raise HTTPException(422, f"k={k} is larger than the run's beam size {svc.beam_size}")
        return svc

    def response(svc: Service, ranked: list[int], k: int) -> RecommendResponse:
        catalog = svc.run.dataset.catalog
        return RecommendResponse(items=[Recommendation(rank=r, id=catalog.item_ids[i], title=catalog.title(i))
                                        for r, i in enumerate(ranked[:k], 1)])

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(request: RecommendRequest) -> RecommendResponse:
        svc = checked("rec", request.k)
        return response(svc, await app.state.batcher.submit(svc.internal_ids(request.history)), request.k)

    @app.post("/search", response_model=RecommendResponse)
    async def search(request: SearchRequest) -> RecommendResponse:
        svc = checked("search", request.k)
        if svc.encoder is None:  # first query: load the sentence encoder off the event loop
            await asyncio.to_thread(svc.text_encoder)
        ranked = await app.state.batcher.submit((request.query, svc.internal_ids(request.history)))
        return response(svc, ranked, request.k)

    @app.post("/items", response_model=AddItemsResponse, status_code=201)
    async def add_items(request: AddItemsRequest) -> AddItemsResponse:
        ids = [it.id for it in request.items]
        if len(set(ids)) != len(ids):
            raise HTTPException(422, "item ids repeat within the request")
        return AddItemsResponse(items=await asyncio.to_thread(service().add_items, request))

    @app.get("/items/{item_id}", response_model=ItemOut)
    async def get_item(item_id: str) -> ItemOut:
        svc = service()
        if item_id not in svc.run.dataset.catalog:
            raise HTTPException(404, f"unknown item id {item_id!r}")
        return svc.item_out(svc.run.dataset.catalog.index_of(item_id))

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        svc = service()
        return Health(status="ok", strategy=svc.run.cfg.train.strategy, items=len(svc.run.dataset.catalog),
                      added_items=len(svc.run.dataset.catalog) - svc.trained_items,
                      sid_sizes=svc.run.index.sizes,
                      hybrid=f"{svc.hybrid.scorer_name}, weight {svc.hybrid.weight}" if svc.hybrid else None)

    return app
