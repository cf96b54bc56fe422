"""Micro-batching: concurrent requests wait a few ms and share one model call.

A background task takes the first queued request, collects more for up to ``max_wait_ms``
or until ``max_batch`` are queued, runs ``fn(inputs) -> outputs`` once in a worker
thread (the event loop keeps serving), and resolves every request's future.
The queue holds at most ``max_queue`` requests: past that :meth:`MicroBatcher.submit` raises
:class:`Overloaded` at once (the service answers 503 with ``Retry-After``) rather than letting
waits grow without bound. :meth:`MicroBatcher.stop` drains: requests already queued are
answered, new ones are refused.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")
STOP = object()  # queued by stop(): everything before it is answered, then the loop ends


class Overloaded(Exception):
    """The queue is full, or the batcher is shutting down: try again later."""


class MicroBatcher(Generic[In, Out]):
    def __init__(self, fn: Callable[[list[In]], list[Out]], max_batch: int = 64, max_wait_ms: float = 5.0,
                 max_queue: int = 256, on_batch: Callable[[int], None] | None = None):
        if max_queue < 1:
            raise ValueError(f"max_queue {max_queue}: expected >= 1")
        self.fn, self.max_batch, self.max_wait, self.max_queue = fn, max_batch, max_wait_ms / 1000, max_queue
        self.on_batch = on_batch  # called with each model call's batch size
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.closing = False
        self.running: list[tuple[In, asyncio.Future[Out]]] = []  # the batch in the model now
        self.batch_sizes: deque[int] = deque(maxlen=1024)  # the latest model calls' batch sizes

    @property
    def depth(self) -> int:
        """Requests waiting for a model call (not those in the running one)."""
        return self.queue.qsize() if self.queue is not None else 0

    @property
    def full(self) -> bool:
        """Whether a request submitted now would be refused (:class:`Overloaded`)."""
        return self.closing or self.queue is None or self.queue.qsize() >= self.max_queue

    def start(self) -> None:
        self.queue = asyncio.Queue()  # bounded by submit (stop's marker must always fit)
        self.closing = False
        self.task = asyncio.create_task(self._run())

    async def stop(self, timeout: float = 30.0) -> None:
        """Refuse new requests, answer the queued ones (for up to ``timeout`` seconds), then end."""
        if self.task is None:
            return
        self.closing = True
        self.queue.put_nowait((STOP, None))
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout)
        except asyncio.TimeoutError:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        left = list(self.running)  # after a timeout: the batch cut short, and what was still queued
        while not self.queue.empty():
            left.append(self.queue.get_nowait())
        for _, fut in left:
            if fut is not None and not fut.done():
                fut.set_exception(Overloaded("the server is shutting down"))
        self.task = None

    async def submit(self, item: In) -> Out:
        """The output for ``item``, from a shared model call; :class:`Overloaded` if the queue is full."""
        if self.full:
            raise Overloaded("the server is shutting down" if self.closing or self.queue is None
                             else f"{self.max_queue} requests are waiting already")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((item, future))
        return await future

    async def _collect(self) -> tuple[list[tuple[In, asyncio.Future[Out]]], bool]:
        """(the next batch, whether the stop marker came after it)."""
        first = await self.queue.get()
        if first[0] is STOP:
            return [], True
        batch = [first]
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(batch) < self.max_batch:
            if self.queue.empty():  # wait for the next request, until the deadline
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
            else:
                # take what is queued without awaiting: under load one turn of the event loop can take
                # longer than max_wait, and a request per turn made batches of 1-2 (and starved the model)
                entry = self.queue.get_nowait()
            if entry[0] is STOP:
                return batch, True
            batch.append(entry)
        return batch, False

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = await self._collect()
            batch = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            if self.on_batch is not None:
                self.on_batch(len(batch))
            self.running = batch  # kept if the task is cancelled here: stop() fails these requests
            try:
                outputs = await asyncio.to_thread(self.fn, [item for item, _ in batch])
            except Exception as exc:  # the callers get the model's error, the loop keeps running
                self.running = []
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.running = []
            for (_, fut), out in zip(batch, outputs, strict=True):
                if not fut.done():
                    fut.set_result(out)
