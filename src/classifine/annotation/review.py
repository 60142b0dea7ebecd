"""``classifine review``: how good are the annotations, and which rows should a person look at.

- Agreement with human labels (``--gold``): the task's own metrics with the annotator as the
  "prediction" (accuracy, macro-F1, per label, confusion matrix) plus Cohen's kappa.
- Agreement between annotators (``--with`` other annotation folders of the same input): the
  majority label, the probability average, Fleiss' kappa and Krippendorff's alpha (nominal).
- A review queue (``review.csv``, and a section of ``report.html``), highest priority first:
  label issues found by cleanlab (``find_label_issues`` on out-of-fold probabilities of a cheap
  TF-IDF + logistic-regression classifier trained on the annotations themselves), annotator
  disagreement, and low confidence; the priority adds one for each of the first two and
  ``1 - confidence``, so a row flagged twice comes before one flagged once.
- ``--apply reviewed.csv``: a person's labels (column ``reviewed_label``) merged back; the
  annotator's label stays beside the reviewed one, and the counts say what changed.
"""
from __future__ import annotations

import csv
import html
import io
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.annotations import AnnotationFolder, final_label
from ..core.data import join_fields, load_examples, parse_label, read_table
from ..core.runs import atomic_write_text
from ..core.task import TaskSpec
from ..errors import DataError
from ..scoring import metrics as M
from ..scoring.kinds import compute_metrics

log = logging.getLogger("classifine")
QUEUE = "review.csv"
CLASSIFIED = ("single_label", "ordinal")


def _texts(rows: list[dict], fields: list[str]) -> list[str]:
    """The rows' texts joined as training joins them, so a gold file's rows match by text."""
    return join_fields(pd.DataFrame([{f: r.get(f, "") for f in fields} for r in rows], columns=fields), fields)


def read_gold(task: TaskSpec, path: str | Path) -> dict:
    """Human labels by text (the task's fields joined as training joins them)."""
    gold = load_examples(task, path)
    return {t: y for t, y in zip(gold.texts, gold.labels)}


def gold_agreement(task: TaskSpec, rows: list[dict], by_text: dict, source: str | Path) -> dict:
    pairs = [(by_text[k], r) for r, k in zip(rows, _texts(rows, task.text)) if k in by_text]
    if not pairs:
        raise DataError(f"no annotated row matches a row of {source}",
                        [f"rows are matched on the text field(s) {task.text}; the gold file must hold the same texts"])
    ref = [g for g, _ in pairs]
    pred = [r["label"] if r.get("valid") else ([] if task.kind in ("multi_label", "extraction") else "") for _, r in pairs]
    out = {"rows": len(pairs), "metrics": compute_metrics(task, ref, pred, invalid=[not r.get("valid") for _, r in pairs])}
    if task.kind in CLASSIFIED:
        out["cohen_kappa"] = M.cohen_kappa(ref, pred, task.label_names + [""])
    return out


def annotator_agreement(task: TaskSpec, folders: list[AnnotationFolder], rows_by: list[list[dict]]) -> dict:
    """Agreement between annotators on the rows they share (by input row number)."""
    names = [f.meta().get("annotator", str(f.path)) for f in folders]
    common = sorted(set.intersection(*[{r["row"] for r in rows} for rows in rows_by]))
    index = [{r["row"]: r for r in rows} for rows in rows_by]
    if task.kind not in CLASSIFIED:
        return {"annotators": names, "rows": len(common), "note": f"agreement statistics are for single_label/ordinal, not {task.kind}"}
    ratings = [[ix[i]["label"] if ix[i].get("valid") else None for ix in index] for i in common]
    out = {"annotators": names, "rows": len(common),
           "fleiss_kappa": M.fleiss_kappa(ratings, task.label_names),
           "krippendorff_alpha": M.krippendorff_alpha(ratings, task.label_names),
           "all_agree": sum(1 for r in ratings if None not in r and len(set(r)) == 1) / max(len(ratings), 1)}
    pairwise = {}
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            both = [(r[a], r[b]) for r in ratings if r[a] is not None and r[b] is not None]
            if both:
                pairwise[f"{names[a]} vs {names[b]}"] = M.cohen_kappa([x for x, _ in both], [y for _, y in both], task.label_names)
    out["pairwise_cohen_kappa"] = pairwise
    return out


