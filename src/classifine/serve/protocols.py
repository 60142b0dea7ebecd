"""The APIs clients already speak, in front of the same model, batcher, limits, token and metrics
as ``/v1/classify``: Hugging Face TEI (``POST /predict``, and ``POST /`` as TEI's own compat route),
vLLM's pooling API (``POST /classify``), Amazon SageMaker (``GET /ping``, ``POST /invocations``)
and KServe/Triton's Open Inference Protocol v2 (``/v2/...``).

Each protocol answers bad requests with its own 4xx body (``ProtocolError``): TEI
``{"error", "error_type"}``, vLLM OpenAI-style ``{"error": {"message", "type", "param", "code"}}``,
KServe ``{"error"}``, SageMaker classifine's own ``{"error": {"type", "message", "problems"}}``.
Bodies are parsed here rather than by FastAPI, so the app's own validation errors never leak into
another protocol's format; OpenAPI still shows each request schema (``openapi_extra``).

How records map onto protocols that send strings: a string is the text the model reads, i.e. the
task's text fields already joined with a newline (for a one-field task, that field); a list of
strings (TEI pairs, KServe one tensor per field) gives the fields in the spec's order.
"""

import json
import math
import time
import uuid
from typing import Callable, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.data import records_to_texts
from ..core.task import TaskSpec

Fail = Callable[[int, str, str], "ProtocolError"]


class ProtocolError(Exception):
    """A 4xx (or 503) answer in one protocol's own error format."""

    def __init__(self, status: int, body: dict, headers: dict | None = None):
        self.status, self.body, self.headers = status, body, headers
        super().__init__(json.dumps(body))


def tei_error(status: int, message: str, kind: str = "Validation") -> ProtocolError:
    return ProtocolError(status, {"error": message, "error_type": kind})


def openai_error(status: int, message: str, kind: str = "BadRequestError") -> ProtocolError:
    return ProtocolError(status, {"error": {"message": message, "type": kind, "param": None, "code": status}})


def kserve_error(status: int, message: str, kind: str = "") -> ProtocolError:
    return ProtocolError(status, {"error": message})


def classifine_error(status: int, message: str, kind: str = "invalid_request") -> ProtocolError:
    return ProtocolError(status, {"error": {"type": kind, "message": message, "problems": []}})


