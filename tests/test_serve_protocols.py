"""The serving protocols clients already use: TEI (with huggingface_hub's InferenceClient), vLLM's
pooling /classify, SageMaker's /ping and /invocations, KServe v2 (with tritonclient). Each answers
like the library, and bad requests get that protocol's own 4xx body."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from classifine.predict.predictor import Predictor
from classifine.serve.app import ServeSettings, create_app

from test_serve import RECORD, free_port, predictor, runs, start_server, stop  # noqa: F401 (fixtures)

OTHER = {"title": "storm and rain", "body": "the forecast says snow and wind"}


@pytest.fixture
def client(predictor):
    with TestClient(create_app(predictor, ServeSettings(max_records=4, max_chars=200))) as c:
        yield c


def joined(record: dict) -> str:
    return f"{record['title']}\n{record['body']}"


def test_tei_predict_answers_like_the_library(client, predictor):
    expected = predictor.predict([RECORD, OTHER])
    one = client.post("/predict", json={"inputs": joined(RECORD)}).json()
    assert [x["label"] for x in one] == sorted(expected[0]["probabilities"], key=lambda k: -expected[0]["probabilities"][k])
    assert one[0] == {"label": expected[0]["label"], "score": pytest.approx(expected[0]["confidence"])}
    batch = client.post("/predict", json={"inputs": [joined(RECORD), joined(OTHER)]}).json()
    pairs = client.post("/predict", json={"inputs": [[RECORD["title"], RECORD["body"]], [OTHER["title"], OTHER["body"]]]}).json()
    assert batch == pairs and [b[0]["label"] for b in batch] == [e["label"] for e in expected]
    raw = client.post("/predict", json={"inputs": joined(RECORD), "raw_scores": True, "parameters": {"top_k": 2}}).json()
    assert len(raw) == 2 and raw[0]["score"] == pytest.approx(np.log(max(expected[0]["confidence"], 1e-12)))
    assert client.post("/", json={"inputs": joined(RECORD)}).json() == one, "TEI's compat route"


@pytest.mark.parametrize("body,status,fragment", [
    ({"inputs": ""}, 422, "blank"),
    ({"inputs": ["a"] * 5}, 413, "at most 4"),
    ({"inputs": [["only one field"]]}, 422, "text fields"),
    ({"inputs": "x" * 500}, 422, "characters"),
    ({"inputs": "ok", "truncation_direction": "left"}, 422, "left"),
    ({"text": "no inputs"}, 422, "inputs"),
])
def test_tei_errors_are_tei_errors(client, body, status, fragment):
    r = client.post("/predict", json=body)
    assert r.status_code == status and set(r.json()) == {"error", "error_type"} and fragment in r.json()["error"]
    bad = client.post("/predict", content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error_type"] == "InvalidJSON"


def test_vllm_classify_has_the_pooling_api_shape(client, predictor):
    # the request and response of vLLM's documented /classify example
    r = client.post("/classify", json={"model": "toy-single_label", "input": [joined(RECORD), joined(OTHER)]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "toy-single_label" and body["id"].startswith("classify-")
    assert set(body["usage"]) >= {"prompt_tokens", "total_tokens"}
    expected = predictor.predict([RECORD, OTHER])
    for i, (d, e) in enumerate(zip(body["data"], expected)):
        assert d["index"] == i and d["label"] == e["label"] and d["num_classes"] == 3 and d["object"] == "classification"
        assert d["probs"] == pytest.approx([e["probabilities"][lab] for lab in ("sports", "business", "weather")])
    assert client.post("/classify", json={"input": joined(RECORD)}).json()["data"][0]["label"] == expected[0]["label"]
    missing = client.post("/classify", json={"model": "gpt-4", "input": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "NotFoundError"
    bad = client.post("/classify", json={"input": 3})
    assert bad.status_code == 422 and set(bad.json()["error"]) == {"message", "type", "param", "code"}


def test_sagemaker_ping_and_invocations_in_the_content_types_it_sends(client, predictor):
    expected = predictor.predict([RECORD, OTHER])
    assert client.get("/ping").status_code == 200
    as_json = client.post("/invocations", json={"inputs": [RECORD, OTHER]})
    assert as_json.status_code == 200 and as_json.json() == {"outputs": expected}
    assert client.post("/invocations", json=[RECORD, OTHER]).json() == {"outputs": expected}
    assert client.post("/invocations", json=RECORD).json() == {"outputs": expected[:1]}
    lines = "\n".join(json.dumps(r) for r in (RECORD, OTHER)) + "\n"
    jl = client.post("/invocations", content=lines, headers={"Content-Type": "application/jsonlines",
                                                             "Accept": "application/jsonlines"})
    assert [json.loads(x) for x in jl.text.splitlines()] == expected
    csv_body = f'{RECORD["title"]},{RECORD["body"]}\n"{OTHER["title"]}",{OTHER["body"]}\n'
    csv = client.post("/invocations", content=csv_body, headers={"Content-Type": "text/csv", "Accept": "text/csv"})
    rows = [line.split(",") for line in csv.text.splitlines()]
    assert csv.headers["content-type"].startswith("text/csv") and [r[0] for r in rows] == [e["label"] for e in expected]
    assert client.post("/invocations", content=b"x", headers={"Content-Type": "image/png"}).status_code == 415
    wrong = client.post("/invocations", json={"inputs": [{"titel": "x"}]})
    assert wrong.status_code == 422 and "title" in wrong.json()["error"]["message"]
    for bad in ([None, "x"], ["x", 3]):  # fields as a list with a non-string: found by the fuzzer, was a 500
        r = client.post("/invocations", json={"inputs": [bad]})
        assert r.status_code == 422 and "must be a string" in r.json()["error"]["message"]


def test_kserve_v2_metadata_and_infer(client, predictor):
    expected = predictor.predict([RECORD, OTHER])
    assert client.get("/v2/health/ready").json() == {"ready": True} and client.get("/v2/health/live").status_code == 200
    meta = client.get("/v2/models/toy-single_label").json()
    assert [i["name"] for i in meta["inputs"]] == ["title", "body"] and {o["name"] for o in meta["outputs"]} == \
        {"label", "confidence", "probabilities"}
    tensors = [{"name": f, "shape": [2], "datatype": "BYTES", "data": [RECORD[f], OTHER[f]]} for f in ("title", "body")]
    out = client.post("/v2/models/toy-single_label/infer", json={"id": "r1", "inputs": tensors}).json()
    by_name = {t["name"]: t for t in out["outputs"]}
    assert out["id"] == "r1" and by_name["label"]["data"] == [e["label"] for e in expected]
    assert by_name["probabilities"]["shape"] == [2, 3]
    joined_text = [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [[joined(RECORD)], [joined(OTHER)]]}]
    only = client.post("/v2/models/toy-single_label/infer",
                       json={"inputs": joined_text, "outputs": [{"name": "label"}]}).json()["outputs"]
    assert only == [by_name["label"]]
    assert client.get("/v2/models/nope").status_code == 404 and "error" in client.get("/v2/models/nope").json()
    for bad in ({"inputs": [{"name": "title", "shape": [1], "datatype": "INT32", "data": [1]}]},
                {"inputs": tensors, "outputs": [{"name": "logits"}]}, {"inputs": []}):
        r = client.post("/v2/models/toy-single_label/infer", json=bad)
        assert r.status_code in (400, 422) and isinstance(r.json()["error"], str), bad


def test_every_protocol_route_needs_the_token_and_says_so_in_its_own_format(predictor):
    with TestClient(create_app(predictor, ServeSettings(token="s3cret"))) as c:
        assert c.post("/predict", json={"inputs": "x"}).json()["error_type"] == "Unauthorized"
        assert c.post("/classify", json={"input": "x"}).json()["error"]["code"] == 401
        assert isinstance(c.post("/v2/models/toy-single_label/infer", json={"inputs": []}).json()["error"], str)
        assert c.post("/invocations", json=RECORD).status_code == 401
        assert c.get("/ping").status_code == 200 and c.get("/v2/health/ready").status_code == 200, "health stays open"
        ok = c.post("/predict", json={"inputs": "goal"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_real_clients_against_a_live_server(runs, predictor, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    # conftest keeps the Hub offline; this client talks to loopback only
    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed (dev extra)")
    expected = predictor.predict([RECORD, OTHER])
    port = free_port()
    proc = start_server(runs["single_label"], port, "--served-model-name", "news")
    try:
        # TEI answers a single text with a flat list; InferenceClient returns its top element
        top = hub.InferenceClient(base_url=f"http://127.0.0.1:{port}").text_classification(joined(RECORD))
        assert top.label == expected[0]["label"] and top.score == pytest.approx(expected[0]["confidence"])
        triton = http.InferenceServerClient(url=f"127.0.0.1:{port}")
        assert triton.is_server_ready() and triton.is_model_ready("news")
        assert [i["name"] for i in triton.get_model_metadata("news")["inputs"]] == ["title", "body"]
        inputs = []
        for field in ("title", "body"):
            tensor = http.InferInput(field, [2], "BYTES")
            tensor.set_data_from_numpy(np.array([RECORD[field], OTHER[field]], dtype=object), binary_data=False)
            inputs.append(tensor)
        outputs = [http.InferRequestedOutput(n, binary_data=False) for n in ("label", "probabilities")]
        result = triton.infer("news", inputs, outputs=outputs)
        assert [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")] == [e["label"] for e in expected]
        assert result.as_numpy("probabilities").shape == (2, 3)
    finally:
        stop(proc)


def test_sagemaker_flag_defaults_to_opt_ml_model(tmp_path):
    from typer.testing import CliRunner

    from classifine.cli import app

    r = CliRunner().invoke(app, ["serve", "--sagemaker", "--port", str(free_port())])
    # /opt/ml/model does not exist here: the run directory error names it
    assert r.exit_code == 2 and "/opt/ml/model" in r.output
    r = CliRunner().invoke(app, ["serve"])
    assert r.exit_code == 2 and "--sagemaker" in r.output


def test_multi_label_runs_on_every_protocol(runs):
    p = Predictor.load(runs["multi_label"])
    expected = p.predict([RECORD])[0]
    with TestClient(create_app(p)) as c:
        tei = c.post("/predict", json={"inputs": joined(RECORD)}).json()
        assert {x["label"]: x["score"] for x in tei} == pytest.approx(expected["probabilities"])
        vllm = c.post("/classify", json={"input": joined(RECORD)}).json()["data"][0]
        assert vllm["labels"] == expected["labels"]
        tensors = [{"name": f, "shape": [1], "datatype": "BYTES", "data": [RECORD[f]]} for f in ("title", "body")]
        out = {t["name"]: t for t in c.post("/v2/models/toy-multi_label/infer", json={"inputs": tensors}).json()["outputs"]}
        assert out["labels"]["data"] == ["|".join(expected["labels"])]


def test_an_extraction_run_is_refused_by_the_classification_protocols(toy_tasks):
    from types import SimpleNamespace

    from classifine.core.task import load_task

    task = load_task(toy_tasks["extraction"])
    stub = SimpleNamespace(task=task, predict_texts=lambda texts: [{"company": [], "entities": [],
                                                                    "below_min_confidence": []} for _ in texts])
    with TestClient(create_app(stub)) as c:
        r = c.post("/predict", json={"inputs": "Acme Corp shares"})
        assert r.status_code == 422 and "extracts entities" in r.json()["error"]
        r = c.post("/classify", json={"input": "Acme Corp shares"})
        assert r.status_code == 422 and "/v1/classify" in r.json()["error"]["message"]
        assert c.post("/invocations", json="Acme Corp shares").json() == {"outputs": [{"company": [], "entities": [],
                                                                                      "below_min_confidence": []}]}
