"""Every method on every kind it supports, with tiny in-process models."""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

import classifine
from classifine.errors import ConfigError
from classifine.methods import METHODS, get_method

COMBOS = [
    ("tfidf", None, kind) for kind in ("single_label", "multi_label", "ordinal")
] + [
    ("embed", m, kind) for m in ("bert", "gemma") for kind in ("single_label", "multi_label", "ordinal")
] + [
    ("hybrid", m, kind) for m in ("bert", "gemma") for kind in ("single_label", "multi_label", "ordinal")
] + [
    ("head", m, kind) for m in ("bert", "gemma") for kind in ("single_label", "multi_label", "ordinal")
]
FAST_HEAD = {"epochs": 2, "batch_size": 16, "learning_rate": 5e-3, "logging_steps": 5}


def _model(request, which):
    return None if which is None else request.getfixturevalue(f"{which}_path")


@pytest.mark.parametrize("method,which,kind", COMBOS, ids=[f"{m}-{w}-{k}" for m, w, k in COMBOS])
def test_train_predict_every_kind(request, tmp_path, toy_tasks, method, which, kind):
    model = _model(request, which)
    out = tmp_path / "run"
    config = dict(FAST_HEAD) if method == "head" else {}
    run = classifine.train(toy_tasks[kind], method=method, model=model, out=out, config=config, progress=False)

    for name in ("task.yaml", "config.yaml", "metrics.json", "report.md", "predictions.jsonl"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 30
    labels = run.task.label_names
    preds = classifine.load(out).predict([{"title": "goal match", "body": "striker league coach"},
                                          {"title": "market", "body": "shares profit bank storm storm"}])
    for p in preds:
        assert list(p["probabilities"]) == labels
        probs = np.array(list(p["probabilities"].values()))
        assert ((probs >= 0) & (probs <= 1)).all()
        if kind == "multi_label":
            assert set(p["labels"]) <= set(labels)
        else:
            assert p["label"] in labels and probs.sum() == pytest.approx(1.0, abs=1e-4)
            assert p["confidence"] == pytest.approx(probs.max(), abs=1e-6)
    if kind == "multi_label":
        decision = json.loads((out / "model" / "decision.json").read_text())
        assert set(decision["thresholds"]) == set(labels)
    if kind == "ordinal":
        assert "mae" in metrics and "binary_at_threshold" in metrics
    if kind != "multi_label":
        assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_tfidf_learns_the_toy_task(toy_tasks, tmp_path):
    classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "r", progress=False)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["accuracy"] >= 0.9


def test_head_changes_parameters_and_saves_best_checkpoint(toy_tasks, tmp_path, bert_path):
    from safetensors.torch import load_file as load_torch

    out = tmp_path / "r"
    # a random tiny model needs many small steps before it separates the classes
    config = {**FAST_HEAD, "epochs": 20, "learning_rate": 1e-2, "early_stopping_patience": 20}
    run = classifine.train(toy_tasks["single_label"], method="head", model=bert_path, out=out, config=config, progress=False)
    before = load_torch(f"{bert_path}/model.safetensors")
    after = load_torch(str(out / "model" / "model.safetensors"))
    # the classification model prefixes the base model's keys ("bert.")
    pairs = [(k, a) for k in before for a in after if a.endswith(k) and "encoder.layer" in k]
    assert pairs and any(not (before[k] == after[a]).all() for k, a in pairs)
    assert run.config["info"]["best_checkpoint"] and list((out / "checkpoints").glob("checkpoint-*"))
    assert list((out / "logs").glob("events.out.tfevents*")), "TensorBoard logs"
    assert json.loads((out / "metrics.json").read_text())["accuracy"] >= 0.6


def test_head_lora_on_gemma_merges_and_keeps_adapter(toy_tasks, tmp_path, gemma_path):
    out = tmp_path / "r"
    run = classifine.train(toy_tasks["single_label"], method="head", model=gemma_path, out=out,
                           config={**FAST_HEAD, "lora": True, "lora_r": 4}, progress=False)
    assert (out / "model" / "adapter" / "adapter_config.json").is_file()
    full = sum(v.size for v in load_file(str(out / "model" / "model.safetensors")).values())
    assert 0 < run.config["info"]["trainable_parameters"] < full
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert "lora" not in json.dumps(cfg).lower()  # merged: plain weights, no adapter references