def consensus(task: TaskSpec, row_sets: list[dict]) -> dict:
    """Majority label and averaged probabilities of one row across annotators."""
    votes = Counter(r["label"] for r in row_sets if r.get("valid"))
    probs = [r["probabilities"] for r in row_sets if r.get("probabilities")]
    avg = {lab: float(np.mean([p.get(lab, 0.0) for p in probs])) for lab in task.label_names} if probs else None
    top = votes.most_common()
    majority = top[0][0] if top and (len(top) == 1 or top[0][1] > top[1][1]) else (
        max(avg, key=avg.get) if avg else None)
    return {"majority": majority, "probabilities": avg, "disagree": len(votes) > 1}


def consensus_agreement(task: TaskSpec, rows: list[dict], others: list[dict[int, dict]], gold: dict,
                        source: str | Path) -> dict:
    """Agreement with people of the annotators combined: majority vote and averaged probabilities."""
    out = {}
    for way in ("majority", "probability_average"):
        combined = []
        for r in rows:
            c = consensus(task, [r] + [o[r["row"]] for o in others if r["row"] in o])
            probs = c["probabilities"]
            label = c["majority"] if way == "majority" else (max(probs, key=probs.get) if probs else None)
            combined.append({**r, "label": label, "valid": label is not None})
        g = gold_agreement(task, combined, gold, source)
        out[way] = {"rows": g["rows"], "accuracy": g["metrics"]["accuracy"], "macro_f1": g["metrics"]["macro_f1"],
                    "cohen_kappa": g.get("cohen_kappa")}
    return out


def label_issues(task: TaskSpec, rows: list[dict], fields: list[str]) -> dict[int, str]:
    """Row number -> the label cleanlab suggests, for rows whose annotation looks wrong given the
    rest (5-fold out-of-fold probabilities of TF-IDF + logistic regression)."""
    if task.kind not in CLASSIFIED:
        return {}
    valid = [r for r in rows if r.get("valid")]
    counts = Counter(r["label"] for r in valid)
    present = [lab for lab in task.label_names if counts[lab] >= 5]
    use = [r for r in valid if r["label"] in present]
    if len(present) < 2 or len(use) < 20:
        log.info("too few annotated rows per label for cleanlab (needs 2+ labels with 5+ rows each)")
        return {}
    from cleanlab.filter import find_label_issues
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline

    texts = _texts(use, fields)
    y = np.array([present.index(r["label"]) for r in use])
    clf = make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2),
                        LogisticRegression(max_iter=1000, C=4.0))
    folds = int(min(5, min(Counter(y).values())))
    probs = cross_val_predict(clf, texts, y, cv=folds, method="predict_proba")
    ranked = find_label_issues(labels=y, pred_probs=probs, return_indices_ranked_by="self_confidence")
    return {use[i]["row"]: present[int(np.argmax(probs[i]))] for i in ranked}


def review_queue(task: TaskSpec, rows: list[dict], fields: list[str], others: list[dict[int, dict]]) -> list[dict]:
    issues = label_issues(task, rows, fields)
    queue = []
    for r in rows:
        reasons, suggested, score = [], None, 0.0
        if not r.get("valid"):
            reasons.append("invalid answer")
            score += 2.0
        if r["row"] in issues:
            reasons.append("label issue (cleanlab)")
            suggested, score = issues[r["row"]], score + 1.0
        if others:
            sets = [r] + [o[r["row"]] for o in others if r["row"] in o]
            c = consensus(task, sets) if task.kind in CLASSIFIED else {"disagree": False}
            if c["disagree"]:
                reasons.append("annotators disagree")
                suggested = suggested or c["majority"]
                score += 1.0
        conf = r.get("confidence")
        if conf is not None:
            score += 1.0 - float(conf)
            if conf < 0.6:
                reasons.append(f"low confidence ({conf:.2f})")
        queue.append({"row": r["row"], **{f: r.get(f, "") for f in fields}, "label": _show(r.get("label")),
                      "confidence": conf, "suggested": _show(suggested), "reasons": "; ".join(reasons),
                      "priority": round(score, 4), "reviewed_label": _show(r.get("reviewed_label"))})
    queue.sort(key=lambda q: (-q["priority"], q["row"]))
    return queue


