"""What a served run looks like from outside: the server's settings, the request and response
schemas generated from a task spec (OpenAPI names the task's text fields and labels), the error
body, and the task document ``GET /v1/task`` returns.

No ``from __future__ import annotations``: pydantic builds these models at run time.
"""

import json
import logging
from contextlib import closing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model, model_validator

from ..core.data import iter_records
from ..core.task import TaskSpec
from ..errors import ClassifineError
from .protocols import valid_utf8

log = logging.getLogger("classifine.serve")


@dataclass(frozen=True)
class ServeSettings:
    max_batch_size: int = 32        # records per model call
    max_wait_ms: float = 5.0        # how long the first request of a batch waits for company
    batching: bool = True
    max_records: int = 128          # records per request
    max_chars: int = 10_000         # characters per text field
    max_queue: int = 4096           # records waiting for the model before requests get 503
    max_body_bytes: int | None = None  # None: derived from the two limits above
    token: str | None = None
    model_name: str | None = None   # the model's name in the vLLM and KServe APIs (default: the task's name)

    def problems(self) -> list[str]:
        out = []
        for name in ("max_batch_size", "max_records", "max_chars", "max_queue"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.max_wait_ms < 0:
            out.append(f"max_wait_ms must be 0 or more (got {self.max_wait_ms})")
        if self.max_queue < self.max_records:
            out.append(f"max_queue ({self.max_queue}) must be at least max_records ({self.max_records})")
        if self.max_body_bytes is not None and self.max_body_bytes < 1024:
            out.append(f"max_body_bytes must be at least 1024 (got {self.max_body_bytes})")
        if self.token is not None and not self.token.strip():
            out.append("the token is empty: pass a non-empty --token or unset CLASSIFINE_TOKEN")
        return out

    def body_limit(self, n_fields: int) -> int:
        # JSON clients escape non-ASCII as \uXXXX (6 bytes per character; Korean text is all of it)
        return self.max_body_bytes or max(1 << 20, self.max_records * n_fields * (self.max_chars * 6 + 64) + 65536)


# --- schemas derived from the task spec -------------------------------------------------------

class _RecordBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _usable_text(self):
        values = [v for v in self.__dict__.values() if isinstance(v, str)]
        if not all(valid_utf8(v) for v in values):
            raise ValueError("a text field holds invalid Unicode (an unpaired surrogate): send valid UTF-8 text")
        if not any(v.strip() for v in values):
            raise ValueError("every text field is blank: send some text to classify")
        return self


def schemas(task: TaskSpec, settings: ServeSettings, prefix: str = "") -> tuple[type[BaseModel], type[BaseModel], type[BaseModel]]:
    """(Record, ClassifyRequest, ClassifyResponse) for this task; ``prefix`` names them apart in
    OpenAPI when a multi-task run serves several tasks."""
    text = Annotated[str, StringConstraints(max_length=settings.max_chars)]
    # field names in a spec need not be Python identifiers ("from", "_id", "article body"): use aliases
    fields: dict[str, Any] = {f"f{i}": (text, Field(alias=name, description=f"the task's text field '{name}'"))
                              for i, name in enumerate(task.text)}
    record = create_model(f"{prefix}Record", __base__=_RecordBase, **fields)
    record.__doc__ = f"One record: the text fields {task.text} (joined in this order for the model)."
    request = create_model(
        f"{prefix}ClassifyRequest", __config__=ConfigDict(extra="forbid"),
        inputs=(list[record], Field(min_length=1, max_length=settings.max_records,
                                    description=f"1 to {settings.max_records} records")))
    probs = (dict[str, float], Field(description=f"probability of every label: {task.label_names}"))
    # extra keys pass through: the predictor may flag e.g. "invalid" (free generation named no label)
    open_ = ConfigDict(extra="allow")
    if task.kind == "extraction":
        entity = create_model(f"{prefix}Entity", name=(str, ...), confidence=(float, Field(ge=0, le=1)))
        output = create_model(f"{prefix}Output", __config__=open_, entities=(list[entity], Field(
            description=f"each {task.entity} at or above min_confidence {task.min_confidence}, with its confidence")),
            below_min_confidence=(list[entity], []))
    elif task.kind == "multi_label":
        output = create_model(f"{prefix}Output", __config__=open_, labels=(list[Literal[tuple(task.label_names)]], ...),
                              probabilities=probs)
    else:
        output = create_model(f"{prefix}Output", __config__=open_, label=(Literal[tuple(task.label_names)], ...),
                              confidence=(float, Field(ge=0, le=1)), probabilities=probs)
    response = create_model(f"{prefix}ClassifyResponse", outputs=(list[output], ...))
    return record, request, response


# --- errors -----------------------------------------------------------------------------------

class ErrorDetail(BaseModel):
    type: str
    message: str
    problems: list[str] = []


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES = {
    400: {"model": ErrorBody, "description": "the body is not valid JSON"},
    401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
    413: {"model": ErrorBody, "description": "too many records or too large a body"},
    422: {"model": ErrorBody, "description": "the records do not fit the task's schema (every problem listed)"},
    503: {"model": ErrorBody, "description": "overloaded or shutting down: retry later"},
}


# --- the task document -------------------------------------------------------------------------

def _field_text(value: Any) -> str:
    return "" if value is None else str(value)


def task_example(predictor, max_chars: int) -> dict | None:
    """One record of the task's own data for the playground to start from: the first complete record
    of the run's test, validation or training file (the frozen spec keeps their absolute paths), else
    the first text of its predictions.jsonl. None when the run has none of these here (a run copied
    without its data and never evaluated) or the predictor is not a run. Read only: serving never
    writes into the run directory."""
    run = getattr(predictor, "run", None)
    if run is None:
        return None
    task: TaskSpec = predictor.task
    for split in ("test", "validation", "train"):
        path = task.data_path(split)
        if path is None or not path.is_file():
            continue
        try:
            with closing(iter_records(path, batch_size=32)) as batches:
                batch = next(batches, [])
        except (ClassifineError, OSError, ValueError) as e:  # an example is a nicety: never a reason not to serve
            log.warning("no playground example from %s: %s", path, e)
            continue
        for row in batch:
            record = {f: _field_text(row.get(f))[:max_chars] for f in task.text}
            if all(v.strip() for v in record.values()):
                return {"record": record, "source": split}
    try:
        with (run.task_dir(task.name) / "predictions.jsonl").open(encoding="utf-8") as f:
            text = json.loads(f.readline() or "{}").get("text")
    except (OSError, ValueError):
        return None
    if not isinstance(text, str) or not text.strip():
        return None
    # only the joined text is kept there; the model reads the same text from it in the first field,
    # because joining skips the blank fields
    return {"record": {f: text[:max_chars] if i == 0 else "" for i, f in enumerate(task.text)}, "source": "predictions"}


def task_document(predictor, settings: ServeSettings, record: type[BaseModel], response: type[BaseModel]) -> dict:
    task: TaskSpec = predictor.task
    run = getattr(predictor, "run", None)
    return {
        "name": task.name, "kind": task.kind, "text": list(task.text), "labels": task.label_names,
        "label_descriptions": dict(task.labels), "instruction": task.instruction,
        "example": task_example(predictor, settings.max_chars),
        "method": run.method if run is not None else None, "model": (run.config.get("model") if run is not None else None),
        "limits": {"max_records": settings.max_records, "max_chars": settings.max_chars,
                   "max_body_bytes": settings.body_limit(len(task.text))},
        "auth": settings.token is not None,
        "schema": {"input": record.model_json_schema(by_alias=True), "output": response.model_json_schema()},
    }
