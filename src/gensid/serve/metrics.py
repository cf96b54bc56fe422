"""Prometheus metrics of one app (``GET /metrics``, text format 0.0.4), in the app's own registry.

- ``gensid_requests_total{endpoint, method, status}``: answered requests, by route template
  (``/items/{item_id}``, not the id: the label set stays small) and status code;
- ``gensid_request_duration_seconds{endpoint}``: latency histogram;
- ``gensid_batch_size``: requests per model call (micro-batching);
- ``gensid_queue_depth``: requests waiting for a model call;
- ``gensid_items_added_total``: items added by ``POST /items`` since the process started;
  ``gensid_catalog_items`` and ``gensid_added_items``: the catalog now (trained + added) and its
  added part (replayed from ``catalog.sqlite`` included).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match

from gensid.serve.guard import Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("gensid_requests", "answered HTTP requests", ["endpoint", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("gensid_request_duration_seconds", "time from request to the end of the answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("gensid_batch_size", "requests answered by one model call",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.items_added = Counter("gensid_items_added", "items added by POST /items since the process started",
                                   registry=self.registry)
        self.queue_depth = Gauge("gensid_queue_depth", "requests waiting for a model call", registry=self.registry)
        self.catalog_items = Gauge("gensid_catalog_items", "items in the served catalog (trained and added)",
                                   registry=self.registry)
        self.added_items = Gauge("gensid_added_items", "items in the catalog that were added over HTTP",
                                 registry=self.registry)

    def watch(self, queue_depth: Callable[[], float], catalog_items: Callable[[], float],
              added_items: Callable[[], float]) -> None:
        """Gauges read at each scrape."""
        self.queue_depth.set_function(queue_depth)
        self.catalog_items.set_function(catalog_items)
        self.added_items.set_function(added_items)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware counting every answered request (413s of the body limit and 500s included)."""

    def __init__(self, app, metrics: ServiceMetrics, routes: Callable[[], list]):
        self.app, self.metrics, self.routes = app, metrics, routes

    def endpoint(self, scope: Scope) -> str:
        """The route template of a request: the route the router matched (it sets ``scope["route"]``),
        else (a 413 answered before routing, a 404) the first route that matches."""
        if "route" in scope:
            return getattr(scope["route"], "path", "other")
        for route in self.routes():
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return getattr(route, "path", "other")
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            endpoint = self.endpoint(scope)
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