def _inline(schema: dict) -> dict:
    """A pydantic JSON schema with its ``$defs`` inlined, for ``openapi_extra`` (which cannot
    resolve ``#/$defs`` references)."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node and node["$ref"].startswith("#/$defs/"):
                return walk(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node
    return walk(schema)


def body_doc(model: type[BaseModel], content_type: str = "application/json") -> dict:
    return {"requestBody": {"required": True, "content": {content_type: {"schema": _inline(model.model_json_schema())}}}}


class Protocols:
    """Registers the protocol routes on ``app``. ``predict(texts)`` awaits the batcher."""

    def __init__(self, app: FastAPI, task: TaskSpec, predict, settings, model_name: str, token_ok: Callable[[Request], bool]):
        self.app, self.task, self.predict, self.settings, self.name = app, task, predict, settings, model_name
        self.token_ok = token_ok
        self.labels = task.label_names

    # --- shared -------------------------------------------------------------------------------

    def guard(self, fail: Fail):
        def check(request: Request) -> None:
            if not self.token_ok(request):
                raise fail(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>'", "Unauthorized")
        return [Depends(check)]

    async def body(self, request: Request, model: type[BaseModel], fail: Fail) -> BaseModel:
        try:
            raw = json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise fail(400, "the request body is not valid JSON", "InvalidJSON") from None
        try:
            return model.model_validate(raw)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors()[:10])
            raise fail(422, f"the request does not fit the schema: {problems}", "Validation") from None

    def texts(self, items: list, fail: Fail) -> list[str]:
        """Strings (the model's text) or lists of strings (the task's fields in order) → texts."""
        n_fields, limit = len(self.task.text), self.settings.max_chars
        if not items:
            raise fail(422, "no inputs: send at least one text", "Validation")
        if len(items) > self.settings.max_records:
            raise fail(413, f"{len(items)} inputs in one request; at most {self.settings.max_records}", "Validation")
        problems = []
        for i, item in enumerate(items):
            fields = [item] if isinstance(item, str) else list(item)
            if not isinstance(item, str) and len(fields) != n_fields:
                problems.append(f"input {i}: {len(fields)} strings; the task has {n_fields} text fields {self.task.text}")
                continue
            if not all(isinstance(f, str) for f in fields):  # e.g. {"title": null} in a SageMaker record
                problems.append(f"input {i}: every text field must be a string")
                continue
            if any(len(f) > limit * (n_fields if isinstance(item, str) else 1) for f in fields):
                problems.append(f"input {i}: longer than {limit} characters per text field")
            elif not any(f.strip() for f in fields):
                problems.append(f"input {i}: blank text")
            elif any(not valid_utf8(f) for f in fields):
                problems.append(f"input {i}: invalid Unicode (an unpaired surrogate)")
        if problems:
            raise fail(422, "; ".join(problems[:10]), "Validation")
        # lists of fields are joined like /v1/classify records, all in one call
        records = [dict(zip(self.task.text, item)) for item in items if not isinstance(item, str)]
        joined = iter(records_to_texts(self.task, records, source="request") if records else [])
        return [item if isinstance(item, str) else next(joined) for item in items]

    def ranked(self, out: dict) -> list[tuple[str, float]]:
        return sorted(out["probabilities"].items(), key=lambda kv: -kv[1])

    def classification_only(self, fail: Fail) -> None:
        if self.task.kind == "extraction":
            raise fail(422, f"task {self.task.name!r} extracts entities; this route classifies: use /v1/classify "
                            "or /invocations", "Validation")

    # --- TEI ----------------------------------------------------------------------------------

    def add_tei(self) -> None:
        class Parameters(BaseModel):
            top_k: int | None = Field(default=None, ge=1)
            function_to_apply: str | None = None

        class TEIRequest(BaseModel):
            """TEI's predict request (``huggingface_hub.InferenceClient.text_classification`` sends it)."""
            inputs: str | list[str] | list[list[str]] = Field(
                description="a text, a batch of texts, or per input a list of the task's text fields in order")
            raw_scores: bool = Field(default=False, description="log-probabilities (log-odds for multi-label) instead of probabilities")
            truncate: bool = Field(default=False, description="accepted; inputs are always cut to the run's max_length")
            truncation_direction: Literal["right", "Right", "left", "Left"] = "right"
            parameters: Parameters | None = None

        class Prediction(BaseModel):
            label: str
            score: float

        async def predict(request: Request):
            body = await self.body(request, TEIRequest, tei_error)
            self.classification_only(tei_error)
            if body.truncation_direction.lower() == "left":
                raise tei_error(422, "truncation_direction left is not supported: inputs are cut on the right")
            single = isinstance(body.inputs, str)  # a list of strings is a batch; pairs are nested lists
            items = [body.inputs] if single else list(body.inputs)
            outputs = await self.predict(self.texts(items, tei_error))
            top_k = body.parameters.top_k if body.parameters else None
            answer = [[{"label": lab, "score": _raw(p, self.task.kind) if body.raw_scores else p}
                       for lab, p in self.ranked(o)][:top_k] for o in outputs]
            return answer[0] if single else answer

        doc = {"openapi_extra": body_doc(TEIRequest), "response_model": list[Prediction] | list[list[Prediction]],
               "dependencies": self.guard(tei_error), "tags": ["TEI"]}
        self.app.post("/predict", summary="TEI: label scores for a text or a batch", **doc)(predict)
        self.app.post("/", summary="TEI's compat route (InferenceClient(base_url=...).text_classification)", **doc)(predict)

    # --- vLLM ---------------------------------------------------------------------------------

    def add_vllm(self) -> None:
        class ClassificationRequest(BaseModel):
            """vLLM's pooling API request for classification."""
            model_config = ConfigDict(extra="allow")  # vLLM ignores fields it does not use (user, priority, ...)
            model: str | None = None
            input: str | list[str]

        class ClassificationData(BaseModel):
            model_config = ConfigDict(extra="allow")  # multi-label runs add the chosen "labels"
            index: int
            label: str
            probs: list[float]
            num_classes: int
            object: str = "classification"

        class ClassificationResponse(BaseModel):
            id: str
            object: str = "list"
            created: int
            model: str
            data: list[ClassificationData]
            usage: dict

        async def classify(request: Request):
            body = await self.body(request, ClassificationRequest, openai_error)
            if body.model not in (None, self.name):
                raise openai_error(404, f"the model {body.model!r} does not exist; this server serves {self.name!r}",
                                   "NotFoundError")
            self.classification_only(openai_error)
            items = [body.input] if isinstance(body.input, str) else body.input
            outputs = await self.predict(self.texts(items, openai_error))
            data = [{"index": i, "label": self.ranked(o)[0][0], "probs": [o["probabilities"][lab] for lab in self.labels],
                     "num_classes": len(self.labels), "object": "classification",
                     **({"labels": o["labels"]} if "labels" in o else {})} for i, o in enumerate(outputs)]
            return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": self.name,
                    "data": data, "usage": {"prompt_tokens": 0, "total_tokens": 0, "completion_tokens": 0,
                                            "prompt_tokens_details": None}}

        self.app.post("/classify", summary="vLLM pooling API: classify", openapi_extra=body_doc(ClassificationRequest),
                      response_model=ClassificationResponse, dependencies=self.guard(openai_error), tags=["vLLM"])(classify)

    # --- SageMaker ----------------------------------------------------------------------------

    def add_sagemaker(self) -> None:
        fields = list(self.task.text)

        async def ping() -> Response:
            return Response(status_code=200)

        async def invocations(request: Request) -> Response:
            kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
            accept = request.headers.get("accept", "application/json").split(",")[0].split(";")[0].strip().lower()
            raw = await request.body()
            if kind in ("application/json", "application/x-json", ""):
                items = _json_records(raw)
            elif kind == "application/jsonlines" or kind == "application/x-jsonlines":
                items = [_json_record(line) for line in raw.decode("utf-8", "replace").splitlines() if line.strip()]
            elif kind == "text/csv":
                items = _csv_records(raw, len(fields))
            else:
                raise classifine_error(415, f"unsupported content type {kind!r}: send application/json, "
                                            "application/jsonlines or text/csv", "unsupported_media_type")
            texts = self.texts([r if isinstance(r, str) else _fields(r, fields) for r in items], classifine_error)
            outputs = await self.predict(texts)
            if accept == "text/csv":
                lines = [",".join(_csv_cell(x) for x in _csv_row(o, self.task)) for o in outputs]
                return Response("\n".join(lines) + "\n", media_type="text/csv")
            if accept in ("application/jsonlines", "application/x-jsonlines"):
                return Response("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in outputs),
                                media_type="application/jsonlines")
            return JSONResponse({"outputs": outputs})

        self.app.get("/ping", summary="SageMaker health check", tags=["SageMaker"])(ping)
        self.app.post("/invocations", summary="SageMaker: JSON ({inputs: [...]}, a record or a list), JSON lines or CSV",
                      openapi_extra={"requestBody": {"required": True, "content": {
                          "application/json": {"schema": {"type": "object"}}, "text/csv": {"schema": {"type": "string"}}}}},
                      dependencies=self.guard(classifine_error), tags=["SageMaker"])(invocations)

    # --- KServe v2 (Open Inference Protocol) ----------------------------------------------------

    def add_kserve(self, version: str) -> None:
        inputs = self.task.text
        if self.task.kind == "extraction":
            outputs_meta = [("entities", "BYTES", [-1])]
        elif self.task.kind == "multi_label":
            outputs_meta = [("labels", "BYTES", [-1]), ("probabilities", "FP32", [-1, len(self.labels)])]
        else:
            outputs_meta = [("label", "BYTES", [-1]), ("confidence", "FP32", [-1]), ("probabilities", "FP32", [-1, len(self.labels)])]
        metadata = {"name": self.name, "versions": ["1"], "platform": "classifine",
                    "inputs": [{"name": f, "datatype": "BYTES", "shape": [-1]} for f in inputs],
                    "outputs": [{"name": n, "datatype": d, "shape": s} for n, d, s in outputs_meta],
                    "parameters": {"kind": self.task.kind, "labels": self.labels, "text_fields": list(inputs),
                                   "joined_input": "text"}}

        class Tensor(BaseModel):
            name: str
            shape: list[int]
            datatype: str
            data: list
            parameters: dict | None = None

        class Requested(BaseModel):
            name: str
            parameters: dict | None = None

        class OutputTensor(BaseModel):
            name: str
            shape: list[int]
            datatype: str
            data: list

        class InferResponse(BaseModel):
            model_name: str
            model_version: str
            id: str
            outputs: list[OutputTensor]

        class InferRequest(BaseModel):
            id: str | None = None
            inputs: list[Tensor] = Field(min_length=1)
            outputs: list[Requested] | None = None
            parameters: dict | None = None

        def model(name: str) -> None:
            if name != self.name:
                raise kserve_error(404, f"model {name!r} not found; this server serves {self.name!r}")

        async def live() -> dict:
            return {"live": True}

        async def ready() -> dict:
            return {"ready": True}

        async def server() -> dict:
            return {"name": "classifine", "version": version, "extensions": []}

        async def model_metadata(name: str) -> dict:
            model(name)
            return metadata

        async def model_ready(name: str) -> dict:
            model(name)
            return {"name": name, "ready": True}

        async def infer(name: str, request: Request) -> dict:
            model(name)
            if request.headers.get("inference-header-content-length"):
                raise kserve_error(400, "binary tensor data is not supported: send JSON tensors (tritonclient: "
                                        "binary_data=False on inputs and outputs)")
            body = await self.body(request, InferRequest, kserve_error)
            items = _kserve_items(body.inputs, list(inputs))
            outputs = await self.predict(self.texts(items, kserve_error))
            tensors = _kserve_outputs(outputs, self.task)
            wanted = [o.name for o in body.outputs] if body.outputs else [n for n, _, _ in outputs_meta]
            unknown = [w for w in wanted if w not in tensors]
            if unknown:
                raise kserve_error(400, f"unknown output(s) {unknown}; this model has {[n for n, _, _ in outputs_meta]}")
            return {"model_name": self.name, "model_version": "1", "id": body.id or uuid.uuid4().hex,
                    "outputs": [tensors[w] for w in wanted]}

        guard = self.guard(kserve_error)
        tag = {"tags": ["KServe v2"]}
        self.app.get("/v2", summary="Open Inference Protocol: server metadata", **tag)(server)
        self.app.get("/v2/health/live", summary="Open Inference Protocol: liveness", **tag)(live)
        self.app.get("/v2/health/ready", summary="Open Inference Protocol: readiness", **tag)(ready)
        self.app.get("/v2/models/{name}", summary="model metadata: input tensors named after the task's text fields",
                     dependencies=guard, **tag)(model_metadata)
        self.app.get("/v2/models/{name}/ready", summary="model readiness", dependencies=guard, **tag)(model_ready)
        self.app.post("/v2/models/{name}/infer", summary="inference: BYTES tensors in, label/probability tensors out",
                      openapi_extra=body_doc(InferRequest), response_model=InferResponse, dependencies=guard, **tag)(infer)


