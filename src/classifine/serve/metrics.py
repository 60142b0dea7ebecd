"""Prometheus metrics and the request guard (body-size limit) of the HTTP server.

The guard is plain ASGI rather than a FastAPI dependency because it must refuse an oversized body
*before* anything parses it (a 2 GB POST would otherwise be read into memory first), and because it
is the one place that sees every response, including 404s and errors raised outside routes.
"""
from __future__ import annotations

import time

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, GCCollector, Histogram,
                               PlatformCollector, ProcessCollector, generate_latest)
from starlette.responses import JSONResponse

METHODS = {"GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class HTTPMetrics:
    """One registry per app, so several apps (tests, benchmarks) never collide in the global one."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # the global registry has these built in; a private one must add them (memory, CPU, fds, python_info)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._requests = Counter("classifine_http_requests", "HTTP requests by route, method and status",
                                 ["path", "method", "status"], registry=r)
        self._latency = Histogram("classifine_http_request_seconds", "HTTP request latency by route",
                                  ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self._batch = Histogram("classifine_batch_records", "records per model call (micro-batch size)",
                                buckets=BATCH_BUCKETS, registry=r)
        self._model = Histogram("classifine_model_seconds", "seconds per model call", buckets=LATENCY_BUCKETS, registry=r)
        self._records = Counter("classifine_records", "records classified", registry=r)
        self._errors = Counter("classifine_errors", "requests answered with an error, by type", ["type"], registry=r)
        self._queued = Gauge("classifine_queued_records", "records waiting for the model", registry=r)
        self._rerun = Gauge("classifine_fp32_rerun_records", "records the onnx-int8-checked engine ran again in fp32 "
                            "(their int8 answer was near a decision boundary), since the start", registry=r)

    def request(self, path: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self._requests.labels(path, method, str(status)).inc()
        self._latency.labels(path).observe(seconds)

    def batch(self, records: int, seconds: float) -> None:
        self._batch.observe(records)
        self._model.observe(seconds)

    def records(self, n: int) -> None:
        self._records.inc(n)

    def error(self, kind: str) -> None:
        self._errors.labels(kind).inc()

    def render(self, queued: int, rerun: int = 0) -> tuple[bytes, str]:
        self._queued.set(queued)
        self._rerun.set(rerun)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _too_large(limit: int, found: str) -> JSONResponse:
    return JSONResponse({"error": {"type": "body_too_large", "message": f"the request body is larger than {limit} bytes",
                                   "problems": [f"found {found}; send fewer or shorter records per request"]}},
                        status_code=413)


class RequestGuard:
    """ASGI middleware: refuse bodies over ``max_body_bytes`` with 413, and record every request."""

    def __init__(self, app, metrics: HTTPMetrics, max_body_bytes: int):
        self.app, self.metrics, self.limit = app, metrics, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def send_and_record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                receive = await self._buffered(scope, receive, send_and_record)
                if receive is None:
                    return
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            self.metrics.request(getattr(route, "path", "unmatched"), scope["method"], status, time.perf_counter() - t0)

    async def _buffered(self, scope, receive, send):
        """Read the whole body (at most ``limit`` bytes) and return a receive that replays it;
        None when the request was answered here (413) or the client went away."""
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            self.metrics.error("body_too_large")
            await _too_large(self.limit, f"Content-Length {int(declared)}")(scope, receive, send)
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                self.metrics.error("body_too_large")
                await _too_large(self.limit, f"more than {self.limit} bytes")(scope, receive, send)
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect like the real receive
        return replay
