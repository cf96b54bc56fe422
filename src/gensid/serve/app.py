"""The FastAPI app over a trained run directory.

Serves a run directory, a bundle (``gensid export``: no data needed) or a hybrid folder
(``gensid hybrid``: the run mixed with a full-catalog scorer); no data split is built.
Endpoints: ``POST /recommend`` (runs of ``data.task: rec``), ``POST /search`` (runs of
``data.task: search``: query text plus history), ``POST /items``, ``GET /items/{id}``,
``GET /health``, ``GET /metrics`` (Prometheus). Model calls and item inserts run in worker
threads (the run's lock taken by a model call, and by an insert only to change the run, after
encoding and committing the items), so the event loop never blocks on the model; ``/recommend`` and
``/search`` calls are micro-batched (:class:`MicroBatcher`, a bounded queue: 503 with
``Retry-After`` when full, given before the request is parsed), queries embedded once per batch.
With a token, ``POST /items`` needs it (and every read but ``/health`` too with ``token_reads``);
request bodies over ``max_body_bytes`` get a 413 (:mod:`gensid.serve.guard`).
``exclude_seen`` drops the history's items from an answer, ranking deeper so that k remain.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from fastapi import Depends, FastAPI, HTTPException, Response
from fastapi.exceptions import RequestValidationError
from pydantic_core import to_json

from gensid.bundle import load_servable
from gensid.data.catalog import render_text
from gensid.fusion import Hybrid
from gensid.fusion.hybrid import hybrid_run_dir
from gensid.live import ItemAdder, ItemStore, replay
from gensid.live.store import STORE_FILE, AddedItem
from gensid.run import Run, top_k
from gensid.serve.batcher import MicroBatcher, Overloaded
from gensid.serve.guard import BodyLimit, Shed, bearer_check, preview, preview_ids, validation_error
from gensid.serve.metrics import CONTENT_TYPE, RequestMetrics, ServiceMetrics
from gensid.serve.schemas import (
    AddItemsRequest,
    AddItemsResponse,
    Health,
    ItemOut,
    RecommendRequest,
    RecommendResponse,
    SearchRequest,
)
from gensid.text import TextEncoder

RETRY_AFTER_S = 1
RANKING_PATHS = ("/recommend", "/search")  # the endpoints that wait for the micro-batcher


@dataclass
class Ask:
    """One ranking request: internal item-id history (oldest first), how many items to rank, and
    the query text of a search run."""

    history: list[int]
    depth: int
    query: str | None = None


class Service:
    """A loaded run (or hybrid, :mod:`gensid.fusion.hybrid`) plus its added-items store; every method is
    thread-safe."""

    def __init__(self, run_dir: str | Path):
        # no data split is built: serving needs the catalog only (a bundle has no data at all)
        self.hybrid: Hybrid | None = Hybrid.load(run_dir, splits=False) if hybrid_run_dir(run_dir) else None
        self.run: Run = self.hybrid.run if self.hybrid else load_servable(run_dir)
        self.adder = ItemAdder(self.run)
        self.store = ItemStore(self.run.run_dir / STORE_FILE)  # a hybrid adds items to its run
        self.lock = threading.Lock()  # the run: held by a model call, and by a writer changing the run
        self.write_lock = threading.Lock()  # POST /items, one at a time (encoding and committing need no model)
        self.trained_items = len(self.run.dataset.catalog)
        self.encoder: TextEncoder | None = None  # loaded by text_encoder(), at startup or on first use
        self.encoder_lock = threading.Lock()
        replay(self.adder, self.store.all())

    @property
    def beam_size(self) -> int:
        return self.run.cfg.eval.beam_size

    @property
    def task(self) -> str:
        return self.run.cfg.data.task

    def recommend_batch(self, histories: list[list[int]]) -> list[list[int]]:
        """Internal item-id histories (oldest first) -> ranked internal ids, ``beam_size`` each."""
        return self.answer([Ask(h, self.beam_size) for h in histories])

    def search_batch(self, requests: list[tuple[str, list[int]]]) -> list[list[int]]:
        """(query text, internal item-id history) pairs -> ranked internal ids, ``beam_size`` each."""
        return self.answer([Ask(h, self.beam_size, q) for q, h in requests])

    def answer(self, asks: list[Ask]) -> list[list[int]]:
        """Ranked internal ids for each request, ``depth`` each (one model call per distinct depth;
        a search batch embeds its queries in one encoder call)."""
        queries = None
        if self.task == "search":
            queries = torch.from_numpy(self.text_encoder().encode([a.query for a in asks], progress=False))
        out: list[list[int]] = [[] for _ in asks]
        for depth in sorted({a.depth for a in asks}):
            rows = [i for i, a in enumerate(asks) if a.depth == depth]
            ranked = self.rank([asks[i].history for i in rows], None if queries is None else queries[rows], depth)
            for i, r in zip(rows, ranked, strict=True):
                out[i] = r
        return out

    def rank(self, histories: list[list[int]], queries: torch.Tensor | None = None, depth: int | None = None
             ) -> list[list[int]]:
        samples = self.run.history_samples(histories)
        depth = depth or self.beam_size
        with self.lock:
            ranked = (self.hybrid.rank(samples, queries, k=depth) if self.hybrid
                      else self.run.rank(samples, queries, beam_size=depth, batch_size=len(histories)))
        return [[int(i) for i in row if i >= 0] for row in ranked]

    def add_items(self, request: AddItemsRequest) -> list[ItemOut]:
        """Embed, tokenize, commit to the store, then insert into the live index."""
        catalog = self.run.dataset.catalog
        fields = [dict(it.fields) for it in request.items]
        texts = [render(f, catalog.text_fields) for f in fields]
        self.refuse_existing(request)  # before the slow part; again under the lock for racing requests
        vectors = torch.from_numpy(self.text_encoder().encode(texts, progress=False))
        with self.write_lock:  # one writer at a time; rankings go on until the run itself changes
            self.refuse_existing(request)
            sids = self.adder.sids(vectors)
            self.store.add([AddedItem(it.id, f, s.tolist(), v.numpy())
                            for it, f, s, v in zip(request.items, fields, sids, vectors, strict=True)])
            with self.lock:  # committed to the store (durable) before any answer can hold the items
                internal = self.adder.add([it.id for it in request.items], fields, vectors, sids)
        return [self.item_out(i) for i in internal]

    def refuse_existing(self, request: AddItemsRequest) -> None:
        existing = [it.id for it in request.items if it.id in self.run.dataset.catalog]
        if existing:
            raise HTTPException(409, f"item id(s) already in the catalog: {preview_ids(existing)}")

    def text_encoder(self) -> TextEncoder:
        """The run's text encoder, loaded once (``embed_texts`` would reload it per request)."""
        with self.encoder_lock:  # concurrent first requests load it once
            if self.encoder is None:
                self.encoder = TextEncoder(self.run.cfg.text.model, self.run.cfg.text.batch_size)
        return self.encoder

    def item_out(self, internal: int) -> ItemOut:
        catalog = self.run.dataset.catalog
        return ItemOut(id=catalog.item_ids[internal], title=catalog.title(internal), fields=catalog.fields[internal],
                       sid=self.run.sid(internal), added=internal >= self.trained_items)

    def internal_ids(self, external: list[str]) -> list[int]:
        catalog = self.run.dataset.catalog
        unknown = [i for i in external if i not in catalog]
        if unknown:
            raise HTTPException(404, f"unknown item id(s) in history: {preview_ids(unknown)}")
        return [catalog.index_of(i) for i in external]


