"""Every run's saved model gives classifine's answers in the field's own libraries (README.md, "Load
runs without classifine"). Each check runs in a fresh interpreter that never imports classifine
(asserted there) and is compared here with classifine's Predictor; the tfidf, embed and generative
checks run README.md's snippets exactly as printed. Classifine's side runs fp32 PyTorch (engine
torch): the ONNX engines' own tolerance is tested in test_accel.py."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import classifine
from classifine.errors import RunError
from classifine.predict.predictor import Predictor

from conftest import ROOT
from toy import QUICK, rows

FAST_HEAD = {"epochs": 2, "batch_size": 16, "learning_rate": 5e-3, "logging_steps": 5}
# the last text is longer than any toy run's max_length: truncation must cut where classifine cuts
TEXTS = ["goal match striker league", "market shares profit bank merger", "storm storm storm rain wind forecast",
         "오늘 축구 경기 날씨", "today news " * 40]


def snippet(name: str) -> str:
    """The Python block README.md marks with ``<!-- test: name -->``."""
    found = re.search(rf"<!-- test: {name} -->\s*```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    assert found, f"README.md has no snippet marked {name}"
    return found.group(1)


def plain(code: str, payload: dict, tmp_path: Path) -> dict:
    """Run ``code`` in a new interpreter with ``PAYLOAD`` (JSON) and return what it assigns to
    ``RESULT``; the child fails if anything it ran imported classifine."""
    (tmp_path / "payload.json").write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    script = tmp_path / "plain_check.py"
    script.write_text("import json, sys\nPAYLOAD = json.loads(open(sys.argv[1], encoding='utf-8').read())\n" + code
                      + "\nassert 'classifine' not in sys.modules, 'the check imported classifine'\n"
                      "print('RESULT ' + json.dumps(RESULT))\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "payload.json")], capture_output=True, text=True,
                         timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def forced(monkeypatch, extra):
    """Training tunes its decisions as always, then ``extra(task)`` is laid on top, so every fold
    is exercised whatever the toy data gives; returns the probabilities each tuning saw."""
    import classifine.training as training

    real, seen = training.tune_decision, []

    def tune(task, probs, gold, **kw):
        seen.append(np.array(probs))
        return {**real(task, probs, gold, **kw), **extra(task)}

    monkeypatch.setattr(training, "tune_decision", tune)
    return seen


FORCED = {
    "single_label": lambda task: {"offsets": [0.6, -0.2, -0.4], "temperature": 1.7},
    "multi_label": lambda task: {"thresholds": dict(zip(task.label_names, [0.3, 0.62, 0.8]))},
    "ordinal": lambda task: {"temperature": 1.4},
}
PIPELINE = """
from transformers import pipeline
clf = pipeline("text-classification", model=PAYLOAD["model"], top_k=None, truncation=True)
bare = pipeline("text-classification", model=PAYLOAD["model"], top_k=None)
RESULT = {"scores": [{d["label"]: d["score"] for d in row} for row in clf(PAYLOAD["texts"])],
          "bare": [{d["label"]: d["score"] for d in row} for row in bare(PAYLOAD["texts"][:-1])],
          "model_max_length": clf.tokenizer.model_max_length, "problem_type": clf.model.config.problem_type}
"""


def _pipeline_probs(result: dict, labels: list[str], key: str = "scores") -> np.ndarray:
    return np.array([[row[lab] for lab in labels] for row in result[key]])


def _raw_logits(run, texts):
    """The best checkpoint's logits: the raw model before anything was folded into it."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    net = AutoModelForSequenceClassification.from_pretrained(run.config["info"]["best_checkpoint"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(run.model_dir))
    enc = tok(texts, padding=True, truncation=True, max_length=run.config["config"]["max_length"], return_tensors="pt")
    with torch.inference_mode():
        return net.eval()(**enc).logits.double().numpy(), net