def test_head_model_loads_in_plain_transformers_pipeline(toy_tasks, tmp_path, bert_path):
    import subprocess
    import sys

    out = tmp_path / "r"
    classifine.train(toy_tasks["single_label"], method="head", model=bert_path, out=out, config=FAST_HEAD, progress=False)
    code = ("import sys, json\nfrom transformers import pipeline\n"
            f"p = pipeline('text-classification', model={str(out / 'model')!r})\n"
            "r = p(['goal match striker'])\nassert 'classifine' not in sys.modules\nprint(json.dumps(r))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])[0]["label"] in ("sports", "business", "weather")


def test_head_resume_continues_from_checkpoint(toy_tasks, tmp_path, bert_path):
    out = tmp_path / "r"
    cfg = {**FAST_HEAD, "eval_steps": 3, "max_steps": 6}
    classifine.train(toy_tasks["single_label"], method="head", model=bert_path, out=out, config=cfg, progress=False)
    run = classifine.train(toy_tasks["single_label"], method="head", model=bert_path, out=out,
                           config={**cfg, "max_steps": 9}, resume=True, progress=False)
    assert run.config["info"]["resumed"] is True
    assert run.config["info"]["steps"] == 9


def test_class_weight_balanced_favours_the_rare_class(tmp_path):
    from classifine.scoring.decision import class_weights

    w = class_weights(["a", "b"], {"a": 90, "b": 10}, "balanced")
    assert w["b"] / w["a"] == pytest.approx(9.0)
    assert class_weights(["a", "b"], {"a": 90, "b": 10}, "none") == {"a": 1.0, "b": 1.0}
    assert class_weights(["a", "b"], {"a": 90, "b": 10}, {"b": 3}) == {"a": 1.0, "b": 3.0}


def test_tfidf_rare_class_recall_improves_with_balanced_weights(tmp_path):
    import csv
    import random

    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choices(["alpha", "beta", "gamma", "shared", "noise"], k=6)), "label": "common"} for _ in range(200)]
    rows += [{"text": " ".join(rng.choices(["delta", "shared", "noise", "alpha"], k=6)), "label": "rare"} for _ in range(12)]
    for split, part in (("train", rows), ("test", rows[::3])):
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label"])
            w.writeheader()
            w.writerows(part)
    spec = {"name": "imb", "kind": "single_label", "text": "text", "label_column": "label", "labels": ["common", "rare"]}
    recall = {}
    for cw in ("balanced", "none"):
        classifine.train(spec, method="tfidf", out=tmp_path / cw, train=tmp_path / "train.csv", test=tmp_path / "test.csv",
                         config={"class_weight": cw, "C": 0.05}, progress=False)
        recall[cw] = json.loads((tmp_path / cw / "metrics.json").read_text())["per_class"]["rare"]["recall"]
    assert recall["balanced"] > recall["none"]


@pytest.mark.parametrize("method", [m for m in METHODS if "extraction" not in get_method(m).KINDS])
def test_extraction_is_refused_with_the_reason(method, toy_tasks, tmp_path):
    with pytest.raises(ConfigError) as e:
        classifine.train(toy_tasks["extraction"], method=method, model="x", out=tmp_path / "r", progress=False)
    assert "sft" in str(e.value)


def test_unknown_method_and_settings_are_reported_together(toy_tasks, tmp_path):
    with pytest.raises(ConfigError) as e:
        classifine.train(toy_tasks["single_label"], method="tfdif", out=tmp_path / "r")
    assert "did you mean 'tfidf'" in str(e.value)
    with pytest.raises(ConfigError) as e:
        classifine.train(toy_tasks["single_label"], method="head", model="x", out=tmp_path / "r",
                         config={"epoch": 1, "lora": "maybe", "class_weight": {"nope": 2}})
    msg = str(e.value)
    assert "did you mean 'epochs'" in msg and "lora" in msg and "nope" in msg
    assert not (tmp_path / "r").exists(), "nothing is written before the input is valid"


def test_method_modules_share_one_shape():
    for name in METHODS:
        mod = get_method(name)
        for attr in ("Config", "KINDS", "REFUSED", "NEEDS_MODEL", "fit", "Scorer"):
            assert hasattr(mod, attr), f"{name}.{attr}"
        assert "seed" in mod.Config.model_fields and "class_weight" in mod.Config.model_fields


def test_every_method_matches_the_method_protocol():
    import inspect

    from classifine.methods import Method

    shape = list(inspect.signature(Method.fit).parameters)[1:]  # without self
    for name in METHODS:
        mod = get_method(name)
        assert isinstance(mod, Method), name
        extra = ["others"] if getattr(mod, "MULTI_TASK", False) else []  # one model for several specs
        assert list(inspect.signature(mod.fit).parameters) == shape + extra, name
        assert not extra or callable(getattr(mod.Scorer, "for_task", None)), name
        assert callable(mod.Scorer.load) and callable(getattr(mod.Scorer, "predict_proba", None)), name
        assert set(mod.KINDS) | set(mod.REFUSED) == {"single_label", "multi_label", "ordinal", "extraction"}, name


def test_existing_run_is_not_overwritten(toy_tasks, tmp_path):
    from classifine.errors import RunError

    classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "r", progress=False)
    with pytest.raises(RunError, match="--overwrite"):
        classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "r", progress=False)
    classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "r", overwrite=True, progress=False)


