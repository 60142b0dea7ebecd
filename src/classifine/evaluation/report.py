"""Evaluate a run on labelled data and write the report files of the run directory (all atomic):
predictions.jsonl, metrics.json, report.md, report.html, confusion.png and reliability.png.

The numbers are assembled once (``assemble``) from plain per-row lists, both when a predictor is
evaluated and when ``compare`` rebuilds them from predictions.jsonl, so a comparison can never
disagree with the reports it compares.

Contract with generative methods (free generation can fail to produce an answer):
- a classification scorer that can fail sets ``last_invalid`` (one bool per text) on every
  ``predict_proba`` call; scorers without the attribute report no invalid-output rate;
- extraction goes through ``Predictor.predict_texts``: ``entities`` and ``below_min_confidence``
  (lists of ``{"name", "confidence"}``) and an optional ``invalid`` flag per text.
An invalid row is scored as wrong: no label (single/ordinal), no labels (multi), no entities.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np

from ..core.data import Examples
from ..core.runs import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..predict.predictor import Predictor
from ..scoring import metrics as M
from ..scoring.decision import decide
from ..scoring.kinds import KINDS, beats_baseline, compute_metrics, row_hits, trivial_baseline

INVALID = "(invalid)"
# keys a predictions.jsonl row uses itself; data columns of the same name are not copied
RESERVED = ("row", "text", "gold", "pred", "confidence", "probabilities", "invalid")
SNIPPET = 160


def _score(predictor: Predictor, texts: list[str], batch_size: int = 256, progress: bool = True):
    """(pred, probs or None, invalid flags or None) for every text."""
    from tqdm.auto import tqdm

    task = predictor.task
    starts = tqdm(range(0, len(texts), batch_size), desc="evaluate", unit="batch", disable=not progress)
    if task.kind == "extraction":
        outs = [o for i in starts for o in predictor.predict_texts(texts[i:i + batch_size])]
        invalid = [bool(o.get("invalid", False)) for o in outs]
        # candidates under min_confidence too: the metrics apply the cut-off, calibration needs them all
        pred = [[] if bad else list(o.get("entities", [])) + list(o.get("below_min_confidence", []))
                for o, bad in zip(outs, invalid)]
        return pred, None, invalid if any(invalid) or any("invalid" in o for o in outs) else None
    parts, flags = [], []
    for i in starts:
        batch = texts[i:i + batch_size]
        parts.append(predictor.predict_proba(batch))
        last = getattr(predictor.scorer, "last_invalid", None)  # set by generative scorers per call
        flags.append(list(last) if last is not None and len(last) == len(batch) else None)
    probs = np.concatenate(parts) if parts else np.zeros((0, len(task.labels)))
    invalid = [bool(x) for f in flags for x in f] if flags and all(f is not None for f in flags) else None
    pred = decide(task.kind, task.label_names, probs, predictor.decision)
    if invalid:
        empty = [] if task.kind == "multi_label" else INVALID
        pred = [empty if bad else p for p, bad in zip(pred, invalid)]
    return pred, probs, invalid


def summary(task, m: dict) -> dict:
    """The compact cell of a slice: the headline rate with its counts, plus the kind's second metrics."""
    kind = KINDS[task.kind]
    out = {"n": m["n"], "correct": m["correct"], kind.headline: m[kind.headline], **{k: m[k] for k in kind.slice_metrics}}
    if "macro_f1" in out:
        # within a slice, a label that never occurs (rating 1 has no positive reviews) would count as
        # F1 0 and halve the average: average over the labels the slice's references contain
        present = [c["f1"] for c in m["per_class"].values() if c["support"]]
        out["macro_f1"] = float(np.mean(present)) if present else 0.0
    return out


def row_is_correct(task, gold, pred) -> bool:
    """By the kind's headline: the whole label set for multi_label (not the top-1 of ``row_hits``)."""
    if task.kind == "multi_label":
        return set(gold) == set(pred)
    return row_hits(task, [gold], [pred])[0]


def row_confidence(task, gold, pred, probs_row) -> float | None:
    """How sure the model was of its (wrong) answer: the predicted label's probability; for
    multi_label the most confident wrong decision; for extraction the most confident spurious entity."""
    kind, labels = task.kind, task.label_names
    if kind == "extraction":
        g, _, scored = M.entity_sets(gold, pred, task.min_confidence, task.normalize)
        wrong = [c for name, c in scored if name not in g and c >= task.min_confidence]
        return max(wrong) if wrong else None
    if probs_row is None:
        return None
    if kind == "multi_label":
        wrong = [probs_row[i] if lab in pred else 1 - probs_row[i] for i, lab in enumerate(labels)
                 if (lab in pred) != (lab in gold)]
        return float(max(wrong)) if wrong else None
    return float(probs_row[labels.index(pred)]) if pred in labels else None


