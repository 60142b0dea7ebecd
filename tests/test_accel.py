"""The faster inference paths (core/accel.py, predict/engine.py): token-bounded batches, ONNX
Runtime engines that give the fp32 PyTorch answers, and the per-run choice with its record."""
from __future__ import annotations

import json

import numpy as np
import pytest

import classifine
from classifine.core.accel import CHECKED, ENGINE_ENV, read_choice, save_choice, token_batches
from classifine.errors import ConfigError
from classifine.predict.predictor import Predictor
from classifine.scoring.decision import answer_margin

from toy import rows

FAST_HEAD = {"epochs": 1, "batch_size": 16, "learning_rate": 5e-3, "logging_steps": 5}
needs_onnx = pytest.mark.skipif(bool(__import__("classifine.core.accel", fromlist=["onnx_missing"]).onnx_missing()),
                                reason="the export extra (onnx, onnxruntime, onnxscript) is not installed")


def test_token_batches_bound_padded_tokens_and_cover_every_row_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500)
    lengths[7] = 5000  # longer than the budget: it goes alone
    batches = token_batches(lengths, max_tokens=1024, max_rows=32)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(500))
    for b in batches:
        assert len(b) <= 32
        assert len(b) == 1 or lengths[b].max() * len(b) <= 1024
    assert [7] in [b.tolist() for b in batches]
    # longest first, so every batch's rows are no longer than the previous batch's shortest
    for a, b in zip(batches, batches[1:]):
        assert lengths[a].min() >= lengths[b].max()


def test_token_batches_split_a_small_set_by_length_rather_than_pad_it_to_the_longest():
    from classifine.core.accel import MIN_FILL, MIN_SPLIT_ROWS

    rng = np.random.default_rng(1)
    lengths = np.concatenate([rng.integers(50, 65, 20), rng.integers(10, 25, 44)])  # 64 rows fit one batch by tokens
    batches = token_batches(lengths, max_tokens=8192, max_rows=128)
    assert len(batches) > 1
    for b in batches:
        assert len(b) <= MIN_SPLIT_ROWS or lengths[b].min() >= MIN_FILL * lengths[b].max()
    padded = sum(lengths[b].max() * len(b) for b in batches)
    assert padded < 0.7 * lengths.max() * len(lengths)
    # equal lengths still fill whole batches
    assert [len(b) for b in token_batches([30] * 200, max_tokens=8192, max_rows=128)] == [128, 72]


def test_token_batches_of_nothing_and_of_empty_texts():
    assert token_batches([]) == []
    assert [b.tolist() for b in token_batches([0, 0, 0], max_tokens=2, max_rows=8)] == [[0, 1], [2]]


@pytest.fixture(scope="module")
def head_run(toy_tasks, bert_path, tmp_path_factory):
    import classifine.predict.engine as engine_mod

    out = tmp_path_factory.mktemp("accel") / "head"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_mod, "MIN_ROWS", 1)  # the toy validation set is small; measure the engines anyway
        return classifine.train(toy_tasks["single_label"], method="head", model=bert_path, out=out, config=FAST_HEAD,
                                progress=False)


def test_too_few_validation_rows_keep_torch_without_measuring(toy_tasks, bert_path, tmp_path):
    run = classifine.train(toy_tasks["single_label"], method="head", model=bert_path, out=tmp_path / "r",
                           config=FAST_HEAD, progress=False)
    choice = read_choice(run.model_dir)
    assert choice["engine"] == "torch" and "too few" in choice["reason"] and "measured" not in choice


@needs_onnx
def test_run_records_the_engine_choice_with_measurements(head_run):
    choice = read_choice(head_run.model_dir)
    assert choice["engine"] in ("torch", "onnx", "onnx-int8", CHECKED)
    m = choice["measured"]
    assert {"torch", "onnx", "onnx-int8", CHECKED} <= set(m)
    assert m["onnx"]["label_agreement"] == 1.0 and m["onnx"]["within_tolerance"]
    for engine in m.values():
        assert engine["docs_per_second"] > 0
    # the check margin is twice the largest probability change int8 made on the sampled rows
    assert choice["check_margin"] == m[CHECKED]["check_margin"] > 0
    assert 0 <= m[CHECKED]["rows_checked"] <= 1 and 0 <= m[CHECKED]["held_out_rows_checked"] <= 1
    if choice["engine"] != "torch":  # only an engine inside the tolerance and faster is ever chosen
        assert m[choice["engine"]]["within_tolerance"] and m[choice["engine"]]["speedup"] >= choice["tolerance"]["min_speedup"]
        files = {p.name for p in (head_run.model_dir / "onnx").iterdir()}
        kept = {"onnx": ("model.",), "onnx-int8": ("model-int8",), CHECKED: ("model-int8", "model.")}[choice["engine"]]
        assert files and all(f.startswith(kept) for f in files)
        if choice["engine"] == CHECKED:  # the fp32 graph that re-runs rows near a boundary stays too
            assert choice["check_engine"] == "onnx" and "model.onnx" in files
    else:
        assert not (head_run.model_dir / "onnx").exists()  # unused graphs are not kept
    classifine.load(head_run.dir)  # and the run still verifies against its manifest


