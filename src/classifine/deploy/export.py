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

import shutil
import tempfile
from pathlib import Path

from ..core.accel import CHECK, EXAMPLE, INPUTS, encode_pt, onnx_missing, outputs
from ..core.accel import export as onnx_export
from ..core.runs import Run, atomic_write_json
from ..errors import ConfigError, RunError
from ..predict.predictor import read_decision

FORMATS = ("onnx",)
OTHER_METHODS = {
    "tfidf": "tfidf runs load with scikit-learn + numpy from model/ as they are (README.md, 'Load runs without classifine')",
    "embed": "embed runs hold a sentence-transformers folder (model/encoder) and a linear head in safetensors "
             "(README.md, 'Load runs without classifine')",
    "hybrid": "hybrid runs are a tfidf run and an embed run (model/tfidf/model, model/embed/model) whose "
              "log-probabilities are blended with the weight in model/hybrid.json; each part loads as README.md says",
}


def _check_run(run: Run, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}", [f"formats: {', '.join(FORMATS)}"])
    if run.method != "head":
        hint = OTHER_METHODS.get(run.method, "generative runs load in plain transformers/peft from model/ "
                                             "(README.md, 'Load runs without classifine')")
        raise ConfigError(f"export --format {fmt} supports head runs (sequence classifiers); {run.dir} is a "
                          f"{run.method} run", [hint])
    if onnx_missing():
        raise ConfigError(f"ONNX export needs {', '.join(onnx_missing())}", ["pip install 'classifine[export]'"])


def _out_dir(run: Run, out: str | Path | None) -> Path:
    out = Path(out) if out is not None else run.dir / "onnx"
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "export.json").is_file())):
        raise RunError(f"{out} exists and is not an earlier export", ["choose another --out"])
    return out


def export_onnx(run: Run, out: Path) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    net = AutoModelForSequenceClassification.from_pretrained(str(run.model_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(run.model_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        diff = onnx_export(outputs(net, "logits"), encode_pt(tokenizer, EXAMPLE), tmp / "model.onnx", "logits",
                           check=encode_pt(tokenizer, CHECK))
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
