"""The quality levers of issue 13 on tiny models: the embedding layer chosen on validation, the
head's C chosen on validation, and the TF-IDF + embeddings blend."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import classifine
from classifine.errors import ConfigError
from classifine.methods import get_method
from classifine.methods.embed import candidate_layers
from classifine.methods.hybrid import WEIGHTS, blend
from classifine.core.task import as_task
from classifine.scoring.kinds import selection_score
from toy import tiny_gemma


@pytest.fixture(scope="module")
def deep_gemma(tmp_path_factory) -> str:
    return str(tiny_gemma(tmp_path_factory.mktemp("gemma4"), layers=4))


def test_candidate_layers_span_the_upper_two_thirds():
    assert candidate_layers(18) == [6, 8, 11, 13, 16, 18]
    assert candidate_layers(6) == [2, 3, 4, 5, 6]
    assert candidate_layers(1) == [1]
    for n in range(1, 40):
        c = candidate_layers(n)
        assert c[-1] == n and c == sorted(set(c)) and len(c) <= 6 and c[0] >= 1


def test_embed_chooses_layer_and_C_on_validation_and_cuts_the_encoder(toy_tasks, tmp_path, deep_gemma):
    run = classifine.train(toy_tasks["single_label"], method="embed", model=deep_gemma, out=tmp_path / "r", progress=False)
    info = run.config["info"]
    scores = {int(k): v for k, v in info["layer_scores"].items()}
    assert sorted(scores) == candidate_layers(4)
    assert scores[info["layer"]] >= max(scores.values()) - 1e-3  # the best, or a shallower near-tie
    assert info["C_scores"][str(info["C"])] >= max(info["C_scores"].values()) - 1e-3
    saved = json.loads((run.model_dir / "encoder" / "config.json").read_text())
    assert saved["num_hidden_layers"] == info["layer"]
    meta = json.loads((run.model_dir / "encoder.json").read_text())
    assert meta["layer"] == info["layer"] and meta["C"] == info["C"]
    # the cut encoder runs only the chosen layers
    predictor = classifine.load(run.dir)
    net = predictor.scorer.encoder.model
    assert len(net.layers) == info["layer"]


def test_embed_refuses_a_layer_the_model_does_not_have(toy_tasks, tmp_path, deep_gemma):
    with pytest.raises(ConfigError, match="outside") as e:
        classifine.train(toy_tasks["single_label"], method="embed", model=deep_gemma, out=tmp_path / "r",
                         config={"layer": 9}, progress=False)
    assert "1..4" in str(e.value)
    assert not (tmp_path / "r").exists(), "refused before anything is written"


def test_selection_score_tunes_multi_label_thresholds():
    task = as_task({"name": "t", "kind": "multi_label", "text": "text", "label_column": "y", "labels": ["a", "b"]})
    gold = [["a"], ["b"], ["a", "b"], ["a"]]
    probs = np.array([[0.3, 0.1], [0.1, 0.3], [0.3, 0.3], [0.3, 0.1]])  # ranked right, all below 0.5
    assert selection_score(task, gold, probs) == pytest.approx(1.0)


def test_log_loss():
    from classifine.scoring.metrics import log_loss

    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    assert log_loss(p, ["a", "a"], ["a", "b"]) == pytest.approx(-(np.log(0.5) + np.log(0.9)) / 2)
    assert log_loss(p, [["a"], []], ["a", "b"], multi_label=True) == pytest.approx(
        -(np.log(0.5) + np.log(0.5) + np.log(0.1) + np.log(0.9)) / 4)


def test_blend_ends_are_the_parts():
    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    b = np.array([[0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
    np.testing.assert_allclose(blend("single_label", [a, b], 1.0), a, atol=1e-9)
    np.testing.assert_allclose(blend("single_label", [a, b], 0.0), b, atol=1e-9)
    np.testing.assert_allclose(blend("multi_label", [a, b], 0.0), b, atol=1e-9)
    mid = blend("single_label", [a, b], 0.5)
    np.testing.assert_allclose(mid.sum(1), 1.0)
    assert ((mid[:, 0] - a[:, 0]) * (mid[:, 0] - b[:, 0]) < 0).all()  # strictly between the parts


@pytest.mark.parametrize("kind", ["single_label", "multi_label"])
def test_the_blend_weight_reads_how_parts_rank_labels_not_how_confident_they_are(toy_tasks, kind):
    from classifine.core.task import as_task
    from classifine.methods.hybrid import _calibrated_log_loss
    from classifine.scoring.metrics import log_loss
    from classifine.scoring.decision import probabilities

    task = as_task(toy_tasks[kind])
    labels = task.label_names
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, len(labels))) * 2
    honest, overconfident = probabilities(kind, z), probabilities(kind, z * 3)
    # gold drawn from the honest probabilities: they are calibrated, the sharpened ones are not
    if kind == "multi_label":
        gold = [[lab for j, lab in enumerate(labels) if rng.random() < honest[i, j]] for i in range(200)]
    else:
        gold = [labels[int(rng.choice(len(labels), p=honest[i]))] for i in range(200)]
    raw = [log_loss(p, gold, labels, kind == "multi_label") for p in (honest, overconfident)]
    calibrated = [_calibrated_log_loss(task, p, gold) for p in (honest, overconfident)]
    assert raw[1] > raw[0] + 0.1   # overconfidence costs raw log-loss...
    assert calibrated[1] == pytest.approx(calibrated[0], abs=1e-3)   # ...and nothing once a temperature is fitted
    assert calibrated[0] <= raw[0] + 1e-9


@pytest.mark.parametrize("kind", ["single_label", "multi_label"])
def test_hybrid_is_never_worse_than_its_parts_on_validation(toy_tasks, tmp_path, bert_path, kind):
    run = classifine.train(toy_tasks[kind], method="hybrid", model=bert_path, out=tmp_path / "r",
                           config={"embed_rows": 40, "embed": {"layer": "last"}}, progress=False)
    info = run.config["info"]
    losses = {float(w): v for w, v in info["validation_log_loss"].items()}
    assert sorted(losses) == list(WEIGHTS) and sorted(map(float, info["validation_scores"])) == list(WEIGHTS)
    assert losses[info["weight"]] == min(losses.values()) <= min(losses[0.0], losses[1.0])
    assert info["parts"]["embed"]["train_rows"] == 40
    assert info["parts"]["tfidf"]["train_rows"] == run.config["data"]["train_rows"]
    # the run's probabilities are the blend of its two parts, each loadable by its own method
    model_dir = run.model_dir
    texts = ["goal match striker", "market shares bank storm"]
    parts = [get_method(p).Scorer.load(model_dir / p / "model").predict_proba(texts) for p in ("tfidf", "embed")]
    got = get_method("hybrid").Scorer.load(model_dir).predict_proba(texts)
    np.testing.assert_allclose(got, blend(kind, parts, info["weight"]), atol=1e-6)


def test_hybrid_refuses_bad_part_settings_at_once(toy_tasks, tmp_path, bert_path):
    with pytest.raises(ConfigError) as e:
        classifine.train(toy_tasks["single_label"], method="hybrid", model=bert_path, out=tmp_path / "r",
                         config={"tfidf": {"ngram_mx": 3}, "embed": {"pooling": "max"}}, progress=False)
    assert "ngram_max" in str(e.value)
    assert not (tmp_path / "r").exists()


def test_a_fit_embeds_each_text_once(toy_tasks, tmp_path, deep_gemma, monkeypatch):
    """Training, validation (candidate depths, one pass) and test rows go through the model once each:
    the tuning pass reuses the chosen depth's validation vectors; prediction afterwards runs for real."""
    from classifine.core import accel

    seen = []
    real = accel.Forward._run
    monkeypatch.setattr(accel.Forward, "_run", lambda self, ids, mask: (seen.append(len(ids)), real(self, ids, mask))[1])
    run = classifine.train(toy_tasks["single_label"], method="embed", model=deep_gemma, out=tmp_path / "r",
                           config={"engine": "torch"}, progress=False)
    rows = run.config["data"]
    checked = 4 if run.config["info"]["layer"] < 4 else 0  # the cut model checked on four validation texts
    assert sum(seen) == rows["train_rows"] + rows["validation_rows"] + checked + rows["test_rows"]
    seen.clear()
    classifine.load(run.dir).predict([{"title": "goal", "body": "match"}] * 3)
    assert sum(seen) == 3