@needs_onnx
@pytest.mark.parametrize("engine", ["onnx", "onnx-int8"])
def test_onnx_engines_answer_like_fp32_torch(head_run, engine, monkeypatch):
    texts = [r["title"] + " " + r["body"] for r in rows("single_label", 40, seed=5)] + ["x", "a " * 400]
    ref = Predictor.load(head_run, engine="torch").predict_proba(texts)
    got = Predictor.load(head_run, engine=engine).predict_proba(texts)
    if engine == "onnx":
        np.testing.assert_allclose(got, ref, atol=1e-4)
    else:  # int8 weights move probabilities a little; the choice measures how much on validation
        assert np.abs(got - ref).max() < 0.2
    monkeypatch.setenv(ENGINE_ENV, engine)  # the machine-wide override picks the same engine
    assert Predictor.load(head_run).scorer.engine == engine
    classifine.load(head_run.dir)  # a graph the run lacks goes to the cache: the run is left as trained


@needs_onnx
def test_checked_engine_gives_fp32_answers_where_int8_is_near_a_boundary(head_run, monkeypatch):
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    texts = [r["title"] + " " + r["body"] for r in rows("single_label", 60, seed=7)] + ["x"]
    ref = Predictor.load(head_run, engine="torch").predict_proba(texts)
    int8 = Predictor.load(head_run, engine="onnx-int8").predict_proba(texts)
    checked = Predictor.load(head_run, engine=CHECKED)
    assert checked.scorer.engine == "onnx-int8" and checked.check.margin == read_choice(head_run.model_dir)["check_margin"]
    got = checked.predict_proba(texts)
    near = answer_margin("single_label", checked.labels, int8, checked.decision) < checked.check.margin
    np.testing.assert_allclose(got[near], ref[near], atol=1e-4)   # re-run in fp32 (ONNX: PyTorch's to 1e-4)
    np.testing.assert_allclose(got[~near], int8[~near], atol=1e-6)  # int8's, far from any boundary
    assert checked.check.rows_checked == near.sum() and checked.check.rows_seen == len(texts)
    # fp32 PyTorch is loaded only when a row needs it
    far = Predictor.load(head_run, engine=CHECKED)
    far.check.margin = 0.0
    far.predict_proba(texts)
    assert far.check._exact is None


@needs_onnx
def test_serving_a_checked_run_loads_its_fp32_model_before_the_first_request(head_run, monkeypatch):
    import gc

    import uvicorn

    from classifine.serve import app as serve_app

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app))
    monkeypatch.setattr(serve_app, "create_app", lambda predictor, settings: seen.update(predictor=predictor) or "app")
    monkeypatch.setenv(ENGINE_ENV, CHECKED)
    try:
        serve_app.serve(head_run.dir)
    finally:
        gc.unfreeze()
    assert seen["app"] == "app" and seen["predictor"].check._exact is not None


@needs_onnx
def test_server_metrics_count_the_records_rerun_in_fp32(head_run, monkeypatch):
    from fastapi.testclient import TestClient

    from classifine.serve.app import create_app

    monkeypatch.delenv(ENGINE_ENV, raising=False)
    predictor = Predictor.load(head_run, engine=CHECKED)
    predictor.check.margin = float("inf")  # every record is near a boundary: all run again
    record = {"title": "match goal", "body": "striker league coach"}
    with TestClient(create_app(predictor)) as client:
        assert client.post("/v1/classify", json={"inputs": [record] * 3}).status_code == 200
        text = client.get("/metrics").text
    line = next(l for l in text.splitlines() if l.startswith("classifine_fp32_rerun_records "))
    assert float(line.split()[1]) == predictor.check.rows_checked == 3


@needs_onnx
def test_checked_engine_without_a_measured_margin_says_how_to_get_one(head_run, tmp_path):
    import shutil

    shutil.copytree(head_run.dir, tmp_path / "run")
    run = classifine.core.runs.Run.load(tmp_path / "run")
    save_choice(run.model_dir, {"engine": "torch", "reason": "too few rows"})
    with pytest.raises(ConfigError, match="check margin") as e:
        Predictor.load(run, engine=CHECKED)
    assert any("--engine onnx-int8 " in p for p in e.value.problems)


def test_engine_torch_in_settings_is_recorded_and_used(toy_tasks, bert_path, tmp_path):
    run = classifine.train(toy_tasks["single_label"], method="head", model=bert_path, out=tmp_path / "r",
                           config={**FAST_HEAD, "engine": "torch"}, progress=False)
    assert read_choice(run.model_dir)["engine"] == "torch"
    assert Predictor.load(run).scorer.engine == "torch"