def test_every_run_is_temperature_calibrated_without_changing_answers(tmp_path):
    from classifine.predict.predictor import Predictor

    root = __import__("conftest").ROOT / "examples" / "news_category"
    out = tmp_path / "r"
    classifine.train(root / "task.yaml", method="tfidf", out=out, progress=False)
    decision = json.loads((out / "model" / "decision.json").read_text())
    assert decision["temperature"] == decision["temperature_fitted"] != 1.0  # the example's tfidf is overconfident
    assert decision["ece_validation_after"] < decision["ece_validation_before"]
    p = Predictor.load(out)
    texts = ["Chipmaker shares jump on record profit", "폭우로 주택 침수 피해"]
    calibrated = p.predict_proba(texts)
    raw = np.asarray(p.scorer.predict_proba(texts))
    assert (calibrated.argmax(1) == raw.argmax(1)).all() and not np.allclose(calibrated, raw)


def test_adjust_adds_offsets_then_divides_the_logits_by_the_temperature():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    soft = lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True)  # noqa: E731
    from classifine.scoring.decision import adjust

    assert np.allclose(adjust("single_label", soft(logits), {"temperature": 2.0}), soft(logits / 2.0))
    assert np.allclose(adjust("multi_label", soft(logits), {"temperature": 2.0}), soft(logits))  # sigmoids are left alone
    offsets = [0.0, 1.0, -1.0]
    assert np.allclose(adjust("single_label", soft(logits), {"offsets": offsets, "temperature": 2.0}),
                       soft((logits + offsets) / 2.0))


def test_a_temperature_that_worsens_validation_calibration_is_not_applied():
    from classifine.scoring.decision import calibration

    # overconfident scores from a known temperature: the fitted one is applied and lowers ECE
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2000, 3)) * 3
    p = np.exp(logits / 2.5) / np.exp(logits / 2.5).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    good = calibration("single_label", logits, y)
    assert good["temperature"] == good["temperature_fitted"] == pytest.approx(2.5, rel=0.15)
    assert good["ece_validation_after"] < good["ece_validation_before"]
    # 40 noisy rows where the NLL optimum (about 1.2) raises ECE: recorded, not applied
    rng = np.random.default_rng(2)
    scores, y = rng.normal(size=(40, 3)), rng.integers(0, 3, 40)
    y[:20] = scores[:20].argmax(1)
    bad = calibration("single_label", scores, y)
    assert bad["temperature"] == 1.0 and bad["temperature_fitted"] != 1.0
    assert bad["ece_validation_after"] == bad["ece_validation_before"]


def test_class_offsets_bring_back_a_rare_class_the_model_ranks_well_but_never_puts_on_top():
    from types import SimpleNamespace

    from classifine.scoring.decision import macro_f1_of, tune_decision

    # 3 classes, the third rare (4%): its score is informative but shifted down by 3.5, so it never tops a row
    rng = np.random.default_rng(0)
    gold = rng.choice(3, size=600, p=[0.58, 0.38, 0.04])
    z = rng.normal(size=(600, 3))
    z[np.arange(600), gold] += 2.0
    z[:, 2] -= 3.5
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    task = SimpleNamespace(kind="single_label", label_names=["not", "hate", "extreme"])
    labels = [task.label_names[i] for i in gold]
    assert (probs.argmax(1) == 2).sum() == 0  # collapsed: never predicted
    decision = tune_decision(task, probs, labels)
    before, after = decision["macro_f1_validation"]
    assert after >= before + 0.1 and decision["offsets"][2] > 0
    from classifine.scoring.decision import adjust

    pred = adjust("single_label", probs, decision).argmax(1)
    assert macro_f1_of(pred, gold, 3) == pytest.approx(after, abs=1e-4)
    assert ((pred == 2) & (gold == 2)).sum() > 0
    # well-ranked, well-placed classes: nothing to gain, no offsets
    clean = np.full((300, 3), 0.05)
    g = np.arange(300) % 3
    clean[np.arange(300), g] = 0.9
    d = tune_decision(task, clean, [task.label_names[i] for i in g], calibrate=False)
    assert "offsets" not in d and d["macro_f1_validation"] == [1.0, 1.0]


def test_class_offsets_that_only_fit_the_noise_of_a_small_validation_set_are_refused():
    from classifine.scoring.decision import _ascend, macro_f1_of, tune_offsets

    fitted = refused = 0
    for seed in range(20):  # scores that carry no information: any gain is noise
        rng = np.random.default_rng(seed)
        gold = rng.integers(0, 3, size=100)
        scores = rng.normal(size=(100, 3))
        fitted += macro_f1_of((scores + _ascend(scores, gold, 3)).argmax(1), gold, 3) >= macro_f1_of(scores.argmax(1), gold, 3) + 0.01
        refused += tune_offsets(scores, gold)["offsets"] is None
    assert fitted >= 16 and refused >= 16  # the ascent alone "gains" on noise; the held-out check refuses it
