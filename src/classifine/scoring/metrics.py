"""Classification metrics as pure functions on labels (no torch, no sklearn at run time).

Conventions follow scikit-learn (tests compare against it): a class with no predictions and no
support scores 0, and macro averages run over the task's labels, not only the labels seen.
"""
from __future__ import annotations

import re
from collections import Counter
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


def log_loss(probs: np.ndarray, gold: Sequence, labels: Sequence[str], multi_label: bool = False) -> float:
    """Mean negative log-likelihood of the gold answers: of the gold label (single-label, ordinal),
    or of every label's on/off (multi-label, binary cross-entropy averaged over labels)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    if multi_label:
        Y = np.array([[lab in g for lab in labels] for g in gold], dtype=np.float64)
        return float(-np.mean(Y * np.log(p) + (1 - Y) * np.log(1 - p)))
    idx = np.array([list(labels).index(g) for g in gold])
    return float(-np.mean(np.log(p[np.arange(len(idx)), idx])))


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


def invalid_output(invalid: Sequence[bool]) -> dict:
    """Share of rows whose raw output could not be read as an answer (free generation only; label
    scoring and classifier heads cannot produce one). Such rows are scored as wrong elsewhere."""
    flags = [bool(x) for x in invalid]
    n, bad = len(flags), sum(flags)
    return {"n": n, "invalid": bad, "rate": bad / n if n else 0.0}


# --- extraction --------------------------------------------------------------------------------

# Legal forms that users do not want to count as a different company ("Acme Corp." = "Acme").
# Latin forms are stripped only as trailing words; Korean markers also lead ("㈜카카오", "주식회사 카카오").
LEGAL_SUFFIXES = ("incorporated", "inc", "corporation", "corp", "company", "co", "limited", "ltd", "llc", "llp", "plc",
                  "ag", "se", "gmbh", "kgaa", "s.a", "sa", "n.v", "nv", "b.v", "bv", "s.p.a", "spa", "k.k", "pte", "pty")
_LATIN_SUFFIX = re.compile(r"(?:^|[\s,&])(?:" + "|".join(re.escape(s) for s in LEGAL_SUFFIXES) + r")\.?$", re.IGNORECASE)
_KO_MARK = r"(?:㈜|\(\s*주\s*\)|（\s*주\s*）|주식회사|유한회사)"
_KO_LEADING, _KO_TRAILING = re.compile(rf"^{_KO_MARK}\s*"), re.compile(rf"\s*{_KO_MARK}$")
_SPACE = re.compile(r"\s+")


def strip_legal_suffixes(name: str) -> str:
    """Remove legal forms, repeatedly ("Samsung Electronics Co., Ltd." → "Samsung Electronics");
    a name that is nothing but a legal form is kept as it is."""
    current = name.strip()
    while True:
        nxt = _KO_TRAILING.sub("", _KO_LEADING.sub("", current))
        nxt = _LATIN_SUFFIX.sub("", nxt).rstrip(" ,&")
        if not nxt or nxt == current:
            return current
        current = nxt


def normalize_entity(name: str, steps: Sequence[str] = ()) -> str:
    """The spec's ``normalize`` steps, always applied in the order whitespace → suffixes → casefold
    (suffix matching needs collapsed spaces; the order the user listed them in must not matter)."""
    out = str(name).strip()
    if "whitespace" in steps:
        out = _SPACE.sub(" ", out)
    if "strip_suffixes" in steps:
        out = strip_legal_suffixes(out)
    if "casefold" in steps:
        out = out.casefold()
    return out


def _entity(e) -> tuple[str, float]:
    if isinstance(e, str):  # an entity without a confidence is kept by any min_confidence
        return e, 1.0
    name = e.get("name", e.get("text"))
    if name is None:
        raise ValueError(f"entity {e!r} has neither 'name' nor 'text'")
    conf = e.get("confidence")
    return str(name), 1.0 if conf is None else float(conf)


def entity_sets(gold_row: Sequence[str], pred_row: Sequence, min_confidence: float = 0.0,
                normalize: Sequence[str] = ()) -> tuple[set[str], set[str], list[tuple[str, float]]]:
    """One row: the normalised gold set, the kept predicted set, and every predicted (name, confidence)."""
    g = {normalize_entity(x, normalize) for x in gold_row if str(x).strip()}
    scored = [(normalize_entity(name, normalize), c) for name, c in map(_entity, pred_row or [])]
    return g, {name for name, c in scored if c >= min_confidence and name}, scored


def extraction(gold: Sequence[Sequence[str]], pred: Sequence[Sequence], min_confidence: float = 0.0,
               normalize: Sequence[str] = ()) -> dict:
    """Entity-set exact match and micro entity P/R/F1. ``pred`` rows are lists of
    ``{"name" | "text": str, "confidence": float}`` (or bare strings); entities under
    ``min_confidence`` are dropped, names normalised, and each row compared as a set (order-free,
    duplicates collapse). Calibration is over predicted entities: confidence vs "is in the gold set"."""
    n = len(gold)
    tp = fp = fn = exact = with_ents = exact_with = 0
    conf_all, hit_all = [], []
    for g_row, p_row in zip(gold, pred):
        g, p, scored = entity_sets(g_row, p_row, min_confidence, normalize)
        for name, c in scored:
            conf_all.append(c)
            hit_all.append(name in g)
        tp, fp, fn = tp + len(g & p), fp + len(p - g), fn + len(g - p)
        exact += g == p
        if g:
            with_ents += 1
            exact_with += g == p
    prec, rec, f1 = _prf(np.array([tp], float), np.array([fp], float), np.array([fn], float))
    out = {"n": n, "exact_match": exact / n if n else 0.0, "correct": exact,
           "precision": float(prec[0]), "recall": float(rec[0]), "f1": float(f1[0]),
           "true_positives": tp, "false_positives": fp, "false_negatives": fn,
           "rows_with_entities": with_ents, "correct_with_entities": exact_with,
           "exact_match_with_entities": exact_with / with_ents if with_ents else 0.0,
           "min_confidence": float(min_confidence), "normalize": list(normalize)}
    if conf_all:
        out["calibration"] = expected_calibration_error(conf_all, hit_all)
    return out


# --- breakdowns --------------------------------------------------------------------------------

def subset_scores(kind: str, gold: Sequence, pred: Sequence, label_in: Sequence[str]) -> dict:
    """A named subset (rows whose reference is in ``label_in``, e.g. all economic categories):
    ``recall`` = share of those rows predicted inside the group (any of its labels; for
    multi_label: share of the group's reference labels that were predicted), ``precision`` = the
    converse over predictions, ``accuracy`` = exact answers on the subset's rows."""
    group = set(label_in)

    def members(y):
        return set(y) & group if isinstance(y, (list, tuple, set)) else ({y} & group)

    rows = [i for i, g in enumerate(gold) if members(g)]
    if kind == "multi_label":
        relevant = sum(len(members(gold[i])) for i in range(len(gold)))
        found = sum(len(members(gold[i]) & set(pred[i])) for i in range(len(gold)))
        predicted = sum(len(members(p)) for p in pred)
        correct = sum(1 for i in rows if set(gold[i]) == set(pred[i]))
    else:
        relevant = len(rows)
        found = sum(1 for i in rows if members(pred[i]))
        predicted = sum(1 for p in pred if members(p))
        correct = sum(1 for i in rows if gold[i] == pred[i])
    p, r, f = _prf(np.array([found], float), np.array([predicted - found], float), np.array([relevant - found], float))
    return {"labels": list(label_in), "n": len(rows), "correct": correct,
            "accuracy": correct / len(rows) if rows else 0.0,
            "relevant": relevant, "found": found, "predicted": predicted,
            "recall": float(r[0]), "precision": float(p[0]), "f1": float(f[0])}


def confused_pairs(gold: Sequence, pred: Sequence, top: int = 10) -> list[dict]:
    """Most frequent (reference, predicted) pairs among mistakes. For list-valued rows (multi_label)
    each missed reference label pairs with each wrongly added label of the same row."""
    counts: Counter = Counter()
    for g, p in zip(gold, pred):
        if isinstance(g, (list, tuple)):
            missed, added = [x for x in g if x not in p], [x for x in p if x not in g]
            counts.update((a, b) for a in missed for b in added)
        elif g != p:
            counts[(g, p)] += 1
    pairs = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [{"gold": a, "pred": b, "count": c} for (a, b), c in pairs[:top]]


# --- inter-annotator agreement -----------------------------------------------------------------
# Nominal labels (strings); ``labels`` fixes the category set, and ratings outside it are dropped
# (as in ``confusion_matrix``). A single label used everywhere means expected agreement is 1 and
# the chance-corrected ratio is 0/0: we return 1.0 (the raters do agree perfectly), where
# scikit-learn returns nan.

def cohen_kappa(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str] | None = None) -> float:
    """Cohen's kappa of two raters (matches ``sklearn.metrics.cohen_kappa_score``)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"cohen_kappa: the raters rated {len(y_true)} and {len(y_pred)} items")
    cm = confusion_matrix(y_true, y_pred, sorted(set(y_true) | set(y_pred)) if labels is None else labels)
    if not cm.sum():
        raise ValueError("cohen_kappa: no item rated by both raters with a label in `labels`")
    cm = cm / cm.sum()
    p_o, p_e = np.trace(cm), float(cm.sum(1) @ cm.sum(0))
    return 1.0 if p_e >= 1.0 else float((p_o - p_e) / (1.0 - p_e))


def _rating_counts(ratings: Sequence[Sequence[str | None]], labels: Sequence[str] | None, name: str) -> np.ndarray:
    """Items x labels counts over the items with at least two (in-label) ratings."""
    if labels is None:
        labels = sorted({r for item in ratings for r in item if r is not None})
    index = {lab: i for i, lab in enumerate(labels)}
    C = np.zeros((len(ratings), len(labels)), dtype=np.float64)
    for row, item in enumerate(ratings):
        for r in item:
            if r in index:
                C[row, index[r]] += 1
    C = C[C.sum(1) >= 2]
    if not len(C):
        raise ValueError(f"{name}: no item has two or more ratings (empty input or too many missing)")
    return C


def fleiss_kappa(ratings: Sequence[Sequence[str | None]], labels: Sequence[str] | None = None) -> float:
    """Fleiss' kappa; ``ratings`` has one list per item, one entry per rater (None = not rated).

    Items with fewer than two ratings are skipped. With a varying number of raters n_i (no standard
    definition) we average P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1)) over items and take p_j over
    all ratings of the kept items; with equal counts this is exactly Fleiss' (1971) formula
    (matches ``statsmodels.stats.inter_rater.fleiss_kappa``)."""
    C = _rating_counts(ratings, labels, "fleiss_kappa")
    n = C.sum(1)
    p_bar = float(np.mean((C * (C - 1)).sum(1) / (n * (n - 1))))
    p = C.sum(0) / C.sum()
    p_e = float(p @ p)
    return 1.0 if np.count_nonzero(p) <= 1 else (p_bar - p_e) / (1.0 - p_e)


def krippendorff_alpha(ratings: Sequence[Sequence[str | None]], labels: Sequence[str] | None = None) -> float:
    """Nominal Krippendorff's alpha with missing ratings (None), from the coincidence matrix;
    ``ratings`` as in ``fleiss_kappa``. Items with one rating are not pairable and drop out."""
    C = _rating_counts(ratings, labels, "krippendorff_alpha")
    w = C / (C.sum(1, keepdims=True) - 1)
    o = w.T @ C - np.diag(w.sum(0))  # o_ck = sum_u (n_uc n_uk - [c=k] n_uc) / (m_u - 1)
    n_c, n = o.sum(1), o.sum()
    if np.count_nonzero(n_c) <= 1:
        return 1.0
    return float(1.0 - (n - 1) * (n - np.trace(o)) / (n * n - n_c @ n_c))