def _show(label) -> str:
    if label is None:
        return ""
    return "|".join(label) if isinstance(label, list) else str(label)


def write_queue(path: Path, queue: list[dict]) -> None:
    buf = io.StringIO()
    if queue:
        w = csv.DictWriter(buf, fieldnames=list(queue[0]))
        w.writeheader()
        w.writerows(queue)
    atomic_write_text(path, buf.getvalue())


def apply_review(task: TaskSpec, folder: AnnotationFolder, reviewed_path: str | Path) -> dict:
    """Merge a person's labels (``row`` + ``reviewed_label`` columns; blank = not reviewed) back."""
    frame = read_table(reviewed_path)
    missing = [c for c in ("row", "reviewed_label") if c not in frame.columns]
    if missing:
        raise DataError(f"{reviewed_path} lacks column(s) {missing}",
                        [f"start from {QUEUE} of `classifine review` and fill in 'reviewed_label'"])
    rows = folder.read()
    by_row = {r["row"]: r for r in rows}
    problems, updates = [], {}
    for i, (row, value) in enumerate(zip(frame["row"], frame["reviewed_label"]), 1):
        if str(value).strip() == "":
            continue
        try:
            n = int(row)
        except ValueError:
            problems.append(f"line {i + 1}: row {row!r} is not a row number")
            continue
        if n not in by_row:
            problems.append(f"line {i + 1}: row {n} is not in the annotations")
            continue
        label, problem = parse_label(task, value)
        bad = problem or ([x for x in (label if isinstance(label, list) else [label]) if x not in task.labels]
                          if task.kind != "extraction" else [])
        if bad:
            problems.append(f"line {i + 1}: reviewed label {value!r} is not valid ({problem or f'unknown {bad}'}); "
                            f"labels: {task.label_names}")
            continue
        updates[n] = label
    if problems:
        raise DataError(f"{reviewed_path} has {len(problems)} problem(s); nothing was applied", problems[:20])
    changed = confirmed = 0
    for n, label in updates.items():
        rec = by_row[n]
        if "annotator_label" not in rec:
            rec["annotator_label"] = rec.get("label")
        rec["reviewed_label"] = label
        same = rec["annotator_label"] == label or (isinstance(label, list) and set(label) == set(rec["annotator_label"] or []))
        confirmed += same
        changed += not same
    folder.rewrite(rows)
    total_reviewed = sum(1 for r in rows if r.get("reviewed_label") not in (None, ""))
    return {"applied": len(updates), "confirmed": confirmed, "changed": changed, "reviewed_total": total_reviewed}