def render(fields: dict[str, str], text_fields: list[str]) -> str:
    """Item text as the catalog renders it; a 422 naming the fields when none is given."""
    text = render_text(fields, text_fields)
    if not text:
        raise HTTPException(422, f"an item needs at least one of the text fields {text_fields}; got {sorted(fields)}")
    return text


def create_app(run_dir: str | Path, max_batch: int = 64, max_wait_ms: float = 5.0,
               preload_text_encoder: bool = False, token: str | None = None, token_reads: bool = False,
               max_queue: int = 256, max_body_bytes: int = 1 << 20) -> FastAPI:
    """The app for ``run_dir``; the run is loaded (and added items replayed) at startup, and the
    text encoder too with ``preload_text_encoder`` (else on the first ``POST /items`` or ``/search``).
    ``token``: ``POST /items`` needs ``Authorization: Bearer <token>`` (every read but ``/health``
    too with ``token_reads``); ``max_queue``: requests that may wait for a model call (503 past it);
    ``max_body_bytes``: larger request bodies get 413."""
    metrics = ServiceMetrics()
    app = FastAPI(title="gensid", summary="Generative recommendation with semantic IDs",
                  lifespan=lifespan(run_dir, preload_text_encoder, max_batch, max_wait_ms, max_queue, metrics))
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(Shed, full=lambda: getattr(app.state, "batcher", None) is not None and app.state.batcher.full,
                       paths=RANKING_PATHS, retry_after_s=RETRY_AFTER_S)  # outside BodyLimit: reads no body
    app.add_middleware(RequestMetrics, metrics=metrics, routes=lambda: app.router.routes)
    app.state.metrics = metrics
    # a route checks the token only where there is one to check (no dependency to solve per request)
    write = [Depends(bearer_check(token))] if token else []
    read = write if token_reads else []
    add_ranking_routes(app, read)
    add_item_routes(app, read, write, metrics)
    return app


