"""What is measured for each task kind, declared once (lm-evaluation-harness's ``register_metric``
is the model): every metric's display name, unit, better direction and Hugging Face metric type
(``METRICS``); every kind's headline rate, slice metrics, ranking metric and the metrics a trainer
selects checkpoints on (``KINDS``); and the rules that compute them from labels
(``compute_metrics``). Reports, ``compare``, the leaderboard, the model card, the CLI summary and
the trainers all read these, so they cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics as M
from .decision import decide, tune_thresholds


@dataclass(frozen=True)
class Metric:
    name: str                      # as the report, compare and the card show it
    short: str | None = None       # a column header in slice tables (default: name)
    unit: str = "pct"              # pct (a rate shown as 70.92%) | num
    better: str | None = "higher"  # higher | lower | None (descriptive only)
    hub: str | None = None         # the metric type in a Hugging Face model-index

    @property
    def header(self) -> str:
        return self.short or self.name


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", hub="accuracy"),
    "subset_accuracy": Metric("subset accuracy", hub="accuracy"),
    "top1_exact_match": Metric("top-1 exact match", hub="exact_match"),
    "exact_match": Metric("entity-set exact match", "exact match", hub="exact_match"),
    "exact_match_with_entities": Metric("exact match (rows with entities)", hub="exact_match"),
    "precision": Metric("entity precision", hub="precision"),
    "recall": Metric("entity recall", hub="recall"),
    "f1": Metric("entity F1", hub="f1"),
    "macro_f1": Metric("macro F1", hub="f1"),
    "micro_f1": Metric("micro F1", hub="f1"),
    "weighted_f1": Metric("weighted F1", hub="f1"),
    "macro_precision": Metric("macro precision", hub="precision"),
    "macro_recall": Metric("macro recall", hub="recall"),
    "mae": Metric("MAE (scale steps)", "MAE", unit="num", better="lower", hub="mae"),
    "binary_precision": Metric("binary precision", hub="precision"),
    "binary_recall": Metric("binary recall", hub="recall"),
    "binary_f1": Metric("binary F1", hub="f1"),
    "label_cardinality_true": Metric("labels per row (reference)", unit="num", better=None),
    "label_cardinality_pred": Metric("labels per row (predicted)", unit="num", better=None),
    "ece": Metric("expected calibration error", unit="num", better="lower"),
    "invalid_rate": Metric("invalid outputs", better="lower"),
}


@dataclass(frozen=True)
class Kind:
    headline: str                  # the rate every cell of a slice counts (n/N)
    slice_metrics: tuple[str, ...]  # shown beside it in slice tables
    ranking: str                   # what a leaderboard sorts by
    summary: tuple[str, ...]       # what the CLI prints after train and eval
    # the per-row rate a row counts with in a multi-task table and in a subset chosen by a data
    # column (``row_hits``): a multi-label row counts by its top-1 label (the main section)
    row_metric: str = ""


KINDS: dict[str, Kind] = {
    "single_label": Kind("accuracy", ("macro_f1",), "macro_f1", ("accuracy", "macro_f1", "weighted_f1", "micro_f1"),
                         "accuracy"),
    "ordinal": Kind("accuracy", ("macro_f1", "mae"), "macro_f1",
                    ("accuracy", "macro_f1", "weighted_f1", "micro_f1", "mae"), "accuracy"),
    "multi_label": Kind("subset_accuracy", ("micro_f1", "macro_f1"), "macro_f1",
                        ("subset_accuracy", "macro_f1", "weighted_f1", "micro_f1"), "top1_exact_match"),
    "extraction": Kind("exact_match", ("precision", "recall", "f1"), "f1",
                       ("exact_match", "exact_match_with_entities", "precision", "recall", "f1"), "exact_match"),
}
HEADLINE = {kind: k.headline for kind, k in KINDS.items()}
# what a trainer logs at each evaluation; a method's `metric` setting picks the one that selects checkpoints
SELECTION = ("macro_f1", "accuracy", "micro_f1", "weighted_f1", "mae", "subset_accuracy")


def compute_metrics(task, gold: list, pred: list, probs: np.ndarray | None = None, invalid: list | None = None) -> dict:
    """The kind's metrics, calibration where probabilities exist, and the invalid-output rate."""
    labels = task.label_names
    if task.kind == "extraction":
        out = M.extraction(gold, pred, task.min_confidence, task.normalize)
    elif task.kind == "multi_label":
        ranked = None if probs is None else [[labels[i] for i in np.argsort(-row, kind="stable")] for row in probs]
        out = M.multi_label(gold, pred, labels, ranked_pred=ranked)
        if probs is not None:
            hit = np.array([[lab in g for lab in labels] for g in gold]).reshape(-1)
            out["calibration"] = M.expected_calibration_error(probs.reshape(-1), hit)
    else:
        if task.kind == "ordinal":
            out = M.ordinal(gold, pred, labels, threshold=None if task.threshold is None else str(task.threshold))
        else:
            out = M.single_label(gold, pred, labels)
        if probs is not None and len(gold):
            out["calibration"] = M.expected_calibration_error(probs.max(1), [g == p for g, p in zip(gold, pred)])
    if invalid is not None:
        out["invalid_output"] = M.invalid_output(invalid)
    return out


