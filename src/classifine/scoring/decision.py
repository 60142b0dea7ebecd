"""Decision rules: how a method's probabilities become answers, and what is tuned on validation
data to make those answers better (pure numpy; scipy for the temperature fit).

- ``softmax`` / ``probabilities``: the one softmax; label scores to probabilities per kind.
- ``class_weights``: the weight of each class for a loss or a sampler (``class_weight`` setting).
- ``ordinal_probabilities``: a score on a scale to a probability per level.
- ``decide``: argmax (single_label, ordinal); per-label thresholds and top_k (multi_label).
- ``answer_margin``: how far each row's probabilities are from giving another answer.
- ``tune_decision``: what training fits on validation for every method: per-label thresholds
  (multi_label), class offsets that raise macro-F1 (single_label), and a temperature.
- ``adjust``: applies offsets and temperature to a method's probabilities at prediction time.
"""
from __future__ import annotations

import math

import numpy as np

from .metrics import expected_calibration_error

ClassWeight = str | dict[str, float] | None


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of scores (log-probabilities, logits, summed token log-probabilities)."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def probabilities(kind: str, scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Scores to probabilities: a softmax over labels, or one sigmoid per label (multi_label)."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    if kind == "multi_label":
        return 1.0 / (1.0 + np.exp(-z))
    return softmax(z)


def ordinal_probabilities(score: np.ndarray, sigma: float, n_levels: int) -> np.ndarray:
    """A normal distribution of width ``sigma`` around each predicted scale position, read at every
    level: every level gets a probability and the argmax is the nearest level."""
    levels = np.arange(n_levels, dtype=float)
    return softmax(-((levels[None, :] - np.asarray(score, dtype=float)[:, None]) ** 2) / (2 * sigma ** 2))


def class_weights(labels: list[str], counts: dict[str, int], class_weight: ClassWeight) -> dict[str, float]:
    """``balanced`` = n / (k * count), as scikit-learn; ``none`` = 1; a mapping is taken as given
    (labels it leaves out weigh 1)."""
    if class_weight in (None, "none"):
        return {lab: 1.0 for lab in labels}
    if class_weight == "balanced":
        seen = {lab: c for lab, c in counts.items() if c > 0}
        total = sum(seen.values())
        return {lab: (total / (len(seen) * seen[lab]) if lab in seen else 1.0) for lab in labels}
    return {lab: float(class_weight.get(lab, 1.0)) for lab in labels}


def fit_temperature(kind: str, scores: np.ndarray, targets: np.ndarray) -> float:
    """Temperature minimising validation NLL (Guo et al., 2017). ``targets``: class index per row,
    or a 0/1 matrix for multi-label."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = np.clip(probabilities(kind, scores, math.exp(log_t)), 1e-12, 1 - 1e-12)
        if kind == "multi_label":
            return float(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean())
        return float(-np.log(p[np.arange(len(targets)), targets]).mean())

    res = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded")
    return float(math.exp(res.x))

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


def answer_margin(kind: str, labels: list[str], probs: np.ndarray, decision: dict) -> np.ndarray:
    """Per row, how far its probabilities are from giving ``decide`` another answer: the gap of the
    top two (argmax kinds); for multi_label twice the distance of the label closest to its
    threshold, and with ``top_k`` also the gap between the k-th and the next label above threshold.
    If no probability of a row moves by more than d, its answer stays the same wherever this margin
    exceeds 2 d (predict/checked.py relies on it)."""
    probs = np.asarray(probs, dtype=np.float64)
    if kind != "multi_label":
        if probs.shape[0] == 0 or probs.shape[1] < 2:
            return np.full(probs.shape[0], np.inf)
        top = np.sort(probs, 1)
        return top[:, -1] - top[:, -2]
    thresholds = np.array([decision.get("thresholds", {}).get(lab, 0.5) for lab in labels])
    margin = 2 * np.abs(probs - thresholds).min(1, initial=np.inf)
    k = decision.get("top_k")
    if k:
        for i, row in enumerate(probs):
            above = np.sort(row[row >= thresholds])[::-1]
            if len(above) > k:
                margin[i] = min(margin[i], above[k - 1] - above[k])
    return margin


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
    return softmax(z / temperature)


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
    def ece(t: float) -> float:
        p = probabilities(kind, scores, t)
        if kind == "multi_label":  # every (row, label) probability is a prediction
            return round(expected_calibration_error(p.reshape(-1), targets.reshape(-1).astype(bool))["ece"], 4)
        return round(expected_calibration_error(p.max(1), p.argmax(1) == targets)["ece"], 4)

    fitted = round(fit_temperature(kind, scores, targets), 4)
    before, after = ece(1.0), ece(fitted)
    t = fitted if after <= before else 1.0
    return {"temperature": t, "temperature_fitted": fitted, "ece_validation_before": before, "ece_validation_after": ece(t)}


