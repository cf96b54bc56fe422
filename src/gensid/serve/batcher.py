"""Micro-batching: concurrent requests wait a few ms and share one model call.

A background task takes the first queued request, collects more for up to ``max_wait_ms``
or until ``max_batch`` are queued, runs ``fn(inputs) -> outputs`` once in a worker
thread (the event loop keeps serving), and resolves every request's future.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    def __init__(self, fn: Callable[[list[In]], list[Out]], max_batch: int = 64, max_wait_ms: float = 5.0):
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] | None = None
        self.task: asyncio.Task | None = None
        self.batch_sizes: list[int] = []  # one entry per model call

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def _collect(self) -> list[tuple[In, asyncio.Future[Out]]]:
        batch = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(batch) < self.max_batch:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), timeout))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            batch = [(item, fut) for item, fut in batch if not fut.cancelled()]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            try:
                outputs = await asyncio.to_thread(self.fn, [item for item, _ in batch])
            except Exception as exc:  # the callers get the model's error, the loop keeps running
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), out in zip(batch, outputs, strict=True):
                if not fut.done():
                    fut.set_result(out)
