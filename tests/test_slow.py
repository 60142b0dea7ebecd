"""Real packaged models and real datasets (marked slow; CI runs them). Gemma tests share one
worker so the converted model and its encoder are loaded once."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import classifine
from classifine.core import models
from classifine.core.runs import Run

from conftest import ROOT, SHARED

EXAMPLE = ROOT / "examples" / "news_category"
pytestmark = pytest.mark.slow
gemma = pytest.mark.xdist_group("gemma")


def _subset(tmp_path: Path, name: str, per_class: int, lang: str | None = None) -> Path:
    frame = pd.read_csv(EXAMPLE / f"{name}.csv", dtype=str, keep_default_na=False)
    if lang:
        frame = frame[frame.lang == lang]
    frame = frame.groupby("category", group_keys=False).head(per_class)
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


@gemma
def test_gemma_converts_once_and_carries_a_chat_template():
    path = Path(models.resolve("gemma-3-270m"))
    assert (path / "model.safetensors").is_file()
    mtime = (path / "config.json").stat().st_mtime
    assert models.resolve("gemma-3-270m") == str(path) and (path / "config.json").stat().st_mtime == mtime
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<start_of_turn>user" in text and text.endswith("<start_of_turn>model\n")
    assert len(tok) == 262144


@gemma
def test_embed_gemma_on_the_bilingual_example(tmp_path):
    out = tmp_path / "run"
    classifine.train(EXAMPLE / "task.yaml", method="embed", model="gemma-3-270m", out=out,
                     train=_subset(tmp_path, "train", 12), test=_subset(tmp_path, "test", 6), progress=False)
    m = _metrics(out)
    assert m["n"] == 36 and m["macro_f1"] > 0.4  # chance is 1/6
    # the training texts went through ONNX Runtime; both engines give the same probabilities
    info = Run.load(out).config["info"]
    assert info["fit_engine"] == "onnx"
    # six depths compared on validation from one pass; the saved encoder runs only the chosen ones
    assert len(info["layer_scores"]) == 6 and str(info["layer"]) in info["layer_scores"]
    assert json.loads((out / "model" / "encoder" / "config.json").read_text())["num_hidden_layers"] == info["layer"]
    _engines_agree(out, ["onnx"])


@gemma
def test_embed_gemma_tuned_top_layers_on_the_bilingual_example(tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "run"
    run = classifine.train(EXAMPLE / "task.yaml", method="embed", model="gemma-3-270m", out=out,
                           train=_subset(tmp_path, "train", 12), test=_subset(tmp_path, "test", 6),
                           config={"tune_layers": 2, "engine": "torch"}, progress=False)
    m, info = _metrics(out), run.config["info"]
    assert m["n"] == 36 and m["macro_f1"] > 0.4  # chance is 1/6
    layer = info["layer"]
    assert info["tuning"]["layers"] == [layer - 1, layer] and len(info["tuning"]["epoch_scores"]) == 3
    assert info["encoder_weights"] == "written"
    # the saved encoder is a plain sentence-transformers folder that gives the run's answers
    texts = ["주가가 급등했다", "The striker scored twice in the final"]
    vectors = SentenceTransformer(str(out / "model" / "encoder"), device="cpu").encode(texts)
    predictor = classifine.load(out)
    direct = predictor.scorer.head.predict_proba(vectors)
    np.testing.assert_allclose(predictor.scorer.predict_proba(texts), direct, atol=1e-4)


@gemma
def test_head_gemma_lora_trains_and_loads_in_a_plain_pipeline(tmp_path):
    out = tmp_path / "run"
    run = classifine.train(EXAMPLE / "task.yaml", method="head", model="gemma-3-270m", out=out,
                           train=_subset(tmp_path, "train", 4), test=_subset(tmp_path, "test", 2),
                           config={"lora": True, "max_steps": 4, "batch_size": 4, "max_length": 64, "eval_steps": 2},
                           progress=False)
    assert run.config["info"]["steps"] == 4 and (out / "model" / "adapter").is_dir()
    code = ("from transformers import pipeline\n"
            f"p = pipeline('text-classification', model={str(out / 'model')!r})\nprint(p('주가가 급등했다')[0]['label'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] in run.task.label_names


def test_embed_minilm_on_english_rows(tmp_path):
    out = tmp_path / "run"
    classifine.train(EXAMPLE / "task.yaml", method="embed", model="minilm-l6", out=out,
                     train=_subset(tmp_path, "train", 20, "en"), test=_subset(tmp_path, "test", 10, "en"), progress=False)
    assert _metrics(out)["macro_f1"] > 0.5


def test_auto_minilm_within_its_budget(tmp_path):
    out = tmp_path / "run"
    run = classifine.train(EXAMPLE / "task.yaml", method="auto", budget="4m", model="minilm-l6", out=out,
                           train=_subset(tmp_path, "train", 20, "en"), test=_subset(tmp_path, "test", 10, "en"), progress=False)
    board = json.loads((out / "leaderboard.json").read_text())
    assert [t["method"] for t in board["tries"]] == ["tfidf", "hybrid", "head"]
    assert sum(t["status"] == "done" for t in board["tries"]) >= 2
    assert run.config["auto"]["elapsed_seconds"] <= 4 * 60 * 1.1
    assert _metrics(out)["macro_f1"] > 0.5


def test_head_minilm_full_fine_tune(tmp_path):
    out = tmp_path / "run"
    classifine.train(EXAMPLE / "task.yaml", method="head", model="minilm-l6", out=out,
                     train=_subset(tmp_path, "train", 20, "en"), test=_subset(tmp_path, "test", 10, "en"),
                     config={"epochs": 6, "learning_rate": 1e-4, "batch_size": 8, "max_length": 96}, progress=False)
    assert _metrics(out)["macro_f1"] > 0.35  # chance is 1/6
    _engines_agree(out, ["onnx", "onnx-int8"])
    _checked_gives_fp32_labels(out)


def _checked_gives_fp32_labels(run_dir: Path) -> None:
    """onnx-int8-checked on a real model: its margin measured on the example's test texts (as the
    choice does on validation), it gives fp32's label on every one of them, and int8's probabilities
    wherever it did not re-run a text."""
    from classifine.core.accel import CHECKED, read_choice
    from classifine.core.data import load_examples
    from classifine.predict.engine import choose_engine
    from classifine.predict.predictor import Predictor

    run = Run.load(run_dir)
    texts = load_examples(run.task, EXAMPLE / "test.csv")
    choice = choose_engine(run, texts, CHECKED)
    assert choice["engine"] == CHECKED and read_choice(run.model_dir)["check_margin"] > 0
    ref = Predictor.load(run, engine="torch").predict_proba(texts.texts)
    int8 = Predictor.load(run, engine="onnx-int8").predict_proba(texts.texts)
    checked = Predictor.load(run)
    got = checked.predict_proba(texts.texts)
    assert (got.argmax(1) == ref.argmax(1)).all()
    kept = ~np.isclose(got, ref, atol=1e-4).all(1)
    np.testing.assert_allclose(got[kept], int8[kept], atol=1e-6)


def _engines_agree(run_dir: Path, engines: list[str]) -> None:
    """The faster engines against fp32 PyTorch on the example's own texts (core/accel.py)."""
    import numpy as np

    from classifine.core.data import load_examples
    from classifine.predict.predictor import Predictor

    run = Run.load(run_dir)
    texts = load_examples(run.task, EXAMPLE / "test.csv").texts[:40]
    ref = Predictor.load(run, engine="torch").predict_proba(texts)
    for engine in engines:
        got = Predictor.load(run, engine=engine).predict_proba(texts)
        if engine == "onnx":
            np.testing.assert_allclose(got, ref, atol=1e-4)
        else:  # int8 weights: close, and the same label on nearly every text
            assert np.abs(got - ref).max() < 0.3 and (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
    Run.load(run_dir)  # graphs for engines the run did not choose never land in the run


def test_smollm2_converts_and_embeds(tmp_path):
    out = tmp_path / "run"
    classifine.train(EXAMPLE / "task.yaml", method="embed", model="smollm2-135m", out=out,
                     train=_subset(tmp_path, "train", 10, "en"), test=_subset(tmp_path, "test", 5, "en"),
                     config={"pooling": "last"}, progress=False)
    assert _metrics(out)["n"] == 30


@pytest.mark.skipif(not (SHARED / "datasets" / "ko_nsmc_sentiment").is_dir(), reason="../shared/datasets is absent (a user's clone)")
def test_tfidf_on_real_korean_reviews(tmp_path):
    src = SHARED / "datasets" / "ko_nsmc_sentiment"
    pd.read_csv(src / "train.csv", dtype=str, keep_default_na=False).head(3000).to_csv(tmp_path / "train.csv", index=False)
    pd.read_csv(src / "test.csv", dtype=str, keep_default_na=False).head(1000).to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "run"
    classifine.train(ROOT / "bench" / "tasks" / "ko_nsmc_sentiment.yaml", method="tfidf", out=out,
                     train=tmp_path / "train.csv", test=tmp_path / "test.csv", progress=False)
    assert _metrics(out)["accuracy"] > 0.7


@gemma
def test_sft_gemma_lora_gives_valid_calibrated_labels(tmp_path):
    out = tmp_path / "run"
    run = classifine.train(EXAMPLE / "task.yaml", method="sft", model="gemma-3-270m", out=out,
                           train=_subset(tmp_path, "train", 4), test=_subset(tmp_path, "test", 2),
                           config={"max_steps": 6, "eval_steps": 3, "batch_size": 4, "max_length": 320, "eval_rows": 6},
                           progress=False)
    assert run.config["info"]["prompt_format"] == "chat template"
    rec = classifine.load(out).predict([{"title": "반도체 수출 3개월 연속 증가", "body": "수출이 늘었다."}])[0]
    assert rec["label"] in run.task.label_names and sum(rec["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert _metrics(out)["invalid_output"]["rate"] == 0.0


@gemma
@pytest.mark.skipif(not (SHARED / "datasets" / "en_finentity_companies").is_dir(), reason="../shared/datasets is absent")
def test_sft_gemma_extraction_always_parses(tmp_path):
    src = SHARED / "datasets" / "en_finentity_companies"
    pd.read_csv(src / "train.csv", dtype=str, keep_default_na=False).head(24).to_csv(tmp_path / "train.csv", index=False)
    pd.read_csv(src / "test.csv", dtype=str, keep_default_na=False).head(3).to_csv(tmp_path / "test.csv", index=False)
    out = tmp_path / "run"
    classifine.train(ROOT / "bench" / "tasks" / "en_finentity.yaml", method="sft", model="gemma-3-270m", out=out,
                     train=tmp_path / "train.csv", test=tmp_path / "test.csv",
                     config={"max_steps": 4, "batch_size": 4, "max_length": 320, "eval_steps": 4}, progress=False)
    for row in (out / "predictions.jsonl").read_text().splitlines():
        rec = json.loads(row)
        assert isinstance(rec["pred"], list) and all(0 <= e["confidence"] <= 1 for e in rec["pred"])


def test_zero_shot_smollm2_scores_every_label(tmp_path):
    from classifine.training import zero_shot

    m = zero_shot(EXAMPLE / "task.yaml", "smollm2-135m", tmp_path / "base", data=_subset(tmp_path, "test", 3, "en"), progress=False)
    assert m["n"] == 18 and m["invalid_output"]["rate"] == 0.0
    rows = [json.loads(x) for x in (tmp_path / "base" / "predictions.jsonl").read_text().splitlines()]
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)


@gemma
def test_multitask_sft_gemma_on_the_bundled_example(tmp_path):
    """The bundled example's three tasks in one Gemma LoRA run and its zero-shot base, on a few rows:
    every task evaluated, the combined table, compare, card and a route per task."""
    from fastapi.testclient import TestClient

    from classifine.serve.app import create_app

    _subset(tmp_path, "train", 4)
    _subset(tmp_path, "test", 2)
    specs = []
    for name in ("task.yaml", "sections.yaml", "companies.yaml"):
        (tmp_path / name).write_text((EXAMPLE / name).read_text(encoding="utf-8"), encoding="utf-8")
        specs.append(tmp_path / name)
    classifine.zero_shot(specs, "gemma-3-270m", tmp_path / "base", progress=False)
    run = classifine.train(specs, method="sft", model="gemma-3-270m", out=tmp_path / "multi", progress=False,
                           config={"max_steps": 6, "eval_steps": 6, "batch_size": 4, "eval_rows": 6, "negatives": 1})
    assert list(run.tasks) == ["news-category", "news-sections", "news-companies"]
    for d in (tmp_path / "base", run.dir):
        combined = json.loads((d / "combined.json").read_text())
        cells = {line["label"]: line for line in combined["table"]}
        assert cells["total"]["den"] == 36 and cells["lang = en"]["den"] + cells["lang = ko"]["den"] == 36
        assert {s["task"] for s in combined["subsets"]["economic"]} == {"news-category", "news-sections", "news-companies"}
    companies = [json.loads(x) for x in (run.dir / "tasks" / "news-companies" / "predictions.jsonl").read_text().splitlines()]
    assert len(companies) == 12 and all(0 <= e["confidence"] <= 1 for r in companies for e in r["pred"])
    table = classifine.compare([tmp_path / "base", run.dir])["sections"][0]
    assert table["title"] == "All tasks" and table["rows"][0][0] == "total" and table["rows"][0][-1].endswith(" pp")
    card = classifine.card(run.dir, base=tmp_path / "base").read_text()
    assert card.count("dataset:") == 3 and "### Task `news-companies`" in card
    with TestClient(create_app(classifine.load(run.dir))) as client:
        rec = {"title": "해담카드 결제망 오류", "body": "해담카드의 승인 시스템에 오류가 생겨 결제가 되지 않았다."}
        for name, key in (("news-category", "label"), ("news-sections", "labels"), ("news-companies", "entities")):
            r = client.post(f"/v1/tasks/{name}/classify", json={"inputs": [rec]})
            assert r.status_code == 200 and key in r.json()["outputs"][0]