def row_hits(task, gold: list, pred: list, probs: np.ndarray | None = None, invalid: list | None = None) -> list[bool]:
    """Whether each row is right by its kind's ``row_metric``: the label (single_label, ordinal);
    the highest-probability label equals the reference's first (multi_label top-1; the answer's
    first label without probabilities); the entity set after the confidence cut and normalisation
    (extraction). An invalid row (no answer; ``invalid``) is wrong."""
    if task.kind == "extraction":
        hits = []
        for g, p in zip(gold, pred):
            ref, found, _ = M.entity_sets(g, p, task.min_confidence, task.normalize)
            hits.append(ref == found)
    elif task.kind == "multi_label":
        labels = task.label_names
        tops = ([labels[int(np.argmax(row))] for row in probs] if probs is not None and len(probs)
                else [p[0] if p else None for p in pred])
        hits = [bool(g) and top == g[0] for g, top in zip(gold, tops)]
    else:
        hits = [g == p for g, p in zip(gold, pred)]
    return hits if invalid is None else [h and not bad for h, bad in zip(hits, invalid)]


def trivial_baseline(task, gold: list) -> dict:
    """What an answer that ignores the text scores on the same rows: the majority class
    (single_label, ordinal), the labels present in at least half of the rows (multi_label; usually
    none), the empty set (extraction). Chosen on the evaluation rows themselves, so it is the best
    constant answer for the headline rate, the strictest trivial baseline.

    Returns the answer, a description, the kind's summary metrics for it, and (multi_label) the
    label frequencies."""
    n, labels = len(gold), task.label_names
    if task.kind == "extraction":
        answer, describe = [], "always the empty list"
    elif task.kind == "multi_label":
        freq = {lab: (sum(lab in g for g in gold) / n if n else 0.0) for lab in labels}
        answer = [lab for lab in labels if freq[lab] >= 0.5]
        describe = f"always {answer}" + (" (no label is in half of the rows)" if not answer else "")
    else:
        counts = {lab: sum(g == lab for g in gold) for lab in labels}
        answer = max(labels, key=lambda lab: counts[lab])  # ties: the first in the spec's order
        describe = f"always {answer!r}, the majority class"
    pred = [answer] * n
    if task.kind == "multi_label":  # top-1: always rank first the label most often first in the references
        first = {lab: sum(bool(g) and g[0] == lab for g in gold) for lab in labels}
        ranked = [sorted(labels, key=lambda lab: (-first[lab], -freq[lab]))] * n
        m = M.multi_label(gold, pred, labels, ranked_pred=ranked)
    else:
        m = compute_metrics(task, gold, pred)
    keys = KINDS[task.kind].summary + (("top1_exact_match",) if "top1_exact_match" in m else ())
    out = {"answer": answer, "describe": describe, "metrics": {k: m[k] for k in keys if k in m}}
    if task.kind == "multi_label":
        out["label_frequencies"] = {lab: round(f, 4) for lab, f in freq.items()}
    return out


def beats_baseline(kind: str, m: dict, baseline: dict) -> bool:
    """Whether the model's headline rate is above its trivial baseline's."""
    head = KINDS[kind].headline
    return m[head] > baseline["metrics"][head] + 1e-12


def validation_metrics(task, gold: list, probs: np.ndarray) -> dict:
    """The metrics a trainer selects its best checkpoint by, from the model's raw probabilities."""
    out = compute_metrics(task, gold, decide(task.kind, task.label_names, probs, {}), probs)
    return {k: out[k] for k in SELECTION if k in out}


def selection_score(task, gold: list, probs: np.ndarray) -> float:
    """The kind's ranking metric on validation, for choices made inside a fit (an embedding layer,
    a regularisation strength, a blend weight): multi-label thresholds are tuned first, as every
    run's are, since at 0.5 rare labels would never be chosen and the comparison would say nothing."""
    decision = {}
    if task.kind == "multi_label":
        decision = {"thresholds": tune_thresholds(task.label_names, probs, gold), "top_k": task.top_k}
    out = compute_metrics(task, gold, decide(task.kind, task.label_names, probs, decision))
    return float(out[KINDS[task.kind].ranking])


def key_metrics(kind: str, m: dict) -> list[dict]:
    """The headline numbers of a result, in display order: key, name, value, counts (num/den),
    unit and better direction, as ``METRICS`` declares them."""
    rows: list[dict] = []

    def add(key, value, num=None, den=None, name=None):
        if value is not None:
            fact = METRICS[key]
            rows.append({"key": key, "name": name or fact.name, "value": float(value), "num": num, "den": den,
                         "unit": fact.unit, "better": fact.better})

    n = m.get("n", 0)
    if kind == "extraction":
        add("exact_match", m["exact_match"], m["correct"], n)
        add("exact_match_with_entities", m["exact_match_with_entities"], m["correct_with_entities"], m["rows_with_entities"])
        tp, fp, fn = m["true_positives"], m["false_positives"], m["false_negatives"]
        add("precision", m["precision"], tp, tp + fp)
        add("recall", m["recall"], tp, tp + fn)
        add("f1", m["f1"])
    elif kind == "multi_label":
        add("subset_accuracy", m["subset_accuracy"], m["correct"], n)
        if "top1_exact_match" in m:
            add("top1_exact_match", m["top1_exact_match"], round(m["top1_exact_match"] * n), n)
        for k in ("micro_f1", "macro_f1", "weighted_f1", "label_cardinality_true", "label_cardinality_pred"):
            add(k, m[k])
    else:
        add("accuracy", m["accuracy"], m["correct"], n)
        if kind == "ordinal":
            add("mae", m["mae"])
        for k in ("macro_f1", "weighted_f1", "micro_f1", "macro_precision", "macro_recall"):
            add(k, m[k])
        if "binary_at_threshold" in m:
            b = m["binary_at_threshold"]
            for k in ("precision", "recall", "f1"):
                add(f"binary_{k}", b[k], name=f"{METRICS[f'binary_{k}'].name} (≥ {b['threshold']})")
    if "calibration" in m:
        add("ece", m["calibration"]["ece"])
    if "invalid_output" in m:
        inv = m["invalid_output"]
        add("invalid_rate", inv["rate"], inv["invalid"], inv["n"])
    return rows
