"""HTTP serving of a run: ``classifine serve RUN``.

No ``from __future__ import annotations`` here: FastAPI reads the generated request model from the
route's annotation at run time.

FastAPI + uvicorn. The request and response schemas are generated from the run's task spec, so the
OpenAPI document names the task's text fields and labels. Concurrent requests are micro-batched
(``batching.py``). Every problem with a request is answered with a 4xx and a JSON body
``{"error": {"type", "message", "problems": [...]}}`` listing all problems at once; a 500 means a bug
in the server, never bad input.
"""

import difflib
import gc
import hmac
import importlib.util
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import asdict
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.data import records_to_texts
from ..core.task import TaskSpec
from ..errors import ClassifineError, ConfigError, DataError, TaskError
from ..predict.predictor import Predictor
from .batching import MicroBatcher, Overloaded, ShuttingDown
from .metrics import HTTPMetrics, RequestGuard
from .protocols import add_protocols
from .schemas import ERROR_RESPONSES, ServeSettings, schemas, task_document
from .tasks import add_task_routes, predict_items, served_tasks

log = logging.getLogger("classifine.serve")
TOKEN_ENV = "CLASSIFINE_TOKEN"
DOCS_ASSETS = "/docs-assets"
DOCS_PACKAGE = "fastapi_offline"  # ships Swagger UI's and ReDoc's scripts as package data


# --- errors -----------------------------------------------------------------------------------

def error_response(status: int, type_: str, message: str, problems: list[str] | None = None,
                   headers: dict | None = None) -> JSONResponse:
    body = {"error": {"type": type_, "message": message, "problems": problems or []}}
    return JSONResponse(body, status_code=status, headers=headers)


def _describe(err: dict, fields: list[str]) -> str:
    parts = list(err.get("loc", ()))
    if parts[:1] == ["body"]:
        parts = parts[1:]
    loc = ".".join(str(x) for x in parts) or "body"
    msg = err.get("msg", "invalid").removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden" and len(parts) == 3 and parts[0] == "inputs":
        hint = difflib.get_close_matches(str(parts[-1]), fields, n=1)
        msg = f"unknown field; the task's text fields are {fields}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    return f"{loc}: {msg}"


_STATUS = {DataError: 422, TaskError: 422, ConfigError: 422}
def _install_error_handlers(app: FastAPI, metrics: HTTPMetrics, fields: list[str]) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        problems = [_describe(e, fields) for e in errors]
        if any(e.get("type") == "json_invalid" for e in errors):
            metrics.error("json_invalid")
            return error_response(400, "invalid_json", "the request body is not valid JSON", problems)
        if any(e.get("type") == "too_long" and tuple(e.get("loc", ()))[-1:] == ("inputs",) for e in errors):
            metrics.error("too_many_records")
            return error_response(413, "too_many_records", "too many records in one request", problems)
        if not request.headers.get("content-type", "").startswith("application/json"):
            problems.append("send the body as JSON with the header 'Content-Type: application/json'")
        metrics.error("invalid_request")
        return error_response(422, "invalid_request", f"the request has {len(problems)} problem(s)", problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, "http_error", str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(ClassifineError)
    async def library_error(request: Request, exc: ClassifineError):
        status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 500)
        metrics.error(type(exc).__name__)
        return error_response(status, type(exc).__name__, exc.summary, exc.problems)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded):
        metrics.error("overloaded")
        return error_response(503, "overloaded", str(exc), ["retry after a moment"], headers={"Retry-After": "1"})

    @app.exception_handler(ShuttingDown)
    async def draining(request: Request, exc: ShuttingDown):
        return error_response(503, "shutting_down", str(exc), ["retry against another replica or after the restart"],
                              headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):
        log.exception("unhandled error while serving %s", request.url.path)
        metrics.error("internal")
        return error_response(500, "internal_error", f"{type(exc).__name__} in the server; this is a bug, please report it")


# --- the app ----------------------------------------------------------------------------------