def lifespan(run_dir: str | Path, preload_text_encoder: bool, max_batch: int, max_wait_ms: float, max_queue: int,
             metrics: ServiceMetrics):
    """The app's startup and shutdown: load the run (and the text encoder), start the micro-batcher."""

    @asynccontextmanager
    async def run_service(app: FastAPI):
        service = await asyncio.to_thread(Service, run_dir)
        if preload_text_encoder:
            await asyncio.to_thread(service.text_encoder)
        batcher = MicroBatcher(service.answer, max_batch, max_wait_ms, max_queue, metrics.batch_size.observe)
        batcher.start()
        # what startup made (the run, the sentence encoder: millions of objects) lives as long as the
        # process; frozen, the garbage collector's full passes skip it instead of pausing every request
        gc.freeze()
        metrics.watch(lambda: batcher.depth, lambda: len(service.run.dataset.catalog),
                      lambda: len(service.run.dataset.catalog) - service.trained_items)
        app.state.service, app.state.batcher = service, batcher
        yield
        await batcher.stop()  # answers what is queued; uvicorn has finished the open requests' reads
        service.store.close()

    return run_service


def add_ranking_routes(app: FastAPI, read: list) -> None:
    """``POST /recommend`` and ``POST /search``: answered through the micro-batcher."""

    def checked(task: str, k: int) -> Service:
        svc = app.state.service
        if svc.task != task:
            other = "/search" if svc.task == "search" else "/recommend"
            raise HTTPException(422, f"this run was trained for data.task {svc.task!r}: use POST {other}")
        if k > svc.beam_size:
            raise HTTPException(422, f"k={k} is larger than the run's beam size {svc.beam_size}")
        return svc

    async def ranked(svc: Service, history: list[str], k: int, exclude_seen: bool | None,
                     query: str | None = None) -> Response:
        """The top ``k`` as a ready JSON body of :class:`RecommendResponse`: no pydantic model per item
        for FastAPI to validate again and serialize (about 30 µs of the event loop per answer)."""
        internal = svc.internal_ids(history)
        exclude = svc.run.exclude_seen_default if exclude_seen is None else exclude_seen
        try:
            ranking = await app.state.batcher.submit(Ask(internal, svc.run.ranking_depth(k, internal, exclude), query))
        except Overloaded as exc:
            raise HTTPException(503, f"busy: {exc}; retry shortly",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        catalog = svc.run.dataset.catalog
        items = [{"rank": r, "id": catalog.item_ids[i], "title": catalog.title(i)}
                 for r, i in enumerate(top_k(ranking, k, internal if exclude else ()), 1)]
        return Response(to_json({"items": items}), media_type="application/json")

    @app.post("/recommend", response_model=RecommendResponse, dependencies=read)
    async def recommend(request: RecommendRequest) -> Response:
        return await ranked(checked("rec", request.k), request.history, request.k, request.exclude_seen)

    @app.post("/search", response_model=RecommendResponse, dependencies=read)
    async def search(request: SearchRequest) -> Response:
        svc = checked("search", request.k)
        if svc.encoder is None:  # first query: load the sentence encoder off the event loop
            await asyncio.to_thread(svc.text_encoder)
        return await ranked(svc, request.history, request.k, request.exclude_seen, request.query)


def add_item_routes(app: FastAPI, read: list, write: list, metrics: ServiceMetrics) -> None:
    """``POST /items``, ``GET /items/{id}``, ``GET /health`` and ``GET /metrics``."""

    @app.post("/items", response_model=AddItemsResponse, status_code=201, dependencies=write)
    async def add_items(request: AddItemsRequest) -> AddItemsResponse:
        ids = [it.id for it in request.items]
        if len(set(ids)) != len(ids):
            raise HTTPException(422, "item ids repeat within the request")
        added = await asyncio.to_thread(app.state.service.add_items, request)
        metrics.items_added.inc(len(added))
        return AddItemsResponse(items=added)

    @app.get("/items/{item_id}", response_model=ItemOut, dependencies=read)
    async def get_item(item_id: str) -> ItemOut:
        svc = app.state.service
        if item_id not in svc.run.dataset.catalog:
            raise HTTPException(404, f"unknown item id {preview(item_id)!r}")
        return svc.item_out(svc.run.dataset.catalog.index_of(item_id))

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        svc = app.state.service
        return Health(status="ok", strategy=svc.run.cfg.method.family, items=len(svc.run.dataset.catalog),
                      added_items=len(svc.run.dataset.catalog) - svc.trained_items,
                      sid_sizes=svc.run.index.sizes if svc.run.index is not None
                      else [svc.run.cfg.parallel.codebook_size] * svc.run.cfg.parallel.digits,
                      hybrid=f"{svc.hybrid.scorer_name}, weight {svc.hybrid.weight}" if svc.hybrid else None)

    @app.get("/metrics", dependencies=read, response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)
