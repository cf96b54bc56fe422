"""What keeps the service safe to expose: bearer tokens, a body-size limit, short error replies.

- Writes (``POST /items``) need ``Authorization: Bearer <token>`` when the app has a token;
  reads too with ``token_reads``. ``gensid serve`` refuses to listen beyond loopback without a
  token (:func:`check_exposure`). ``GET /health`` stays open (liveness probes).
- :class:`BodyLimit` answers 413 to a body larger than ``max_bytes`` before anything parses it
  (by its ``Content-Length``, or while reading a body sent without one).
- :class:`Shed` answers 503 with ``Retry-After`` to a ranking request while the model's queue is
  full, before anything reads or parses it.
- Error replies quote at most a short preview of the input (:func:`preview`): a validation
  error lists at most ``MAX_ERRORS`` errors, each input and location part cut to ``PREVIEW_CHARS``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gensid.errors import InputError

PREVIEW_CHARS = 40
MAX_ERRORS = 5
LOOPBACK_NAMES = ("localhost",)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def preview(value: object, chars: int = PREVIEW_CHARS) -> object:
    """A short stand-in for user input in an error reply: strings cut to ``chars`` (with the
    length when cut), containers summarised by their size, small scalars as they are."""
    if isinstance(value, str):
        return value if len(value) <= chars else f"{value[:chars]}... ({len(value)} characters)"
    if isinstance(value, (list, tuple, dict, set)):
        return f"<{type(value).__name__} of {len(value)}>"
    if value is None or isinstance(value, (bool, int, float)):
        return value if len(repr(value)) <= chars else preview(repr(value), chars)
    return preview(repr(value), chars)


def preview_ids(ids: list[str], most: int = 3) -> str:
    """``['a', 'b', ...]`` of at most ``most`` ids, each cut by :func:`preview`, and how many more."""
    shown = ", ".join(repr(preview(str(i))) for i in ids[:most])
    return f"[{shown}]" + (f" and {len(ids) - most} more" if len(ids) > most else "")


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 listing what pydantic found wrong (location, message), never the whole input."""
    errors = exc.errors()
    detail: list[dict[str, object]] = []
    for error in errors[:MAX_ERRORS]:
        item: dict[str, object] = {"loc": [preview(part) for part in error.get("loc", ())][:8],
                                   "msg": preview(str(error.get("msg", "")), 200), "type": error.get("type")}
        if "input" in error:
            item["input"] = preview(error["input"])
        detail.append(item)
    if len(errors) > MAX_ERRORS:
        detail.append({"msg": f"and {len(errors) - MAX_ERRORS} more errors"})
    return JSONResponse({"detail": detail}, status_code=422)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable only from this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, token: str | None, token_reads: bool) -> None:
    """``InputError`` (one line) when a server on ``host`` would take writes from other machines
    without a token, or when ``token_reads`` has no token to check."""
    if token_reads and not token:
        raise InputError("--token-reads needs a token: give --token T or set GENSID_TOKEN")
    if not token and not is_loopback(host):
        raise InputError(f"--host {host} listens beyond loopback: give --token T or set GENSID_TOKEN "
                         "(POST /items then needs 'Authorization: Bearer T'), or serve on 127.0.0.1")


def bearer_check(token: str) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency: 401 unless the request carries ``Authorization: Bearer <token>``.
    Async, so FastAPI calls it on the event loop: a plain function would go through the thread
    pool on every request (a thread hop per request)."""
    expected = token.encode()

    async def check(request: Request) -> None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise HTTPException(401, "this endpoint needs 'Authorization: Bearer <token>' with the server's token",
                                headers={"WWW-Authenticate": "Bearer"})

    return check


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, before the app reads any of it."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self.too_large(send)
            return
        chunks, size = [], 0
        while True:  # read the body now (at most max_bytes of it), then hand it on
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self.too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect

        await self.app(scope, replay, send)

    async def too_large(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body larger than {self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class Shed:
    """ASGI middleware: 503 with ``Retry-After`` for a request to one of ``paths`` while ``full()``,
    before its body is read or parsed. Under overload most requests are refused, and a refusal that
    went through FastAPI cost as much of the event loop as an answer, which the admitted requests
    were waiting for."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], full: Callable[[], bool],
                 paths: tuple[str, ...], retry_after_s: int):
        self.app, self.full, self.paths = app, full, paths
        body = json.dumps({"detail": "busy: the queue of requests waiting for the model is full (or the server is stopping); "
                           "retry shortly"})
        self.body = body.encode()
        self.headers = [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode()),
                        (b"retry-after", str(retry_after_s).encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths or not self.full():
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 503, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})