def create_app(predictor, settings: ServeSettings | None = None) -> FastAPI:
    """A FastAPI app serving ``predictor`` (anything with ``.task`` and ``.predict_texts(texts)``)."""
    settings = settings or ServeSettings()
    problems = settings.problems()
    if problems:
        raise ConfigError("invalid serve settings:", problems)
    task: TaskSpec = predictor.task
    record, request_model, response_model = schemas(task, settings)
    metrics = HTTPMetrics()
    predictors = served_tasks(predictor)
    # one queue and one model thread for every task: requests of different tasks share a model call's
    # batch (grouped by task inside it), so the model is never run by two threads at once
    batcher = MicroBatcher(partial(predict_items, predictors), settings.max_batch_size, settings.max_wait_ms,
                           settings.batching, settings.max_queue, observe=metrics.batch)
    document = task_document(predictor, settings, record, response_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        yield
        # uvicorn has stopped accepting and waited for in-flight requests; finish anything still queued
        await batcher.close()

    labels = ", ".join(task.label_names) or task.entity
    app = FastAPI(title=f"classifine: {task.name}", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=(f"{task.kind} classifier for task '{task.name}'. Text fields: {task.text}. "
                               f"Labels: {labels}.\n\n{task.instruction or ''}"))
    app.state.settings, app.state.batcher, app.state.metrics = settings, batcher, metrics
    _install_error_handlers(app, metrics, list(task.text))
    bearer = HTTPBearer(auto_error=False, description="set when the server runs with --token or CLASSIFINE_TOKEN")

    def token_ok(request: Request) -> bool:
        if settings.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("utf-8", "replace"),
                                                                 settings.token.encode("utf-8"))
        if not ok:
            metrics.error("unauthorized")
        return ok

    def authorized(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not token_ok(request):
            raise StarletteHTTPException(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                                         headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorized)]

    async def predict(texts: list[str], name: str = task.name) -> list[dict]:
        outputs = await batcher.submit([(name, t) for t in texts])
        metrics.records(len(texts))
        return outputs

    @app.post("/v1/classify", response_model=response_model, dependencies=guarded, responses=ERROR_RESPONSES,
              summary=f"Classify 1 to {settings.max_records} records")
    async def classify(body: request_model):  # type: ignore[valid-type]
        records = [r.model_dump(by_alias=True) for r in body.inputs]
        return {"outputs": await predict(records_to_texts(task, records, source="request"))}

    @app.get("/v1/task", dependencies=guarded, responses={401: ERROR_RESPONSES[401]},
             summary="The task spec: kind, text fields, labels, limits and JSON schemas")
    async def get_task() -> dict:
        return document

    @app.get("/healthz", summary="Liveness and readiness")
    async def healthz() -> dict:
        return {"status": "ok", "task": task.name, "tasks": list(predictors), "queued_records": batcher.waiting}

    add_task_routes(app, predictors, settings, predict, guarded)

    @app.get("/metrics", dependencies=guarded, responses={401: ERROR_RESPONSES[401]},
             response_class=Response, summary="Prometheus metrics (text format)")
    async def prometheus() -> Response:
        rerun = sum(p.check.rows_checked for p in predictors.values() if getattr(p, "check", None) is not None)
        body, content_type = metrics.render(batcher.waiting, rerun)
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(_playground_html())

    add_protocols(app, task, predict, settings, settings.model_name or task.name, _version(), token_ok)
    _add_docs(app)

    app.add_middleware(RequestGuard, metrics=metrics, max_body_bytes=settings.body_limit(len(task.text)))
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("classifine")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
        return "0+unknown"


def _playground_html() -> str:
    return resources.files("classifine.serve").joinpath("static/playground.html").read_text(encoding="utf-8")


def _add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their scripts and styles served by this app rather than
    FastAPI's default CDN, so both work where no CDN is reachable. Public like /openapi.json: the
    pages only describe the API; Swagger UI's "Authorize" sends the token to the guarded routes."""
    if importlib.util.find_spec(DOCS_PACKAGE) is None:
        raise ConfigError(f"{DOCS_PACKAGE} is not installed: it holds the offline /docs and /redoc pages",
                          ["install the serve extra: pip install -e '.[serve]'"])
    # a route rather than app.mount: mounts are invisible to the metrics' route labels
    files = StaticFiles(packages=[(DOCS_PACKAGE, "static")])

    @app.get(DOCS_ASSETS + "/{name}", include_in_schema=False)
    async def docs_asset(name: str, request: Request) -> Response:
        return await files.get_response(name, request.scope)

    def urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that strips a prefix
        return root + app.openapi_url, root + DOCS_ASSETS

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        openapi, assets = urls(request)
        return get_swagger_ui_html(openapi_url=openapi, title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{assets}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{assets}/swagger-ui.css",
                                   swagger_favicon_url=f"{assets}/favicon.png",
                                   swagger_ui_parameters=app.swagger_ui_parameters)

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        openapi, assets = urls(request)
        return get_redoc_html(openapi_url=openapi, title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{assets}/redoc.standalone.js", redoc_favicon_url=f"{assets}/favicon.png",
                              with_google_fonts=False)


# --- running it -------------------------------------------------------------------------------

def load_backend(run_dir: str | Path, backend: Literal["torch", "vllm"] = "torch", trust_remote_code: bool = False):
    """The predictor behind the API. ``torch`` loads the run's own Predictor (safetensors/JSON only);
    ``vllm`` serves generative runs through vLLM on CUDA (see vllm.py)."""
    if backend == "vllm":
        from .vllm import load_vllm_predictor

        return load_vllm_predictor(run_dir, trust_remote_code=trust_remote_code)
    if backend != "torch":
        raise ConfigError(f"unknown backend {backend!r}", ["use --backend torch (default) or --backend vllm"])
    if trust_remote_code:
        raise ConfigError("--trust-remote-code only applies to --backend vllm",
                          ["the torch backend loads safetensors and JSON only; drop the flag"])
    return Predictor.load(run_dir)


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, settings: ServeSettings | None = None,
          backend: Literal["torch", "vllm"] = "torch", trust_remote_code: bool = False, log_level: str = "info",
          graceful_seconds: float = 30.0, threads: int | None = None) -> None:
    """Load the run, then serve it until SIGINT/SIGTERM (in-flight requests are finished first).

    ``threads`` caps torch's intra-op threads: on a small shared machine, fewer threads than cores
    leave the event loop a core and avoid OpenMP spin-waiting against other processes."""
    import uvicorn

    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be at least 1 (got {threads})")
        import torch

        torch.set_num_threads(threads)

    settings = settings or ServeSettings()
    if settings.token is None and os.environ.get(TOKEN_ENV):
        settings = ServeSettings(**{**asdict(settings), "token": os.environ[TOKEN_ENV]})
    predictor = load_backend(run_dir, backend, trust_remote_code)
    if predictor.check is not None:  # onnx-int8-checked: load the fp32 model now, not inside a request
        predictor.check.exact()
    app = create_app(predictor, settings)
    # the loaded model, tokenizer and libraries are long-lived objects that every full collection would
    # walk while holding the GIL (128 ms with a MiniLM head run loaded, requests and model waiting)
    gc.freeze()
    log.info("serving %s on http://%s:%d (batching=%s)", run_dir, host, port, settings.batching)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False,
                timeout_graceful_shutdown=graceful_seconds, server_header=False)
