"""Classification metrics as pure functions on labels (no torch, no sklearn at run time).

Conventions follow scikit-learn (tests compare against it): a class with no predictions and no
support scores 0, and macro averages run over the task's labels, not only the labels seen.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        r = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0)
    return p, r, f


def confusion_matrix(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Rows are the reference, columns the prediction; predictions outside ``labels`` are dropped."""
    index = {lab: i for i, lab in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
    return cm


def _averages(tp, fp, fn, support) -> dict:
    p, r, f = _prf(tp, fp, fn)
    mp, mr, mf = _prf(np.array([tp.sum()]), np.array([fp.sum()]), np.array([fn.sum()]))
    w = support / support.sum() if support.sum() else np.zeros_like(support, dtype=float)
    return {
        "micro_precision": float(mp[0]), "micro_recall": float(mr[0]), "micro_f1": float(mf[0]),
        "macro_precision": float(p.mean()), "macro_recall": float(r.mean()), "macro_f1": float(f.mean()),
        "weighted_precision": float((p * w).sum()), "weighted_recall": float((r * w).sum()),
        "weighted_f1": float((f * w).sum()),
    }, (p, r, f)


def single_label(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy (= top-1 exact match), micro/macro/weighted P/R/F1, per-class report, confusion."""
    y_true, y_pred = list(y_true), list(y_pred)
    n = len(y_true)
    cm = confusion_matrix(y_true, y_pred, labels)
    tp = np.diag(cm).astype(float)
    # counts outside the matrix: a prediction that is not a label is wrong for its true class
    support = np.array([sum(1 for t in y_true if t == lab) for lab in labels], dtype=float)
    predicted = np.array([sum(1 for q in y_pred if q == lab) for lab in labels], dtype=float)
    fp, fn = predicted - tp, support - tp
    out, (p, r, f) = _averages(tp, fp, fn, support)
    correct = sum(1 for t, q in zip(y_true, y_pred) if t == q)
    out = {"n": n, "accuracy": correct / n if n else 0.0, "correct": correct, **out}
    out["per_class"] = {
        lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, lab in enumerate(labels)
    }
    out["confusion_matrix"] = {"labels": list(labels), "matrix": cm.tolist()}
    return out


def multi_label(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]], labels: Sequence[str],
                ranked_pred: Sequence[Sequence[str]] | None = None) -> dict:
    """Subset accuracy, per-label and micro/macro P/R/F1, label cardinality; top-1 exact match when
    a ranking is given (first-ranked label against the reference's first label)."""
    index = {lab: i for i, lab in enumerate(labels)}
    Y = np.zeros((len(y_true), len(labels)), dtype=bool)
    P = np.zeros_like(Y)
    for row, (t, q) in enumerate(zip(y_true, y_pred)):
        Y[row, [index[x] for x in t if x in index]] = True
        P[row, [index[x] for x in q if x in index]] = True
    tp = (Y & P).sum(0).astype(float)
    fp = (~Y & P).sum(0).astype(float)
    fn = (Y & ~P).sum(0).astype(float)
    support = Y.sum(0).astype(float)
    avg, (p, r, f) = _averages(tp, fp, fn, support)
    n = len(y_true)
    exact = int(sum(1 for t, q in zip(y_true, y_pred) if set(t) == set(q)))
    out = {"n": n, "subset_accuracy": exact / n if n else 0.0, "correct": exact, **avg,
           "label_cardinality_true": float(Y.sum(1).mean()) if n else 0.0,
           "label_cardinality_pred": float(P.sum(1).mean()) if n else 0.0}
    if ranked_pred is not None:
        hits = [bool(t) and bool(q) and q[0] == t[0] for t, q in zip(y_true, ranked_pred)]
        out["top1_exact_match"] = sum(hits) / n if n else 0.0
    out["per_class"] = {
        lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, lab in enumerate(labels)
    }
    return out


def ordinal(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str], threshold: str | None = None) -> dict:
    """Single-label metrics plus MAE on the scale positions and binary P/R/F1 at the threshold."""
    out = single_label(y_true, y_pred, labels)
    pos = {lab: i for i, lab in enumerate(labels)}
    pairs = [(pos[t], pos[q]) for t, q in zip(y_true, y_pred) if t in pos and q in pos]
    out["mae"] = float(np.mean([abs(a - b) for a, b in pairs])) if pairs else 0.0
    if threshold is not None:
        cut = pos[str(threshold)]
        bt = [pos[t] >= cut for t in y_true]
        bp = [q in pos and pos[q] >= cut for q in y_pred]
        tp = sum(1 for a, b in zip(bt, bp) if a and b)
        fp = sum(1 for a, b in zip(bt, bp) if not a and b)
        fn = sum(1 for a, b in zip(bt, bp) if a and not b)
        p, r, f = _prf(np.array([tp], float), np.array([fp], float), np.array([fn], float))
        out["binary_at_threshold"] = {"threshold": str(threshold), "precision": float(p[0]),
                                      "recall": float(r[0]), "f1": float(f[0])}
    return out


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> dict:
    """ECE with equal-width bins over the top-label confidence, plus the reliability curve."""
    conf = np.asarray(confidence, dtype=float)
    hit = np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece, curve = 0.0, []
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        acc, avg = float(hit[mask].mean()), float(conf[mask].mean())
        ece += mask.mean() * abs(acc - avg)
        curve.append({"bin": b, "lower": float(edges[b]), "upper": float(edges[b + 1]),
                      "confidence": avg, "accuracy": acc, "n": int(mask.sum())})
    return {"ece": float(ece), "bins": bins, "curve": curve}
