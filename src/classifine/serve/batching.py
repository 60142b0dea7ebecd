"""Micro-batching for the HTTP server: concurrent requests become one model call.

One worker task drains a queue of requests: it takes the first waiting request, then gathers more
until ``max_batch_size`` records are collected or ``max_wait_ms`` has passed, and runs the model on
a single dedicated thread (the event loop never blocks, and model calls never overlap: torch already
uses every core inside one call, so two concurrent calls would only fight over them). Results are
scattered back to each request's future. Requests are never split, so one request's records always
come from the same model call.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable


class Overloaded(Exception):
    """More records are waiting than the server accepts; the client should retry later."""


class ShuttingDown(Exception):
    """The server is draining for shutdown and takes no new work."""


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future


class MicroBatcher:
    """``await batcher.submit(texts)`` returns ``predict(texts)``, computed together with other requests.

    ``batching=False`` turns gathering off (one model call per request); the benchmark compares both.
    ``observe(records, seconds)`` is called after each model call (metrics).
    """

    def __init__(self, predict: Callable[[list[str]], list], max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 batching: bool = True, max_queue: int = 4096,
                 observe: Callable[[int, float], None] | None = None):
        self.predict, self.max_batch_size, self.max_wait = predict, max_batch_size, max_wait_ms / 1000.0
        self.batching, self.max_queue, self.observe = batching, max_queue, observe
        self.waiting = 0  # records queued, not yet handed to the model
        self._pending: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._closing = False
        self._last_jobs = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="classifine-model")

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._worker = asyncio.create_task(self._run(), name="classifine-batcher")

    async def submit(self, texts: list[str]) -> list:
        if self._closing:
            raise ShuttingDown("the server is shutting down")
        if self._worker is None:  # an ASGI host that skips the lifespan (some test clients) still works
            await self.start()
        if self.waiting and self.waiting + len(texts) > self.max_queue:
            raise Overloaded(f"{self.waiting} records are already waiting (limit {self.max_queue})")
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self.waiting += len(texts)
        self._wakeup.set()
        return await job.future

    async def close(self) -> None:
        """Stop taking work, finish everything already queued, then stop the worker."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._worker is not None:
            await self._worker
        self._executor.shutdown(wait=True)

    def _take(self) -> _Job | None:
        job = self._pending.popleft()
        self.waiting -= len(job.texts)
        return None if job.future.done() else job  # a client that went away needs no answer

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            first = self._take()
            if first is None:
                continue
            jobs, n = [first], len(first.texts)
            # a lone client gains nothing from waiting: wait only when requests have been arriving together
            wait = self.max_wait if (self._last_jobs > 1 or self._pending) else 0.0
            deadline = loop.time() + wait
            while self.batching and n < self.max_batch_size:
                if not self._pending:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or self._closing:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except TimeoutError:
                        break
                    continue
                if n + len(self._pending[0].texts) > self.max_batch_size:
                    break
                job = self._take()
                if job is not None:
                    jobs.append(job)
                    n += len(job.texts)
            self._last_jobs = len(jobs)
            await self._call(loop, jobs, n)

    async def _call(self, loop, jobs: list[_Job], n: int) -> None:
        texts = [t for job in jobs for t in job.texts]
        t0 = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.predict, texts)
        except Exception as e:  # the model failed: every request of this batch gets the error
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        if self.observe is not None:
            self.observe(n, time.perf_counter() - t0)
        start = 0
        for job in jobs:
            end = start + len(job.texts)
            if not job.future.done():
                job.future.set_result(results[start:end])
            start = end
