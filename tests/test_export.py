"""`classifine export RUN --format onnx`: onnxruntime, in a process that never imports classifine,
gives the PyTorch logits (and so classifine's probabilities) of head runs; other runs are refused
with a typed error that says what to use instead."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import classifine
from classifine.cli import app
from classifine.errors import ConfigError
from classifine.predict.predictor import Predictor

from test_portable import FAST_HEAD, TEXTS, plain

ORT = """
import numpy as np, onnxruntime as ort
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(PAYLOAD["dir"])
info = json.load(open(PAYLOAD["dir"] + "/export.json"))
session = ort.InferenceSession(PAYLOAD["dir"] + "/" + info["model"], providers=["CPUExecutionProvider"])
logits = []
for batch in (PAYLOAD["texts"][:2], PAYLOAD["texts"][2:]):  # other batch shapes than the exported example's
    enc = tok(batch, padding=True, truncation=True, return_tensors="np")
    logits += session.run(["logits"], {k: enc[k].astype(np.int64) for k in info["inputs"]})[0].tolist()
RESULT = {"logits": logits, "info": info}
"""


def _torch_logits(model_dir, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    net = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    out = []
    for batch in (texts[:2], texts[2:]):
        with torch.inference_mode():
            out.append(net(**tok(batch, padding=True, truncation=True, return_tensors="pt")).logits.numpy())
    return np.concatenate(out)


@pytest.mark.parametrize("which,kind", [("bert", "single_label"), ("bert", "ordinal"), ("gemma", "multi_label")])
def test_onnx_export_gives_the_pytorch_logits(request, which, kind, toy_tasks, tmp_path):
    from classifine.deploy.export import export
    from classifine.scoring.decision import probabilities

    model = request.getfixturevalue(f"{which}_path")
    run = classifine.train(toy_tasks[kind], method="head", model=model, out=tmp_path / "run", config=FAST_HEAD,
                           progress=False)
    info = export(run.dir, "onnx", tmp_path / "onnx")
    assert info["max_abs_diff_vs_pytorch"] <= 1e-4 and (tmp_path / "onnx" / "model.onnx").is_file()
    got = plain(ORT, {"dir": str(tmp_path / "onnx"), "texts": TEXTS}, tmp_path)
    logits = np.array(got["logits"])
    np.testing.assert_allclose(logits, _torch_logits(run.model_dir, TEXTS), atol=1e-4)
    # the folded head's logits are classifine's answers
    predictor = Predictor.load(run.dir)
    folded = json.loads((run.model_dir / "decision.json").read_text())["folded"]
    if kind != "multi_label" or folded:
        p = probabilities("multi_label" if kind == "multi_label" else "single_label", logits)
        np.testing.assert_allclose(p, predictor.predict_proba(TEXTS), atol=1e-4)
    if not folded and kind == "multi_label":  # a decoder's bias-free layer: export.json names the thresholds
        assert got["info"]["then_apply"]["decision"]["thresholds"] == predictor.decision["thresholds"]


def test_export_refuses_what_it_cannot_convert(toy_tasks, tmp_path, monkeypatch):
    import classifine.deploy.export as export_module

    run = classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="supports head runs") as e:
        export_module.export(run.dir, "onnx")
    assert "scikit-learn" in " ".join(e.value.problems)
    with pytest.raises(ConfigError, match="unknown export format"):
        export_module.export(run.dir, "tflite")
    run.config["method"] = "head"  # as if it were a head run on a machine without the extra
    monkeypatch.setattr(export_module, "onnx_missing", lambda: ["onnxscript"])
    with pytest.raises(ConfigError, match="onnxscript") as e:
        export_module._check_run(run, "onnx")
    assert "classifine[export]" in e.value.problems[0]


def test_export_command(toy_tasks, tmp_path, bert_path):
    runner = CliRunner()
    head = tmp_path / "head"
    classifine.train(toy_tasks["single_label"], method="head", model=bert_path, out=head, config=FAST_HEAD, progress=False)
    r = runner.invoke(app, ["export", str(head), "--format", "onnx", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["path"] == str(head / "onnx") and (head / "onnx" / "export.json").is_file()
    r = runner.invoke(app, ["export", str(head)])  # again: an earlier export is replaced
    assert r.exit_code == 0 and "onnx:" in r.output
    classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "tfidf", progress=False)
    r = runner.invoke(app, ["export", str(tmp_path / "tfidf"), "--format", "onnx"])
    assert r.exit_code == 2 and "supports head runs" in r.output and "Traceback" not in r.output