def render_html(title: str, summary: dict, queue: list[dict], fields: list[str], top: int = 100) -> str:
    e = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{e(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}td.t{max-width:520px}</style>",
             f"<h1>{e(title)}</h1>"]
    c = summary.get("counts", {})
    parts.append(f"<p>{c.get('rows', 0)} rows annotated by {e(str(summary.get('annotator')))}; "
                 f"{c.get('invalid', 0)} invalid ({100 * c.get('invalid_rate', 0):.1f}%).</p>")
    gold = summary.get("gold")
    if gold:
        m = gold["metrics"]
        head = {k: m[k] for k in ("accuracy", "macro_f1", "micro_f1", "subset_accuracy") if k in m}
        parts.append("<h2>Agreement with human labels</h2><table>" + "".join(
            f"<tr><th>{e(k)}</th><td>{v:.4f}</td></tr>" for k, v in {**head, **({"cohen_kappa": gold['cohen_kappa']} if 'cohen_kappa' in gold else {})}.items())
            + f"<tr><th>rows</th><td>{gold['rows']}</td></tr></table>")
    agree = summary.get("annotators")
    if agree and "fleiss_kappa" in agree:
        parts.append("<h2>Agreement between annotators</h2><table>" + "".join(
            f"<tr><th>{e(k)}</th><td>{agree[k]:.4f}</td></tr>" for k in ("fleiss_kappa", "krippendorff_alpha", "all_agree"))
            + "</table>")
    for way, g in (summary.get("gold_consensus") or {}).items():
        parts.append(f"<p>Combined ({e(way.replace('_', ' '))}) vs human labels: accuracy {g['accuracy']:.4f}, "
                     f"macro-F1 {g['macro_f1']:.4f}.</p>")
    parts.append(f"<h2>Review queue (top {min(top, len(queue))} of {len(queue)})</h2><table><tr><th>row</th>"
                 + "".join(f"<th>{e(f)}</th>" for f in fields) + "<th>label</th><th>confidence</th><th>suggested</th><th>why</th></tr>")
    for q in queue[:top]:
        conf = "" if q["confidence"] is None else f"{q['confidence']:.2f}"
        parts.append(f"<tr><td>{q['row']}</td>" + "".join(f"<td class=t>{e(str(q[f]))}</td>" for f in fields)
                     + f"<td>{e(q['label'])}</td><td>{conf}</td><td>{e(q['suggested'])}</td><td>{e(q['reasons'])}</td></tr>")
    parts.append("</table>")
    return "\n".join(parts)


def review(folder: str | Path, gold: str | Path | None = None, others: list[str | Path] = (),
           apply: str | Path | None = None) -> dict:
    """Agreement, the review queue (``review.csv``, ``report.html``) and, with ``apply``, merged
    reviewed labels. Returns the review summary, also stored in ``annotation.json``."""
    af = AnnotationFolder(folder)
    meta = af.meta()
    task = af.task()
    applied = apply_review(task, af, apply) if apply is not None else None
    rows = af.read()
    fields = list(task.text)
    summary = {"annotator": meta.get("annotator"), "counts": meta.get("counts", {})}
    if applied:
        summary["applied"] = applied
    reviewed = [r for r in rows if r.get("reviewed_label") not in (None, "")]
    if reviewed and task.kind in CLASSIFIED:
        ref = [r["reviewed_label"] for r in reviewed]
        pred = [r.get("annotator_label") or "" for r in reviewed]
        summary["vs_reviewed"] = {"rows": len(reviewed), "accuracy": float(np.mean([a == b for a, b in zip(ref, pred)])),
                                  "cohen_kappa": M.cohen_kappa(ref, pred, task.label_names + [""])}
    by_text = read_gold(task, gold) if gold is not None else None
    if by_text is not None:
        summary["gold"] = gold_agreement(task, [{**r, "label": r.get("annotator_label", r.get("label"))} for r in rows],
                                         by_text, gold)
    other_rows: list[dict[int, dict]] = []
    if others:
        folders = [af] + [AnnotationFolder(o) for o in others]
        sets = [rows] + [f.read() for f in folders[1:]]
        for f, s in zip(folders[1:], sets[1:]):
            if f.meta()["identity"]["input"] != meta["identity"]["input"]:
                raise DataError(f"{f.path} annotated another input file than {folder}",
                                ["compare annotation folders of the same --input"])
        summary["annotators"] = annotator_agreement(task, folders, sets)
        other_rows = [{r["row"]: r for r in s} for s in sets[1:]]
        if by_text is not None and task.kind in CLASSIFIED:
            summary["gold_consensus"] = consensus_agreement(task, rows, other_rows, by_text, gold)
    queue = review_queue(task, [{**r, "label": final_label(r)} for r in rows], fields, other_rows)
    write_queue(af.path / QUEUE, queue)
    summary["queue"] = {"rows": len(queue), "flagged": sum(1 for q in queue if q["reasons"]), "file": str(af.path / QUEUE)}
    atomic_write_text(af.path / "report.html", render_html(f"Annotations: {task.name}", summary, queue, fields))
    af.write_meta({**af.meta(), "review": {k: v for k, v in summary.items() if k not in ("counts",)}})
    return summary