@pytest.mark.parametrize("kind", ["single_label", "multi_label", "ordinal"])
def test_head_pipeline_gives_classifine_answers(kind, toy_tasks, tmp_path, bert_path, monkeypatch):
    from classifine.scoring.decision import adjust, decide, ordinal_probabilities, probabilities

    forced(monkeypatch, FORCED[kind])
    run = classifine.train(toy_tasks[kind], method="head", model=bert_path, out=tmp_path / "run", config=FAST_HEAD,
                           progress=False)
    decision = json.loads((run.model_dir / "decision.json").read_text())
    assert decision["folded"] == {"single_label": ["offsets", "temperature"], "multi_label": ["thresholds"],
                                  "ordinal": ["temperature"]}[kind]
    predictor = Predictor.load(run.dir, engine="torch")
    assert not set(decision["folded"]) & set(predictor.decision), "folded decisions are not applied twice"
    want, probs = predictor.predict_texts(TEXTS), predictor.predict_proba(TEXTS)
    labels = run.task.label_names

    # classifine's answers are what they were before folding: the raw model with decision.json applied
    raw, raw_net = _raw_logits(run, TEXTS)
    if kind == "single_label":
        np.testing.assert_allclose(probs, adjust(kind, probabilities(kind, raw), decision), atol=1e-6)
        meta = json.loads((run.model_dir / "classifine_head.json").read_text())
        from safetensors.torch import load_file
        folded = load_file(str(run.model_dir / "model.safetensors"))
        T, o = meta["folded"]["decision"]["temperature"], np.array(meta["folded"]["decision"]["offsets"])
        layer = meta["folded"]["layer"]
        raw_w = dict(raw_net.named_parameters())
        np.testing.assert_allclose(folded[f"{layer}.weight"].double().numpy() * T, raw_w[f"{layer}.weight"].detach().double().numpy(), atol=1e-6)
        np.testing.assert_allclose(folded[f"{layer}.bias"].double().numpy() * T - o, raw_w[f"{layer}.bias"].detach().double().numpy(), atol=1e-6)
    elif kind == "multi_label":
        # the same labels; their order is now by the threshold-aligned probabilities
        assert [set(w["labels"]) for w in want] == [set(d) for d in decide(kind, labels, probabilities(kind, raw), decision)]
    else:
        sigma = json.loads((run.model_dir / "classifine_head.json").read_text())["sigma"]
        np.testing.assert_allclose(probs, adjust(kind, ordinal_probabilities(raw[:, 0], sigma, len(labels)), decision), atol=1e-6)

    got = plain(PIPELINE, {"model": str(run.model_dir), "texts": TEXTS}, tmp_path)
    assert got["model_max_length"] == run.config["config"]["max_length"]
    assert got["problem_type"] == ("multi_label_classification" if kind == "multi_label" else "single_label_classification")
    np.testing.assert_allclose(_pipeline_probs(got, labels), probs, atol=1e-5)
    np.testing.assert_allclose(_pipeline_probs(got, labels, "bare"), probs[:-1], atol=1e-5)  # short texts need no flag
    for row, w in zip(got["scores"], want):
        if kind == "multi_label":  # on at >= 0.5, highest first
            assert [lab for lab, s in row.items() if s >= 0.5] == w["labels"]
        else:
            assert max(row, key=row.get) == w["label"]


@pytest.mark.parametrize("offsets", [None, [0.6, -0.2, -0.4]], ids=["temperature", "offsets"])
def test_decoder_head_folds_what_a_bias_free_layer_can_take(offsets, toy_tasks, tmp_path, gemma_path, monkeypatch):
    """transformers' decoder classifiers (Gemma's `score`) have no bias: a temperature folds, offsets
    cannot, and then nothing is folded and classifine keeps applying decision.json."""
    from classifine.scoring.decision import adjust, probabilities

    forced(monkeypatch, lambda task: {"offsets": offsets, "temperature": 1.7})
    run = classifine.train(toy_tasks["single_label"], method="head", model=gemma_path, out=tmp_path / "run",
                           config=FAST_HEAD, progress=False)
    decision = json.loads((run.model_dir / "decision.json").read_text())
    predictor = Predictor.load(run.dir, engine="torch")
    probs = predictor.predict_proba(TEXTS)
    raw, _ = _raw_logits(run, TEXTS)
    np.testing.assert_allclose(probs, adjust("single_label", probabilities("single_label", raw),
                                             {"offsets": offsets, "temperature": 1.7}), atol=1e-6)
    got = plain(PIPELINE, {"model": str(run.model_dir), "texts": TEXTS}, tmp_path)
    if offsets is None:
        assert decision["folded"] == ["temperature"]
        np.testing.assert_allclose(_pipeline_probs(got, run.task.label_names), probs, atol=1e-5)
    else:
        assert decision["folded"] == [] and "bias" in decision["fold_note"]
        assert predictor.decision["offsets"] == offsets and predictor.decision["temperature"] == 1.7
        np.testing.assert_allclose(_pipeline_probs(got, run.task.label_names), probabilities("single_label", raw), atol=1e-5)