def fingerprint(texts: list[str], gold: list) -> dict:
    """Identifies the evaluation data (texts and references, in order), so that compare can refuse
    runs evaluated on different rows."""
    both = hashlib.sha256(json.dumps([[t, g] for t, g in zip(texts, gold)], ensure_ascii=False).encode()).hexdigest()
    only = hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()
    return {"sha256": both, "texts_sha256": only, "rows": len(texts)}


def assemble(task, texts: list[str], gold: list, pred: list, probs: np.ndarray | None, invalid: list | None,
             columns: dict[str, list[str]], top: int = 10) -> dict:
    """Every number of a report: overall metrics, slices, subsets, confusions, mistakes, fingerprint."""
    result = {"task": task.name, "kind": task.kind, **compute_metrics(task, gold, pred, probs, invalid)}
    baseline = trivial_baseline(task, gold)
    result["baseline"] = {**baseline, "beaten": beats_baseline(task.kind, result, baseline)}
    slices = {}
    for col in task.slices:
        if col not in columns:
            continue
        groups: dict[str, list[int]] = {}
        for i, v in enumerate(columns[col]):
            groups.setdefault(v if v != "" else "(blank)", []).append(i)
        slices[col] = {}
        for value, idx in sorted(groups.items(), key=_slice_order(groups)):
            sub_probs = None if probs is None else probs[idx]
            m = compute_metrics(task, [gold[i] for i in idx], [pred[i] for i in idx], sub_probs,
                                None if invalid is None else [invalid[i] for i in idx])
            slices[col][value] = summary(task, m)
    result["slices"] = slices
    # a slice the spec names but the evaluation file lacks is said, not silently left out
    result["missing_slices"] = [c for c in task.slices if c not in columns]
    result["subsets"] = subset_results(task, gold, pred, probs, columns, invalid)
    if task.kind != "extraction":
        result["confused_pairs"] = M.confused_pairs(gold, pred, top)
    wrong = [(row_confidence(task, g, p, None if probs is None else probs[i]), i)
             for i, (g, p) in enumerate(zip(gold, pred)) if not row_is_correct(task, g, p)]
    # most confident first; mistakes without a confidence (e.g. only missed entities) last
    wrong.sort(key=lambda ci: (ci[0] is None, -(ci[0] or 0.0), ci[1]))
    result["mistakes"] = [{"row": i + 1, "text": _snippet(texts[i]), "gold": gold[i], "pred": pred[i],
                           "confidence": None if c is None else round(c, 4),
                           **({"invalid": True} if invalid and invalid[i] else {})} for c, i in wrong[:top]]
    result["mistakes_total"] = len(wrong)
    result["fingerprint"] = fingerprint(texts, gold)
    return result


def subset_results(task, gold: list, pred: list, probs: np.ndarray | None, columns: dict[str, list[str]],
                   invalid: list | None = None) -> dict:
    """Every subset of the spec: by reference labels (recall into the group, scoring/metrics.py), or
    by a data column's values (the kind's per-row rate on those rows, scoring/kinds.py ``row_hits``).
    A column subset whose column the evaluation data lacks is left out."""
    out = {}
    for name, s in task.subsets.items():
        if s.label_in is not None:
            out[name] = M.subset_scores(task.kind, gold, pred, s.label_in)
            continue
        values = columns.get(s.column) if s.column != task.label_column else [str(g) for g in gold]
        if values is None:
            continue
        chosen = set(s.values)
        idx = [i for i, v in enumerate(values) if v in chosen]
        hits = row_hits(task, [gold[i] for i in idx], [pred[i] for i in idx], None if probs is None else probs[idx],
                        None if invalid is None else [invalid[i] for i in idx])
        out[name] = {"column": s.column, "values": list(s.values), "metric": KINDS[task.kind].row_metric,
                     "n": len(idx), "correct": int(sum(hits)), "rate": sum(hits) / len(idx) if idx else 0.0}
    return out


def _slice_order(groups: dict[str, list[int]]):
    """Numbers (ratings) and dates (years, months) read best in their own order; anything else
    (languages, domains) largest group first."""
    values = [v for v in groups if v != "(blank)"]
    try:
        [float(v) for v in values]
        return lambda kv: (kv[0] == "(blank)", float(kv[0]) if kv[0] != "(blank)" else 0.0)
    except ValueError:
        pass
    if all(re.fullmatch(r"\d{4}([-./]\d{1,2}){0,2}", v) for v in values):
        return lambda kv: (kv[0] == "(blank)", kv[0])
    return lambda kv: (-len(kv[1]), kv[0])


def _snippet(text: str) -> str:
    flat = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= SNIPPET else flat[:SNIPPET - 1] + "…"


