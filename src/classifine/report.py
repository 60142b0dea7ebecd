"""Evaluate a run on labelled data and write the artefacts of DESIGN.md §6: predictions.jsonl,
metrics.json, report.md and confusion.png (all atomic)."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np

from . import metrics as M
from .data import Examples
from .predictor import Predictor, decide
from .runs import atomic_write_bytes, atomic_write_json, atomic_write_text


def batched_proba(predictor: Predictor, texts: list[str], batch_size: int = 256, progress: bool = True) -> np.ndarray:
    from tqdm.auto import tqdm

    parts = []
    for i in tqdm(range(0, len(texts), batch_size), desc="evaluate", unit="batch", disable=not progress):
        parts.append(predictor.predict_proba(texts[i:i + batch_size]))
    return np.concatenate(parts) if parts else np.zeros((0, len(predictor.labels)))


def compute_metrics(task, gold: list, pred: list, probs: np.ndarray) -> dict:
    labels = task.label_names
    if task.kind == "multi_label":
        ranked = [[labels[i] for i in np.argsort(-row, kind="stable")] for row in probs]
        out = M.multi_label(gold, pred, labels, ranked_pred=ranked)
        flat_conf = probs.reshape(-1)
        flat_hit = np.array([[lab in g for lab in labels] for g in gold]).reshape(-1)
        out["calibration"] = M.expected_calibration_error(flat_conf, flat_hit)
        return out
    if task.kind == "ordinal":
        out = M.ordinal(gold, pred, labels, threshold=None if task.threshold is None else str(task.threshold))
    else:
        out = M.single_label(gold, pred, labels)
    out["calibration"] = M.expected_calibration_error(probs.max(1), [g == p for g, p in zip(gold, pred)])
    return out


def evaluate(predictor: Predictor, examples: Examples, out_dir: Path | None = None, progress: bool = True) -> dict:
    """Predict ``examples``, compute the kind's metrics and (with ``out_dir``) write the report files."""
    task = predictor.task
    t0 = time.time()
    probs = batched_proba(predictor, examples.texts, progress=progress)
    seconds = time.time() - t0
    pred = decide(task.kind, task.label_names, probs, predictor.decision)
    result = compute_metrics(task, examples.labels, pred, probs)
    result["data"] = examples.source
    result["prediction_seconds"] = round(seconds, 3)
    result["docs_per_second"] = round(len(examples) / seconds, 2) if seconds > 0 else None
    result["method"] = predictor.run.method
    result["model"] = predictor.run.config.get("model")
    if out_dir is not None:
        write_report(Path(out_dir), predictor, examples, pred, probs, result)
    return result


def write_report(out_dir: Path, predictor: Predictor, examples: Examples, pred: list, probs: np.ndarray, result: dict) -> None:
    task = predictor.task
    rows = []
    for i, (text, gold, p, row) in enumerate(zip(examples.texts, examples.labels, pred, probs)):
        rec = {"row": i + 1, "text": text, "gold": gold, "pred": p,
               "probabilities": {lab: round(float(v), 6) for lab, v in zip(task.label_names, row)}}
        for col in task.slices:
            if col in examples.frame.columns:
                rec[col] = str(examples.frame[col].iloc[i])
        rows.append(json.dumps(rec, ensure_ascii=False))
    atomic_write_text(out_dir / "predictions.jsonl", "\n".join(rows) + "\n")
    atomic_write_json(out_dir / "metrics.json", result)
    if "confusion_matrix" in result:
        atomic_write_bytes(out_dir / "confusion.png", confusion_png(result["confusion_matrix"]))
    atomic_write_text(out_dir / "report.md", render_markdown(predictor, result))


def confusion_png(cm: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, m = cm["labels"], np.array(cm["matrix"])
    size = max(4.0, 0.7 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    top = m.max() if m.size else 0
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > top / 2 else "black")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def render_markdown(predictor: Predictor, result: dict) -> str:
    task = predictor.task
    lines = [f"# Evaluation of `{task.name}`", "",
             f"- method: `{result['method']}`, model: `{result.get('model') or '-'}`",
             f"- data: `{result['data']}` ({result['n']} rows)",
             f"- prediction speed: {result['docs_per_second']} docs/s", "", "## Overall", "",
             "| metric | value |", "| --- | --- |"]
    keys = (["subset_accuracy", "top1_exact_match", "micro_f1", "macro_f1"] if task.kind == "multi_label"
            else ["accuracy", "macro_f1", "weighted_f1", "micro_f1", "macro_precision", "macro_recall"])
    if task.kind == "ordinal":
        keys.append("mae")
    for k in keys:
        if k in result:
            v = result[k]
            lines.append(f"| {k} | {v:.3f} |" if k == "mae" else
                         f"| {k} | {_pct(v)}" + (f" ({result['correct']}/{result['n']})" if k in ("accuracy", "subset_accuracy") else "") + " |")
    if "binary_at_threshold" in result:
        b = result["binary_at_threshold"]
        lines.append(f"| binary F1 (≥ {b['threshold']}) | {_pct(b['f1'])} |")
    if "calibration" in result:
        lines.append(f"| ECE | {result['calibration']['ece']:.4f} |")
    lines += ["", "## Per class", "", "| label | precision | recall | F1 | support |", "| --- | --- | --- | --- | --- |"]
    for lab, r in result["per_class"].items():
        lines.append(f"| {lab} | {_pct(r['precision'])} | {_pct(r['recall'])} | {_pct(r['f1'])} | {r['support']} |")
    if "confusion_matrix" in result:
        cm = result["confusion_matrix"]
        lines += ["", "## Confusion matrix (rows: reference, columns: predicted)", "", "![confusion](confusion.png)", "",
                  "| | " + " | ".join(cm["labels"]) + " |", "| --- " * (len(cm["labels"]) + 1) + "|"]
        for lab, row in zip(cm["labels"], cm["matrix"]):
            lines.append(f"| **{lab}** | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