def test_resume_tunes_on_raw_weights_and_folds_once(toy_tasks, tmp_path, bert_path, monkeypatch):
    """A finished run resumed (as after a kill while evaluating) rewrites raw weights from its
    checkpoints before tuning: the same probabilities are tuned on, the same layer results."""
    from safetensors.torch import load_file

    seen = forced(monkeypatch, FORCED["single_label"])
    spec, out = toy_tasks["single_label"], tmp_path / "run"
    run = classifine.train(spec, method="head", model=bert_path, out=out, config=FAST_HEAD, progress=False)
    first = (json.loads((out / "model" / "decision.json").read_text()), load_file(str(out / "model" / "model.safetensors")))
    before = Predictor.load(out, engine="torch").predict_proba(TEXTS)
    again = classifine.train(spec, method="head", model=bert_path, out=out, config=FAST_HEAD, progress=False, resume=True)
    assert again.config["info"]["resumed"] is True and len(seen) == 2
    np.testing.assert_array_equal(seen[0], seen[1])
    assert json.loads((out / "model" / "decision.json").read_text()) == first[0]
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert all((weights[k] == v).all() for k, v in first[1].items())
    np.testing.assert_allclose(Predictor.load(out, engine="torch").predict_proba(TEXTS), before, atol=1e-7)

    from classifine.methods.head import fold_decision
    with pytest.raises(RunError, match="already"):  # folding twice would compound the decisions
        fold_decision(run.model_dir, run.task, first[0])


EMBED = [("bert", "single_label", {}), ("gemma", "multi_label", {"pooling": "last", "prefix": "passage: "}),
         ("bert", "ordinal", {"pooling": "cls", "normalize": False}),
         ("gemma", "single_label", {"layer": 1})]  # a decoder cut to its first layer: the final norm still applies


@pytest.mark.parametrize("which,kind,config", EMBED, ids=[f"{w}-{k}" for w, k, _ in EMBED])
def test_embed_run_predicts_with_sentence_transformers(request, which, kind, config, toy_tasks, tmp_path):
    model = request.getfixturevalue(f"{which}_path")
    run = classifine.train(toy_tasks[kind], method="embed", model=model, out=tmp_path / "run", config=config,
                           progress=False)
    encoder = run.model_dir / "encoder"
    assert run.config["info"]["encoder_weights"] in ("linked", "copied")
    assert json.loads((encoder / "config.json").read_text())["num_hidden_layers"] == run.config["info"]["layer"]
    if run.config["info"]["encoder_weights"] == "linked":
        assert (encoder / "model.safetensors").stat().st_nlink >= 2, "no second copy of the weights"
    predictor = Predictor.load(run.dir, engine="torch")
    assert Path(predictor.scorer.encoder.model.name_or_path) == encoder, "classifine loads the run's own encoder"
    want, probs = predictor.predict_texts(TEXTS), predictor.predict_proba(TEXTS)
    code = snippet("linear-head") + snippet("embed") + (
        "answers, p = linear_answers(PAYLOAD['model'], embed_features(PAYLOAD['model'], PAYLOAD['texts']))\n"
        "RESULT = {'answers': answers, 'probs': p.tolist()}\n")
    got = plain(code, {"model": str(run.model_dir), "texts": TEXTS}, tmp_path)
    np.testing.assert_allclose(got["probs"], probs, atol=1e-5)
    assert got["answers"] == [w["labels" if kind == "multi_label" else "label"] for w in want]


def test_embed_runs_without_the_folder_still_load(toy_tasks, tmp_path, bert_path):
    """Runs made before model/encoder existed name the base model only; they load by resolving it."""
    import shutil

    run = classifine.train(toy_tasks["single_label"], method="embed", model=bert_path, out=tmp_path / "run", progress=False)
    probs = Predictor.load(run.dir, engine="torch").predict_proba(TEXTS)
    shutil.rmtree(run.model_dir / "encoder")
    meta = json.loads((run.model_dir / "encoder.json").read_text())
    meta.pop("sentence_transformers"), meta.pop("save_encoder")
    (run.model_dir / "encoder.json").write_text(json.dumps(meta))
    (run.dir / "manifest.json").unlink()  # an old run has none
    old = Predictor.load(run.dir, engine="torch")
    assert Path(old.scorer.encoder.model.name_or_path) == Path(bert_path)
    np.testing.assert_allclose(old.predict_proba(TEXTS), probs, atol=1e-6)


def _binary_task(folder: Path) -> Path:
    folder.mkdir()
    for split, seed in (("train", 1), ("test", 2)):
        data = [r for r in rows("single_label", 90, seed) if r["label"] != "weather"]
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    (folder / "task.yaml").write_text("name: toy-binary\nkind: single_label\ntext: [title, body]\nlabel_column: label\n"
                                      "labels: [sports, business]\ndata: {train: train.csv, test: test.csv}\n")
    return folder / "task.yaml"


