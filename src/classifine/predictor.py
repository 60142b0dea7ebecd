"""Load any run and predict: records in, answer + a probability for every label out.

Methods only produce probabilities (``Scorer.predict_proba``); turning them into answers is the
same for every method and lives here, with what was tuned on validation at training time
(``model/decision.json``): argmax for single_label/ordinal after class offsets (single_label) and a
calibrating temperature; per-label thresholds and optional top_k for multi_label.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from .data import records_to_texts
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


def adjust(kind: str, probs: np.ndarray, decision: dict) -> np.ndarray:
    """The method's probabilities after the decisions tuned on validation: class offsets added to
    the log-probabilities (single_label), then the temperature. Multi-label sigmoids are left alone."""
    temperature = decision.get("temperature", 1.0)
    offsets = decision.get("offsets")
    if kind == "multi_label" or probs.size == 0 or (temperature == 1.0 and not offsets):
        return probs
    z = np.log(np.clip(probs, 1e-12, 1.0))
    if offsets:
        z = z + np.asarray(offsets, dtype=np.float64)
    z = z / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def macro_f1_of(pred: np.ndarray, gold: np.ndarray, k: int) -> float:
    """Macro-F1 over the k classes (absent and never-predicted classes count as 0, as in metrics)."""
    cm = np.bincount(gold * k + pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))


def _ascend(scores: np.ndarray, gold: np.ndarray, k: int) -> np.ndarray:
    """Offsets by coordinate ascent on macro-F1 over a grid, the smallest offset on ties."""
    present = np.bincount(gold, minlength=k) > 0
    grid = sorted(np.round(np.arange(-4.0, 4.01, 0.25), 2), key=abs)
    b = np.zeros(k)
    best = macro_f1_of(scores.argmax(1), gold, k)
    for _ in range(3):
        improved = False
        for j in np.flatnonzero(present):
            for g in grid:
                trial = b.copy()
                trial[j] = g
                f = macro_f1_of((scores + trial).argmax(1), gold, k)
                if f > best + 1e-9:
                    best, b, improved = f, trial, True
        if not improved:
            break
    return b


def tune_offsets(scores: np.ndarray, gold: np.ndarray, min_gain: float = 0.01, seed: int = 0) -> dict:
    """Per-class offsets on the log-probabilities that maximise validation macro-F1: the
    single-label form of per-class thresholds. A rare class that a model ranks well but never puts
    on top (AUC well above 0.5, F1 0) gets its rows back this way.

    Offsets are kept only if they gain at least ``min_gain`` on validation and if offsets tuned on
    each half of it (stratified) gain as much on the other half, on average: the ascent also fits
    noise (on uninformative scores it "gains" 9 times in 10), and noise does not carry over (the
    check then refuses 7 to 9 times in 10, more on larger sets; tests/test_methods.py).
    Returns the offsets (None when refused), macro-F1 before and after, and the mean held-out gain."""
    k, n = scores.shape[1], len(gold)
    before = macro_f1_of(scores.argmax(1), gold, k)
    b = _ascend(scores, gold, k)
    after = macro_f1_of((scores + b).argmax(1), gold, k)
    perm = np.random.default_rng(seed).permutation(n)
    order = perm[np.argsort(gold[perm], kind="stable")]
    halves = (order[0::2], order[1::2])
    held = float(np.mean([macro_f1_of((scores[v] + _ascend(scores[t], gold[t], k)).argmax(1), gold[v], k)
                          - macro_f1_of(scores[v].argmax(1), gold[v], k) for t, v in (halves, halves[::-1])]))
    keep = after >= before + min_gain and held >= min_gain
    return {"offsets": [round(float(x - b.mean()), 4) for x in b] if keep else None, "before": before,
            "after": after if keep else before, "held_out_gain": round(held, 4)}


def tune_decision(task, probs: np.ndarray, gold: list, calibrate: bool = True, offsets: bool = True) -> dict:
    """Decisions fitted on validation, the same for every method: per-label thresholds for
    multi_label; for single_label class offsets that raise validation macro-F1 (``tune_offsets``);
    then a temperature that calibrates single_label/ordinal probabilities (``calibration``)."""
    if task.kind == "multi_label":
        decision = {"thresholds": tune_thresholds(task.label_names, probs, gold), "top_k": task.top_k}
        if task.threshold is not None:  # a threshold in the spec is the user's decision: keep it
            decision["thresholds"] = {lab: float(task.threshold) for lab in task.label_names}
        return decision
    index = np.array([task.label_names.index(g) for g in gold])
    scores = np.log(np.clip(probs, 1e-12, 1.0))
    decision: dict = {}
    if offsets and task.kind == "single_label" and len(index):
        tuned = tune_offsets(scores, index)
        decision["macro_f1_validation"] = [round(tuned["before"], 4), round(tuned["after"], 4)]
        decision["offsets_held_out_gain"] = tuned["held_out_gain"]
        if tuned["offsets"] is not None:
            decision["offsets"] = tuned["offsets"]
            scores = scores + np.asarray(tuned["offsets"])
    if calibrate:
        decision.update(calibration(task.kind, scores, index))
    return decision


def calibration(kind: str, scores: np.ndarray, targets: np.ndarray) -> dict:
    """The NLL-optimal temperature on validation, with ECE before and after. On a few hundred rows
    the NLL optimum can still make the measured calibration worse; such a temperature is recorded
    (``temperature_fitted``) but not applied."""
    from .decoding import fit_temperature, probabilities
    from .metrics import expected_calibration_error

    def ece(t: float) -> float:
        p = probabilities(kind, scores, t)
        if kind == "multi_label":  # every (row, label) probability is a prediction
            return round(expected_calibration_error(p.reshape(-1), targets.reshape(-1).astype(bool))["ece"], 4)
        return round(expected_calibration_error(p.max(1), p.argmax(1) == targets)["ece"], 4)

    fitted = round(fit_temperature(kind, scores, targets), 4)
    before, after = ece(1.0), ece(fitted)
    t = fitted if after <= before else 1.0
    return {"temperature": t, "temperature_fitted": fitted, "ece_validation_before": before, "ece_validation_after": ece(t)}


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
        return adjust(self.task.kind, np.asarray(self.scorer.predict_proba(list(texts)), dtype=np.float64), self.decision)

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
        if self.task.kind == "extraction":
            return [self.format_entities(found) for found in self.scorer.extract(list(texts))]
        probs = self.predict_proba(texts)
        out = self.format(probs)
        for item, bad in zip(out, getattr(self.scorer, "last_invalid", None) or []):
            if bad:  # free generation named no label: say so rather than pass off a guess
                item["invalid"] = True
        return out

    def format_entities(self, found: list[dict]) -> dict:
        """Entities at or above the spec's min_confidence; the rest stay visible as candidates."""
        keep = [e for e in found if e["confidence"] >= self.task.min_confidence]
        return {self.task.entity: [e["name"] for e in keep], "entities": keep,
                "below_min_confidence": [e for e in found if e["confidence"] < self.task.min_confidence]}

    def predict(self, records: Iterable[dict]) -> list[dict]:
        records = list(records)
        return self.predict_texts(records_to_texts(self.task, records))


def predict_file(run_dir: str | Path, input_path: str | Path, output_path: str | Path, batch_size: int = 256,
                 progress: bool = True, predictor: Predictor | None = None, overwrite: bool = False,
                 sync_seconds: float = 2.0) -> dict:
    """Stream ``input_path`` in batches and write one prediction per record (JSONL or CSV).

    Memory stays flat in the input's size. Finished rows survive a crash or Ctrl-C, and running the
    same command again continues where it stopped (``resumable.py``); a different input or run is
    refused unless ``overwrite``. The output file appears, complete, only at the end.
    """
    from .resumable import predict_file as _predict_file

    predictor = predictor or Predictor.load(run_dir)
    return _predict_file(predictor, input_path, output_path, batch_size=batch_size, progress=progress,
                         overwrite=overwrite, sync_seconds=sync_seconds)


def save_decision(run: Run, decision: dict) -> None:
    atomic_write_json(run.model_dir / "decision.json", decision)
