"""Serving every task of a multi-task run: a predictor per task on the one loaded model, a route
per task with its own schemas, and the micro-batch function that answers requests of several tasks
in one model call. No ``from __future__ import annotations``: FastAPI reads each route's request
model from its annotation at run time.
"""

import logging
import re
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.data import records_to_texts
from ..core.task import TaskSpec
from .schemas import ERROR_RESPONSES, ErrorBody, ServeSettings, schemas, task_document

log = logging.getLogger("classifine.serve")


def served_tasks(predictor) -> dict:
    """A predictor per task the server answers: every task of a multi-task run (one loaded model),
    else the one task. A backend that cannot switch tasks (vLLM) serves the run's own task."""
    run = getattr(predictor, "run", None)
    tasks = getattr(run, "tasks", None) or {}
    if len(tasks) > 1 and hasattr(predictor, "for_task") and hasattr(getattr(predictor, "scorer", None), "for_task"):
        return {name: predictor.for_task(name) for name in tasks}
    if len(tasks) > 1:
        log.warning("this backend serves the run's own task %s only, not %s", predictor.task.name, list(tasks)[1:])
    return {predictor.task.name: predictor}


def predict_items(predictors: dict, items: list[tuple[str, str]]) -> list[dict]:
    """One model call's batch: (task, text) pairs of several requests, answered task by task."""
    out: list[Any] = [None] * len(items)
    by_task: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(items):
        by_task.setdefault(name, []).append(i)
    for name, idx in by_task.items():
        for i, answer in zip(idx, predictors[name].predict_texts([items[i][1] for i in idx])):
            out[i] = answer
    return out


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^0-9A-Za-z]+", name) if part) or "Task"


def add_task_routes(app: FastAPI, predictors: dict, settings: ServeSettings, predict, guarded: list) -> None:
    """``POST /v1/tasks/{name}/classify`` and ``GET /v1/tasks/{name}`` per task, each with the
    schemas of its own spec in OpenAPI; ``GET /v1/tasks`` lists them. ``/v1/classify`` stays the
    run's own task."""
    documents = {}
    prefix = len(predictors) > 1
    for name, p in predictors.items():
        record, request_model, response_model = schemas(p.task, settings, _camel(name) if prefix else "")
        documents[name] = task_document(p, settings, record, response_model)
        _task_route(app, name, p.task, request_model, response_model, settings, predict, guarded)

    @app.get("/v1/tasks", dependencies=guarded, responses={401: ERROR_RESPONSES[401]},
             summary="Every task this server answers, with its spec and schemas")
    async def list_tasks() -> dict:
        return {"tasks": documents}

    @app.get("/v1/tasks/{name}", dependencies=guarded, responses={401: ERROR_RESPONSES[401], 404: {"model": ErrorBody}},
             summary="One task's spec and schemas")
    async def get_one_task(name: str) -> dict:
        if name not in documents:
            raise StarletteHTTPException(404, f"no task {name!r}: this server's tasks are {list(documents)}")
        return documents[name]

    @app.post("/v1/tasks/{name}/classify", include_in_schema=False)
    async def unknown_task(name: str) -> None:
        raise StarletteHTTPException(404, f"no task {name!r}: this server's tasks are {list(documents)}")


def _task_route(app: FastAPI, name: str, task: TaskSpec, request_model, response_model, settings: ServeSettings,
                predict, guarded: list) -> None:
    async def classify_task(body: request_model):  # type: ignore[valid-type]
        records = [r.model_dump(by_alias=True) for r in body.inputs]
        return {"outputs": await predict(records_to_texts(task, records, source="request"), name)}

    app.post(f"/v1/tasks/{name}/classify", response_model=response_model, dependencies=guarded,
             responses=ERROR_RESPONSES, summary=f"{name}: {task.kind.replace('_', '-')}, 1 to {settings.max_records} records",
             operation_id=f"classify_{re.sub(r'[^0-9A-Za-z_]', '_', name)}", tags=["tasks"])(classify_task)