# --- helpers ------------------------------------------------------------------------------------

def valid_utf8(text: str) -> bool:
    """False for strings JSON allows but tokenizers refuse (unpaired surrogates)."""
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _raw(p: float, kind: str) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p)) if kind == "multi_label" else math.log(p)


def _json_record(line: str):
    try:
        return json.loads(line)
    except ValueError:
        raise classifine_error(400, "a JSON line is not valid JSON", "invalid_json") from None


def _json_records(raw: bytes) -> list:
    """``{"inputs": [...]}`` (the /v1/classify body), ``{"instances": [...]}``, a list, or one record."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise classifine_error(400, "the request body is not valid JSON", "invalid_json") from None
    if isinstance(body, dict) and isinstance(body.get("inputs", body.get("instances")), list):
        return body.get("inputs", body.get("instances"))
    if isinstance(body, list):
        return body
    if isinstance(body, (dict, str)):
        return [body]
    raise classifine_error(422, "send {\"inputs\": [records]}, a list of records, or one record")


def _csv_records(raw: bytes, n_fields: int) -> list:
    import csv
    import io

    try:
        rows = [r for r in csv.reader(io.StringIO(raw.decode("utf-8"))) if r]
    except (UnicodeDecodeError, csv.Error) as e:
        raise classifine_error(400, f"the CSV body cannot be read: {e}", "invalid_csv") from None
    return [r[0] if n_fields == 1 and len(r) == 1 else r for r in rows]


def _fields(record, fields: list[str]):
    if isinstance(record, list):
        return record  # a CSV row: the fields in order
    if not isinstance(record, dict):
        raise classifine_error(422, f"a record is a string or an object with the fields {fields}")
    missing = [f for f in fields if not isinstance(record.get(f), str)]
    if missing:
        raise classifine_error(422, f"records need string fields {fields}; missing or not text: {missing}")
    return [record[f] for f in fields]


def _csv_row(o: dict, task: TaskSpec) -> list:
    if "entities" in o:
        return [json.dumps([e["name"] for e in o["entities"]], ensure_ascii=False)]
    if "labels" in o:
        return ["|".join(o["labels"])] + [o["probabilities"][lab] for lab in task.label_names]
    return [o["label"], o["confidence"]] + [o["probabilities"][lab] for lab in task.label_names]


def _csv_cell(x) -> str:
    text = str(x)
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def _kserve_items(tensors: list, fields: list[str]) -> list:
    """One BYTES tensor per text field (named after it), or one tensor ``text`` with the joined text."""
    def flat(data):
        return [y for x in data for y in flat(x)] if isinstance(data, list) else [data]

    named = {t.name: t for t in tensors}
    if set(named) == {"text"} or (len(fields) == 1 and set(named) == set(fields)):
        values = flat(named.get("text", named.get(fields[0])).data)
        columns = [values]
    elif set(named) == set(fields):
        columns = [flat(named[f].data) for f in fields]
    else:
        raise kserve_error(400, f"inputs {sorted(named)} do not match the model: send one BYTES tensor per text field "
                                f"{fields}, or one tensor 'text'")
    bad = [t.name for t in tensors if t.datatype != "BYTES"]
    if bad or any(not isinstance(v, str) for col in columns for v in col):
        raise kserve_error(400, f"inputs must be BYTES tensors of strings (got {bad or 'non-string data'})")
    if len({len(c) for c in columns}) != 1:
        raise kserve_error(400, "the input tensors hold different numbers of rows")
    return columns[0] if len(columns) == 1 else [list(r) for r in zip(*columns)]


def _kserve_outputs(outputs: list[dict], task: TaskSpec) -> dict[str, dict]:
    n, labels = len(outputs), task.label_names
    if task.kind == "extraction":
        data = [json.dumps(o.get("entities", []), ensure_ascii=False) for o in outputs]
        return {"entities": {"name": "entities", "datatype": "BYTES", "shape": [n], "data": data}}
    probs = [o["probabilities"][lab] for o in outputs for lab in labels]
    out = {"probabilities": {"name": "probabilities", "datatype": "FP32", "shape": [n, len(labels)], "data": probs}}
    if task.kind == "multi_label":
        out["labels"] = {"name": "labels", "datatype": "BYTES", "shape": [n], "data": ["|".join(o["labels"]) for o in outputs]}
    else:
        out["label"] = {"name": "label", "datatype": "BYTES", "shape": [n], "data": [o["label"] for o in outputs]}
        out["confidence"] = {"name": "confidence", "datatype": "FP32", "shape": [n], "data": [o["confidence"] for o in outputs]}
    return out


def add_protocols(app: FastAPI, task: TaskSpec, predict, settings, model_name: str, version: str,
                  token_ok: Callable[[Request], bool]) -> None:
    protocols = Protocols(app, task, predict, settings, model_name, token_ok)

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError):
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    protocols.add_tei()
    protocols.add_vllm()
    protocols.add_sagemaker()
    protocols.add_kserve(version)