def data_columns(task, examples: Examples) -> dict[str, list[str]]:
    """Columns copied into predictions.jsonl: every column except the text fields and the label
    (ids for ``compare --align-on``, slice columns)."""
    skip = set(task.text) | {task.label_column} | set(RESERVED)
    return {c: ["" if v is None else str(v) for v in examples.frame[c].tolist()]
            for c in examples.frame.columns if c not in skip}


def evaluate(predictor: Predictor, examples: Examples, out_dir: Path | None = None, progress: bool = True,
             top: int = 10) -> dict:
    """Predict ``examples``, compute every number and (with ``out_dir``) write the report files."""
    task = predictor.task
    t0 = time.time()
    pred, probs, invalid = _score(predictor, examples.texts, progress=progress)
    seconds = time.time() - t0
    columns = data_columns(task, examples)
    result = assemble(task, examples.texts, examples.labels, pred, probs, invalid, columns, top=top)
    measure = getattr(getattr(predictor, "scorer", None), "truncation", None)  # methods that tokenize say what max_length cuts
    if measure is not None:
        result["truncation"] = {"evaluation": measure(examples.texts),
                                "train": (predictor.run.config.get("budget") or {}).get("train")}
    result.update({
        "data": examples.source, "prediction_seconds": round(seconds, 3),
        "docs_per_second": round(len(examples) / seconds, 2) if seconds > 0 else None,
        "method": predictor.run.method, "model": predictor.run.config.get("model"),
        "run": str(predictor.run.dir), "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    if out_dir is not None:
        write_report(Path(out_dir), task, examples.texts, examples.labels, pred, probs, invalid, columns, result)
    return result


def prediction_rows(task, texts, gold, pred, probs, invalid, columns) -> list[dict]:
    rows = []
    for i, (text, g, p) in enumerate(zip(texts, gold, pred)):
        rec = {"row": i + 1, "text": text, "gold": g, "pred": p}
        if probs is not None:
            rec["confidence"] = round(float(probs[i].max()), 6)
            rec["probabilities"] = {lab: round(float(v), 6) for lab, v in zip(task.label_names, probs[i])}
        if invalid is not None:
            rec["invalid"] = bool(invalid[i])
        rec.update({c: vals[i] for c, vals in columns.items()})
        rows.append(rec)
    return rows


def write_report(out_dir: Path, task, texts, gold, pred, probs, invalid, columns, result: dict) -> None:
    from .render import confusion_png, reliability_png

    rows = prediction_rows(task, texts, gold, pred, probs, invalid, columns)
    atomic_write_text(out_dir / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    images = {}
    if "confusion_matrix" in result:
        images["confusion"] = confusion_png(result["confusion_matrix"])
        atomic_write_bytes(out_dir / "confusion.png", images["confusion"])
    if result.get("calibration", {}).get("curve"):
        images["reliability"] = reliability_png(result["calibration"])
        atomic_write_bytes(out_dir / "reliability.png", images["reliability"])
    # stale plots of an earlier evaluation must not sit next to a report that does not show them
    for name in ("confusion", "reliability"):
        if name not in images:
            (out_dir / f"{name}.png").unlink(missing_ok=True)
    render_report(out_dir, task, result)


def render_report(out_dir: Path, task, result: dict) -> None:
    """metrics.json, report.md and report.html from the result and the plots beside them (written
    again when a multi-task evaluation adds the combined table)."""
    from .render import render_html, render_markdown

    images = {name: (out_dir / f"{name}.png").read_bytes() for name in ("confusion", "reliability")
              if (out_dir / f"{name}.png").is_file()}
    atomic_write_json(out_dir / "metrics.json", result)
    atomic_write_text(out_dir / "report.md", render_markdown(task, result, images))
    atomic_write_text(out_dir / "report.html", render_html(task, result, images))


def read_predictions(path: Path) -> list[dict]:
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def assemble_from_rows(task, rows: list[dict], top: int = 10) -> dict:
    """Rebuild a report's numbers from predictions.jsonl rows (what compare uses)."""
    texts = [r["text"] for r in rows]
    gold = [r["gold"] for r in rows]
    pred = [r["pred"] for r in rows]
    probs = None
    if rows and all("probabilities" in r for r in rows):
        probs = np.array([[r["probabilities"][lab] for lab in task.label_names] for r in rows], dtype=np.float64)
    invalid = [bool(r.get("invalid", False)) for r in rows] if any("invalid" in r for r in rows) else None
    wanted = [*task.slices, *(s.column for s in task.subsets.values() if s.column)]
    columns = {c: [str(r.get(c, "")) for r in rows] for c in wanted if any(c in r for r in rows)}
    return assemble(task, texts, gold, pred, probs, invalid, columns, top=top)