@pytest.mark.parametrize("kind", ["single_label", "multi_label", "ordinal"])
def test_embed_tunes_the_top_layers_and_saves_them_as_a_plain_model(toy_tasks, tmp_path, deep_gemma, kind):
    from safetensors.numpy import load_file
    from sentence_transformers import SentenceTransformer

    run = classifine.train(toy_tasks[kind], method="embed", model=deep_gemma, out=tmp_path / "r",
                           config={"tune_layers": 1, "tune_epochs": 2, "tune_lr": 1e-3}, progress=False)
    info = run.config["info"]
    layer, tuning = info["layer"], info["tuning"]
    assert layer >= 2 and tuning["layers"] == [layer, layer] and len(tuning["epoch_scores"]) == 2
    assert all(int(k) >= 2 for k in info["layer_scores"])  # a depth needs a frozen layer below the tuned one
    assert info["encoder_weights"] == "written"
    saved = load_file(str(run.model_dir / "encoder" / "model.safetensors"))
    base = load_file(str(Path(deep_gemma) / "model.safetensors"))
    key = lambda i, name: next(k for k in base if k.endswith(f"layers.{i}.{name}"))  # noqa: E731
    tuned_w, frozen_w = key(layer - 1, "mlp.down_proj.weight"), key(0, "mlp.down_proj.weight")
    plain = {k.removeprefix("model."): v for k, v in saved.items()}
    assert not np.allclose(plain[tuned_w.removeprefix("model.")], base[tuned_w]), "the top layer was trained"
    np.testing.assert_array_equal(plain[frozen_w.removeprefix("model.")], base[frozen_w])
    assert not any(f"layers.{layer}." in k for k in plain), "cut to the chosen depth"
    # the saved folder alone gives the vectors the run's head predicts from
    texts = ["goal match striker", "market shares bank storm"]
    predictor = classifine.load(run.dir)
    ours = predictor.scorer.encoder.encode(texts)
    st = SentenceTransformer(str(run.model_dir / "encoder"), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, st, atol=1e-4)
    np.testing.assert_allclose(predictor.scorer.predict_proba(texts), predictor.scorer.head.predict_proba(st), atol=1e-4)


def test_tune_layers_refuses_what_it_cannot_tune_at_once(toy_tasks, tmp_path, bert_path, deep_gemma):
    with pytest.raises(ConfigError) as e:
        classifine.train(toy_tasks["single_label"], method="embed", model=bert_path, out=tmp_path / "r",
                         config={"tune_layers": 1, "save_encoder": False}, progress=False)
    assert "not a decoder" in str(e.value) and "save_encoder" in str(e.value)
    with pytest.raises(ConfigError) as e:
        classifine.train(toy_tasks["single_label"], method="embed", model=deep_gemma, out=tmp_path / "r",
                         config={"tune_layers": 2, "layer": 2}, progress=False)
    assert "set it below 2" in str(e.value)
    with pytest.raises(ConfigError, match="below 4"):
        classifine.train(toy_tasks["single_label"], method="hybrid", model=deep_gemma, out=tmp_path / "r",
                         config={"embed": {"tune_layers": 4}}, progress=False)
    assert not (tmp_path / "r").exists()