def test_unknown_engine_is_refused(head_run, monkeypatch):
    with pytest.raises(ConfigError, match="unknown inference engine"):
        Predictor.load(head_run, engine="tensorrt")
    monkeypatch.setenv(ENGINE_ENV, "fast")
    with pytest.raises(ConfigError, match="unknown inference engine"):
        Predictor.load(head_run)


@needs_onnx
def test_an_engine_outside_tolerance_is_not_chosen(head_run, monkeypatch, tmp_path):
    """A faster engine whose labels differ must lose to torch: the choice reads agreement first."""
    import shutil

    import classifine.predict.engine as engine_mod

    shutil.copytree(head_run.dir, tmp_path / "run")  # choosing again rewrites the run: not the shared one
    head_run = classifine.core.runs.Run.load(tmp_path / "run")

    real = engine_mod._rate
    calls = {"n": 0}

    def skewed(predictor, texts):
        if predictor.check is not None:  # the checked engine runs the skewed int8 scorer below
            probs, rate = real(predictor, texts)
            return probs, rate / 10  # int8 + fp32 for every row: slower than torch alone, say so for sure
        probs, rate = real(predictor, texts)
        if predictor.scorer.engine != "torch":  # 10x faster, but every label rotated
            return np.roll(probs, 1, axis=1), rate * 10
        calls["n"] += 1
        return probs, rate

    monkeypatch.setattr(engine_mod, "_rate", skewed)
    monkeypatch.setattr(engine_mod, "MIN_ROWS", 1)
    val = classifine.core.data.load_examples(head_run.task, head_run.task.data_path("test"))
    choice = engine_mod.choose_engine(head_run, val)
    assert calls["n"] >= 1
    assert choice["engine"] == "torch"
    assert not choice["measured"]["onnx"]["within_tolerance"]
    # so far off that the check re-runs every row in fp32: its answers are fp32's, and it is too slow to take
    checked = choice["measured"][CHECKED]
    assert checked["held_out_rows_checked"] == 1.0 and checked["label_agreement"] == 1.0
    assert json.loads((head_run.model_dir / "inference.json").read_text())["engine"] == "torch"


@needs_onnx
def test_embed_onnx_engine_gives_the_same_features(toy_tasks, bert_path, tmp_path):
    run = classifine.train(toy_tasks["single_label"], method="embed", model=bert_path, out=tmp_path / "e", progress=False)
    texts = [r["body"] for r in rows("single_label", 30, seed=9)]
    ref = Predictor.load(run, engine="torch").predict_proba(texts)
    got = Predictor.load(run, engine="onnx").predict_proba(texts)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_cli_engine_option(head_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from classifine.cli import app

    monkeypatch.delenv(ENGINE_ENV, raising=False)
    data = tmp_path / "in.csv"
    data.write_text("title,body\nmatch goal,striker league coach\n")
    r = CliRunner().invoke(app, ["predict", str(head_run.dir), "-i", str(data), "-o", str(tmp_path / "p.jsonl"),
                                 "--engine", "torch", "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])["label"] in head_run.task.label_names
    r = CliRunner().invoke(app, ["predict", str(head_run.dir), "-i", str(data), "-o", str(tmp_path / "q.jsonl"),
                                 "--engine", "tensorrt"])
    assert r.exit_code != 0 and "unknown inference engine" in r.output and "Traceback" not in r.output
    monkeypatch.delenv(ENGINE_ENV, raising=False)


def test_onnx_cache_drops_least_recently_used_graphs_beyond_its_limit(tmp_path, monkeypatch):
    import os

    from classifine.core.accel import ONNX_CACHE_ENV, ONNX_CACHE_GB_ENV, prune_cache

    monkeypatch.setenv(ONNX_CACHE_ENV, str(tmp_path / "cache"))
    folders = []
    for i, name in enumerate(["old", "mid", "new"]):
        f = tmp_path / "cache" / name
        f.mkdir(parents=True)
        (f / "model.onnx").write_bytes(b"x" * 400)
        os.utime(f, (1000 + i, 1000 + i))
        folders.append(f)
    run_graph = tmp_path / "run" / "model"  # a run's own graph: never pruned, never prunes
    run_graph.mkdir(parents=True)
    assert prune_cache(run_graph, limit_gb=0) == [] and all(f.exists() for f in folders)
    # using "old" makes it the most recent: "mid" goes first, then "new"
    assert prune_cache(folders[0], limit_gb=900e-9) == [folders[1]]
    assert folders[0].exists() and folders[2].exists()
    assert prune_cache(folders[2], limit_gb=0) == [folders[0]] and folders[2].exists()  # the one in use stays
    monkeypatch.setenv(ONNX_CACHE_GB_ENV, "lots")
    with pytest.raises(ConfigError, match=ONNX_CACHE_GB_ENV):
        prune_cache(folders[2])
