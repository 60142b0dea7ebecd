"""Load any run and predict: records in, answer + a probability for every label out.

Methods only produce probabilities (``Scorer.predict_proba``); turning them into answers is the
same for every method and lives here: argmax for single_label/ordinal, per-label thresholds (tuned
on validation at training time, ``model/decision.json``) and optional top_k for multi_label.
"""
from __future__ import annotations

import csv
import itertools
import json
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from .data import iter_records, records_to_texts
from .errors import DataError
from .methods import get_method
from .runs import Run, atomic_write_json


def decide(kind: str, labels: list[str], probs: np.ndarray, decision: dict) -> list:
    if kind == "multi_label":
        thresholds = np.array([decision.get("thresholds", {}).get(lab, 0.5) for lab in labels])
        top_k = decision.get("top_k")
        out = []
        for row in probs:
            order = np.argsort(-row, kind="stable")
            chosen = [labels[i] for i in order if row[i] >= thresholds[i]]
            out.append(chosen[:top_k] if top_k else chosen)
        return out
    return [labels[i] for i in probs.argmax(1)]


def tune_thresholds(labels: list[str], probs: np.ndarray, gold: list[list[str]]) -> dict[str, float]:
    """Per-label threshold that maximises that label's F1 on validation; 0.5 where the label is
    absent from validation (nothing to tune on)."""
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    out = {}
    for j, lab in enumerate(labels):
        y = np.array([lab in g for g in gold])
        if not y.any():
            out[lab] = 0.5
            continue
        best, best_f = 0.5, -1.0
        for t in grid:
            p = probs[:, j] >= t
            tp, fp, fn = (p & y).sum(), (p & ~y).sum(), (~p & y).sum()
            f = 2 * tp / max(2 * tp + fp + fn, 1)
            if f > best_f + 1e-12:
                best, best_f = float(t), f
        out[lab] = best
    return out


class Predictor:
    def __init__(self, run: Run, scorer, decision: dict):
        self.run, self.task, self.scorer, self.decision = run, run.task, scorer, decision

    @classmethod
    def load(cls, run_dir: str | Path | Run) -> "Predictor":
        run = run_dir if isinstance(run_dir, Run) else Run.load(run_dir)
        scorer = get_method(run.method).Scorer.load(run.model_dir)
        path = run.model_dir / "decision.json"
        decision = json.loads(path.read_text()) if path.exists() else {}
        return cls(run, scorer, decision)

    @property
    def labels(self) -> list[str]:
        return self.task.label_names

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.scorer.predict_proba(list(texts)), dtype=np.float64)

    def format(self, probs: np.ndarray) -> list[dict]:
        answers = decide(self.task.kind, self.labels, probs, self.decision)
        out = []
        for answer, row in zip(answers, probs):
            item: dict = {}
            if self.task.kind == "multi_label":
                item["labels"] = answer
            else:
                item["label"] = answer
                item["confidence"] = round(float(row.max()), 6)
            item["probabilities"] = {lab: round(float(p), 6) for lab, p in zip(self.labels, row)}
            out.append(item)
        return out

    def predict_texts(self, texts: list[str]) -> list[dict]:
        return self.format(self.predict_proba(texts))

    def predict(self, records: Iterable[dict]) -> list[dict]:
        records = list(records)
        return self.predict_texts(records_to_texts(self.task, records))


def predict_file(run_dir: str | Path, input_path: str | Path, output_path: str | Path, batch_size: int = 256,
                 progress: bool = True, predictor: Predictor | None = None) -> dict:
    """Stream ``input_path`` in batches and write one prediction per record (JSONL or CSV).

    Memory stays flat in the input's size. Output is written to a temp file and renamed at the end,
    so an interrupted run leaves no half-written output behind.
    """
    from tqdm.auto import tqdm

    predictor = predictor or Predictor.load(run_dir)
    output_path = Path(output_path)
    fmt = output_path.suffix.lower()
    if fmt not in (".jsonl", ".csv"):
        raise DataError(f"unsupported output type {fmt!r}", ["write predictions to a .jsonl or .csv file"])
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.partial")
    t0 = time.time()
    batches = iter_records(input_path, batch_size)
    first = next(batches, [])  # fail on a missing or unreadable input before any output exists
    bar = tqdm(desc="predict", unit="rec", disable=not progress)
    try:
        _write_predictions(predictor, itertools.chain([first], batches), tmp, fmt, bar)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    n = bar.n
    tmp.replace(output_path)
    seconds = time.time() - t0
    return {"records": n, "seconds": round(seconds, 3), "records_per_second": round(n / seconds, 2) if seconds else None,
            "output": str(output_path)}


def _write_predictions(predictor: Predictor, batches, tmp: Path, fmt: str, bar) -> None:
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = None
        for batch in batches:
            results = predictor.predict(batch) if batch else []
            for rec, res in zip(batch, results):
                if fmt == ".jsonl":
                    f.write(json.dumps({**rec, **res}, ensure_ascii=False) + "\n")
                else:
                    row = {**rec, "prediction": res.get("label", "|".join(res.get("labels", [])))}
                    if "confidence" in res:
                        row["confidence"] = res["confidence"]
                    row.update({f"p_{lab}": p for lab, p in res["probabilities"].items()})
                    if writer is None:
                        writer = csv.DictWriter(f, fieldnames=list(row))
                        writer.writeheader()
                    writer.writerow(row)
            bar.update(len(batch))


def save_decision(run: Run, decision: dict) -> None:
    atomic_write_json(run.model_dir / "decision.json", decision)
