"""What a person sees of the server besides the API: /docs and /redoc work offline (their scripts come
from this server, and Swagger UI renders in headless Chromium with every other host unreachable),
/metrics carries the process metrics, and the playground's task document holds the spec's label
descriptions and an example from the task's own data."""
from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

import classifine  # noqa: E402
from classifine.predict.predictor import Predictor  # noqa: E402
from classifine.serve.app import ServeSettings, create_app  # noqa: E402

from test_serve import CHROMIUM, free_port, start_server, stop  # noqa: E402
from toy import write_task  # noqa: E402

DESCRIPTIONS = {"sports": "matches, players and clubs", "business": "markets, companies and money",
                "weather": "forecasts, rain and storms"}
ASSET_TYPES = ("javascript", "text/css", "image/")


@pytest.fixture(scope="module")
def described_run(tmp_path_factory) -> Path:
    """A toy single-label run whose spec describes its labels."""
    base = tmp_path_factory.mktemp("serve-docs")
    spec = write_task(base / "task", "single_label")
    described = "labels:\n" + "".join(f"  {name}: {text}\n" for name, text in DESCRIPTIONS.items())
    spec.write_text(spec.read_text(encoding="utf-8").replace("labels: [sports, business, weather]\n", described),
                    encoding="utf-8")
    return classifine.train(spec, method="tfidf", out=base / "run", progress=False).dir


@pytest.fixture(scope="module")
def predictor(described_run) -> Predictor:
    return Predictor.load(described_run)


def client(predictor, **settings) -> TestClient:
    return TestClient(create_app(predictor, ServeSettings(**settings)))


def asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_assets_of_this_server(predictor, page):
    with client(predictor, token="s3cret") as c:
        html = c.get(page)
        assert html.status_code == 200, "the docs stay public like /openapi.json; the API routes keep the token"
        urls = asset_urls(html.text)
        assets = {url: c.get(url) for url in urls}
        assert c.get("/openapi.json").status_code == 200 and c.get("/v1/task").status_code == 401
    assert "http://" not in html.text and "https://" not in html.text and "//" not in "".join(urls), html.text
    assert "/openapi.json" in html.text
    assert any(url.endswith(".js") for url in urls), urls
    for url, r in assets.items():
        assert r.status_code == 200, url
        assert any(kind in r.headers["content-type"] for kind in ASSET_TYPES), (url, r.headers["content-type"])
        assert len(r.content) > 1000, url


def test_docs_assets_refuse_what_they_do_not_hold(predictor):
    with client(predictor) as c:
        assert c.get("/docs-assets/missing.js").json()["error"]["type"] == "http_error"
        assert c.get("/docs-assets/..%2F__init__.py").status_code == 404
        operations = c.get("/openapi.json").json()["paths"]
    assert not any(path.startswith(("/docs", "/redoc")) for path in operations)


def test_metrics_include_process_and_platform_metrics(predictor):
    with client(predictor) as c:
        c.get("/docs-assets/swagger-ui.css")
        text = c.get("/metrics").text
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "python_info{",
                 "python_gc_collections_total"):
        assert name in text, name
    assert 'classifine_http_requests_total{method="GET",path="/docs-assets/{name}",status="200"} 1.0' in text


def first_test_record(spec) -> dict:
    with open(spec.data_path("test"), encoding="utf-8", newline="") as f:
        return next(csv.DictReader(f))


def test_task_document_has_label_descriptions_and_an_example_from_the_data(predictor):
    first = first_test_record(predictor.task)
    with client(predictor, max_chars=20) as c:
        task = c.get("/v1/task").json()
    assert task["label_descriptions"] == DESCRIPTIONS
    assert task["example"] == {"record": {"title": first["title"][:20], "body": first["body"][:20]}, "source": "test"}


def test_example_of_a_run_served_without_its_data(tmp_path):
    spec = write_task(tmp_path / "task", "single_label", n_train=60, n_test=10)
    run = classifine.train(spec, method="tfidf", out=tmp_path / "run", progress=False).dir
    first = first_test_record(Predictor.load(run).task)
    shutil.rmtree(tmp_path / "task")
    p = Predictor.load(run)
    with client(p) as c:
        example = c.get("/v1/task").json()["example"]
        answer = c.post("/v1/classify", json={"inputs": [example["record"]]}).json()["outputs"][0]
    # predictions.jsonl keeps the joined text only; in the first field the model reads the same text
    assert example == {"record": {"title": f"{first['title']}\n{first['body']}", "body": ""}, "source": "predictions"}
    assert answer == p.predict([first])[0]

    (run / "predictions.jsonl").unlink()
    with client(Predictor.load(run)) as c:
        assert c.get("/v1/task").json()["example"] is None


def chromium_dom(url: str, profile: Path) -> str:
    """The page's DOM after its scripts ran, with every host but this machine unreachable."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=15000",
             "--window-size=1200,900", "--dump-dom", url]
    return subprocess.run(flags, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="headless Chromium is not installed (apt-get install chromium)")
def test_docs_and_playground_render_offline_in_chromium(described_run, tmp_path):
    port = free_port()
    proc = start_server(described_run, port)
    url = f"http://127.0.0.1:{port}"
    try:
        swagger = chromium_dom(url + "/docs", tmp_path / "p1")
        redoc = chromium_dom(url + "/redoc", tmp_path / "p2")
        playground = chromium_dom(url + "/", tmp_path / "p3")
    finally:
        stop(proc)
    # Swagger UI drew the operation list from /openapi.json
    assert 'class="opblock opblock-post' in swagger, swagger[-3000:]
    assert 'data-path="/v1/classify"' in swagger and 'data-path="/metrics"' in swagger
    assert "Classify 1 to 128 records" in redoc, redoc[-3000:]
    assert "an example from the task's test data" in playground, playground[-3000:]
    assert all(f"<b>{name}</b>{text}</li>" in playground for name, text in DESCRIPTIONS.items())