@pytest.mark.parametrize("kind", ["single_label", "binary", "multi_label", "ordinal"])
def test_tfidf_readme_snippet_gives_classifine_answers(kind, toy_tasks, tmp_path):
    spec = _binary_task(tmp_path / "binary") if kind == "binary" else toy_tasks[kind]
    config = {"C": 0.05} if kind != "multi_label" else {}  # a weak head: calibration gets a temperature to apply
    run = classifine.train(spec, method="tfidf", out=tmp_path / "run", config=config, progress=False)
    predictor = Predictor.load(run.dir, engine="torch")
    want, probs = predictor.predict_texts(TEXTS), predictor.predict_proba(TEXTS)
    code = snippet("linear-head") + snippet("tfidf") + (
        "X = tfidf_features(PAYLOAD['model'], PAYLOAD['texts'])\n"
        "answers, p = linear_answers(PAYLOAD['model'], X)\n"
        "raw = as_logistic_regression(PAYLOAD['model']).predict_proba(X).tolist() if PAYLOAD['single'] else None\n"
        "RESULT = {'answers': answers, 'probs': p.tolist(), 'raw': raw}\n")
    got = plain(code, {"model": str(run.model_dir), "texts": TEXTS, "single": kind in ("single_label", "binary")}, tmp_path)
    np.testing.assert_allclose(got["probs"], probs, atol=1e-6)
    assert got["answers"] == [w["labels" if kind == "multi_label" else "label"] for w in want]
    if got["raw"] is not None:
        np.testing.assert_allclose(got["raw"], predictor.scorer.predict_proba(TEXTS), atol=1e-6)


@pytest.mark.parametrize("merge", [False, True], ids=["adapter", "merged"])
def test_generative_run_loads_in_transformers_and_peft(merge, small_tasks, tmp_path, gemma_path):
    out = tmp_path / "run"
    classifine.train(small_tasks["single_label"], method="sft", model=gemma_path, out=out,
                     config={**QUICK, "merge": merge, "lora_r": 4}, progress=False)
    predictor = Predictor.load(out, engine="torch")
    texts = TEXTS[:4]
    want, probs = predictor.predict_texts(texts), predictor.predict_proba(texts)
    code = snippet("generative") + (
        "import sys\nmodel, tokenizer = load_generative(PAYLOAD['run'])\n"
        "assert ('peft' in sys.modules) != PAYLOAD['merged'], 'the adapter loads with peft, merged weights without'\n"
        "RESULT = {'probs': label_probabilities(PAYLOAD['run'], model, tokenizer, PAYLOAD['texts']).tolist()}\n")
    got = plain(code, {"run": str(out), "texts": texts, "merged": merge}, tmp_path)
    np.testing.assert_allclose(got["probs"], probs, atol=1e-4)
    labels = predictor.labels
    assert [labels[i] for i in np.argmax(got["probs"], 1)] == [w["label"] for w in want]


@pytest.mark.slow
@pytest.mark.xdist_group("gemma")
@pytest.mark.parametrize("model,pooling", [("minilm-l6", "mean"), ("gemma-3-270m", "last")])
def test_packaged_encoders_become_linked_sentence_transformers_folders(model, pooling, tmp_path):
    """The real encoders (Gemma's tokenizer carries a chat template sentence-transformers must not
    apply to plain texts): the same embeddings, and no second copy of the weights on this disk."""
    import pandas as pd

    example = ROOT / "examples" / "news_category"
    for split, n in (("train", 6), ("test", 2)):
        frame = pd.read_csv(example / f"{split}.csv", dtype=str, keep_default_na=False)
        frame.groupby("category", group_keys=False).head(n).to_csv(tmp_path / f"{split}.csv", index=False)
    run = classifine.train(example / "task.yaml", method="embed", model=model, out=tmp_path / "run",
                           train=tmp_path / "train.csv", test=tmp_path / "test.csv",
                           config={"pooling": pooling, "prefix": "passage: "}, progress=False)
    # the Gemma cache is the user's own; site-packages may be root's (protected_hardlinks: then a copy)
    assert run.config["info"]["encoder_weights"] == "linked" or model == "minilm-l6"
    texts = ["Chipmaker shares jump on record profit", "폭우로 주택 침수 피해", "  Banjir besar melanda Jakarta  "]
    predictor = Predictor.load(run.dir, engine="torch")
    code = snippet("linear-head") + snippet("embed") + (
        "answers, p = linear_answers(PAYLOAD['model'], embed_features(PAYLOAD['model'], PAYLOAD['texts']))\n"
        "RESULT = {'answers': answers, 'probs': p.tolist()}\n")
    got = plain(code, {"model": str(run.model_dir), "texts": texts}, tmp_path)
    np.testing.assert_allclose(got["probs"], predictor.predict_proba(texts), atol=1e-5)
    assert got["answers"] == [w["label"] for w in predictor.predict_texts(texts)]
