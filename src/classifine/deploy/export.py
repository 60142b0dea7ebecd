"""``classifine export RUN --format onnx``: a run's model in a format other runtimes load.

ONNX for ``head`` runs (sequence classifiers): the saved transformers model already applies the
decisions tuned on validation (methods/head.py ``fold_decision``), so its logits are classifine's
answers and a softmax (sigmoid for multi-label) of the ONNX output gives classifine's
probabilities. The graph comes from ``torch.onnx.export`` with the dynamo exporter: on
transformers 5 and torch 2.13 the legacy TorchScript exporter froze a shape of BERT's embeddings
(logits off by 2e-3 at a batch shape other than the example's), the dynamo graph matched to 1e-8.
Every export is checked with onnxruntime against PyTorch on texts of other lengths and batch sizes
than the example's, and refused beyond 1e-4.

The output folder holds ``model.onnx`` (plus ``model.onnx.data`` for large models), the
tokenizer (``model_max_length`` = the run's max_length), ``config.json`` (id2label,
problem_type), the run's ``decision.json`` and ``export.json`` (inputs, outputs, how to read
them). Other methods have nothing to convert: their files load without classifine as they are
(README.md, "Load runs without classifine").
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..core.runs import Run, atomic_write_json
from ..errors import ConfigError, ModelError, RunError
from ..predict.predictor import read_decision

FORMATS = ("onnx",)
INPUTS = ["input_ids", "attention_mask"]
TOLERANCE = 1e-4
# texts of different lengths; the check uses other lengths and batch sizes than the example
EXAMPLE = ["a short text", "a somewhat longer text to give the example batch a second length", "two words"]
CHECK = ["one", "a longer text than any in the example batch, so the sequence axis must really be dynamic here",
         "", "numbers 1 2 3 and a few more words", "x"]
OTHER_METHODS = {
    "tfidf": "tfidf runs load with scikit-learn + numpy from model/ as they are (README.md, 'Load runs without classifine')",
    "embed": "embed runs hold a sentence-transformers folder (model/encoder) and a linear head in safetensors "
             "(README.md, 'Load runs without classifine')",
}


def _check_run(run: Run, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}", [f"formats: {', '.join(FORMATS)}"])
    if run.method != "head":
        hint = OTHER_METHODS.get(run.method, "generative runs load in plain transformers/peft from model/ "
                                             "(README.md, 'Load runs without classifine')")
        raise ConfigError(f"export --format {fmt} supports head runs (sequence classifiers); {run.dir} is a "
                          f"{run.method} run", [hint])
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if not _installed(m)]
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}", ["pip install 'classifine[export]'"])


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _out_dir(run: Run, out: str | Path | None) -> Path:
    out = Path(out) if out is not None else run.dir / "onnx"
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "export.json").is_file())):
        raise RunError(f"{out} exists and is not an earlier export", ["choose another --out"])
    return out


def _logits_module(net):
    """The classifier as a module of (input_ids, attention_mask) -> logits, the two inputs every
    sequence-classification model takes (token_type_ids default to zeros: one text per row)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return Logits(net).eval()


def _encode(tokenizer, texts: list[str]) -> dict:
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    return {k: enc[k] for k in INPUTS}


def export_onnx(run: Run, out: Path) -> dict:
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" and progress lines
    net = AutoModelForSequenceClassification.from_pretrained(str(run.model_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(run.model_dir))
    module = _logits_module(net)
    example = _encode(tokenizer, EXAMPLE)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        try:
            with warnings.catch_warnings():  # axis-renaming and pytree deprecation notes, nothing to act on
                warnings.simplefilter("ignore")
                torch.onnx.export(module, tuple(example[k] for k in INPUTS), str(tmp / "model.onnx"), dynamo=True,
                                  input_names=INPUTS, output_names=["logits"], verbose=False,
                                  dynamic_shapes={k: {0: batch, 1: seq} for k in INPUTS})
        except Exception as e:  # the exporter's own errors name the operator it could not convert
            raise ModelError(f"torch.onnx could not export {run.model_dir}", [str(e).splitlines()[0]]) from e
        check = _encode(tokenizer, CHECK)
        session = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {k: check[k].numpy().astype(np.int64) for k in INPUTS})[0]
        with torch.inference_mode():
            want = module(**check).numpy()
        diff = float(np.abs(got - want).max())
        if not diff <= TOLERANCE:
            raise ModelError(f"the ONNX model's logits differ from PyTorch's by {diff:.2e} (more than {TOLERANCE})",
                             ["report this with the run's base model; the run itself is fine"])
        tokenizer.save_pretrained(tmp)
        net.config.save_pretrained(tmp)
        for name in ("decision.json",):
            if (run.model_dir / name).is_file():
                shutil.copyfile(run.model_dir / name, tmp / name)
        kind = run.task.kind
        info = {"format": "onnx", "model": "model.onnx", "inputs": INPUTS, "outputs": ["logits"],
                "kind": kind, "labels": run.task.label_names, "max_length": tokenizer.model_max_length,
                "probabilities": "sigmoid(logits); a label is on at >= 0.5 (unless then_apply names thresholds)" if kind == "multi_label"
                else "softmax(logits)" if net.config.num_labels > 1 else "none: the logit is the ordinal score",
                "max_abs_diff_vs_pytorch": diff, "run": str(run.dir.resolve())}
        # what the classifier layer could not take in (decoder heads have no bias): apply as the Predictor does
        decision = read_decision(run.model_dir)
        rest = {k: decision[k] for k, neutral in (("offsets", None), ("temperature", 1.0)) if decision.get(k, neutral) != neutral}
        if any(t != 0.5 for t in (decision.get("thresholds") or {}).values()):
            rest["thresholds"] = decision["thresholds"]
        if rest:
            info["then_apply"] = {"decision": rest, "how": "README.md, 'Load runs without classifine'"}
        atomic_write_json(tmp / "export.json", info)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**info, "path": str(out)}


def export(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None) -> dict:
    """Export the run in ``run_dir``; returns what was written (``path``, inputs, outputs, the
    largest logit difference from PyTorch on the check texts)."""
    run = Run.load(run_dir)
    _check_run(run, fmt)
    return export_onnx(run, _out_dir(run, out))
