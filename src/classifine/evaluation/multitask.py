"""Every task of a multi-task run evaluated at once, and the combined table its users read.

A multi-task run (one model trained on several specs, ``Run.tasks``) is evaluated task by task as
any run is (report.py: the run's own task in the run folder, each other task in ``tasks/<name>/``);
then ``combine`` builds, from those predictions.jsonl rows only (so ``compare`` rebuilds the same
numbers from the files), the table of all task-level examples: the total, by task and by every
slice column, each cell ``rate (correct/rows)`` with the task's per-row rate (``KINDS[kind].row_metric``:
accuracy, top-1 exact match, entity-set exact match); and each subset of the specs per task and
slice (recall into the group for a subset of reference labels, the per-row rate for a subset chosen
by a data column). Written as combined.json and shown first in the run's report.md/report.html.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.data import Examples, load_examples
from ..core.runs import Run, atomic_write_json
from ..errors import DataError
from ..predict.predictor import Predictor
from ..scoring.kinds import KINDS, METRICS, row_hits
from .report import _slice_order, evaluate, fingerprint, read_predictions, render_report, subset_results

COMBINED = "combined.json"


def _cell(label: str, hits: list[bool], **extra) -> dict:
    return {"label": label, "num": int(sum(hits)), "den": len(hits), "rate": sum(hits) / len(hits) if hits else 0.0, **extra}


def _probs(task, rows: list[dict]) -> np.ndarray | None:
    if not rows or not all("probabilities" in r for r in rows):
        return None
    return np.array([[r["probabilities"][lab] for lab in task.label_names] for r in rows], dtype=np.float64)


def _value(row: dict, col: str) -> str:
    v = str(row.get(col, ""))
    return v if v != "" else "(blank)"


def _slice_values(rows: list[dict], col: str) -> list[str]:
    """The values of a slice column in these rows, in the order the reports list them."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if col in r:
            groups.setdefault(_value(r, col), []).append(i)
    return [v for v, _ in sorted(groups.items(), key=_slice_order(groups))]


def _subset_lines(task, rows: list[dict], label: str) -> dict[str, dict]:
    """Each subset of the task on these rows (report.py ``subset_results``), as one line of its table:
    recall into the group for a subset of labels, the kind's per-row rate for a column subset."""
    wanted = {s.column for s in task.subsets.values() if s.column}
    columns = {c: [str(r.get(c, "")) for r in rows] for c in wanted if any(c in r for r in rows)}
    invalid = [bool(r.get("invalid")) for r in rows]
    scores = subset_results(task, [r["gold"] for r in rows], [r["pred"] for r in rows], _probs(task, rows), columns, invalid)
    lines = {}
    for name, s in scores.items():
        if "labels" in s:
            lines[name] = {"label": label, "metric": "recall into " + ", ".join(s["labels"]), "num": s["found"],
                           "den": s["relevant"], "rate": s["recall"]}
        else:
            lines[name] = {"label": label, "metric": METRICS[s["metric"]].name, "num": s["correct"], "den": s["n"],
                           "rate": s["rate"]}
    return lines


def combine(tasks: dict, rows: dict[str, list[dict]]) -> dict:
    """The combined numbers of the tasks evaluated (``rows``: predictions.jsonl rows per task name,
    in the run's task order). Pure: reads rows, computes, returns."""
    names = [n for n in tasks if n in rows]
    hits = {n: row_hits(tasks[n], [r["gold"] for r in rows[n]], [r["pred"] for r in rows[n]], _probs(tasks[n], rows[n]),
                        [bool(r.get("invalid")) for r in rows[n]]) for n in names}
    slices = [c for c in tasks[names[0]].slices if any(c in r for n in names for r in rows[n])] if names else []
    table = [_cell("total", [h for n in names for h in hits[n]])]
    table += [_cell(f"task = {n}", hits[n]) for n in names]
    for col in slices:
        for v in _slice_values([r for n in names for r in rows[n]], col):
            table.append(_cell(f"{col} = {v}", [h for n in names for h, r in zip(hits[n], rows[n]) if _value(r, col) == v]))
    subsets: dict[str, list[dict]] = {}
    for n in names:
        groups = [("all", rows[n])] + [(f"{col} = {v}", [r for r in rows[n] if _value(r, col) == v])
                                       for col in slices for v in _slice_values(rows[n], col)]
        for label, group in groups:
            for sname, line in _subset_lines(tasks[n], group, label).items():
                subsets.setdefault(sname, []).append({"task": n, **line})
    return {"tasks": names, "metrics": {n: KINDS[tasks[n].kind].row_metric for n in names}, "slices": slices,
            "table": table, "subsets": subsets,
            "fingerprints": {n: fingerprint([r["text"] for r in rows[n]], [r["gold"] for r in rows[n]]) for n in names}}


def _examples(run: Run, names: list[str], data: str | Path | None) -> dict[str, Examples]:
    """Each task's evaluation examples: ``data`` for every task (they answer about the same
    records), else each spec's test file. Every problem (a missing label column…) at once."""
    out, problems = {}, []
    for name in names:
        task = run.tasks[name]
        path = Path(data) if data is not None else task.data_path("test")
        if path is None:
            continue
        try:
            out[name] = load_examples(task, path)
        except DataError as e:
            problems += [f"task {name}: {e.summary}", *(f"task {name}: {p}" for p in e.problems)]
    if problems:
        raise DataError(f"the evaluation data does not fit every task of {run.dir}:", problems)
    if not out:
        raise DataError("no evaluation data", ["pass --data FILE (the run's tasks were trained without test data)"])
    return out


def evaluate_tasks(predictor: Predictor, examples: dict[str, Examples], out_dir: Path, progress: bool = True,
                   top: int = 10) -> dict[str, dict]:
    """Evaluate every task given (a predictor per task on the one loaded model), write each task's
    report, the combined table (combined.json) and the run's own report with that table first."""
    run, out_dir = predictor.run, Path(out_dir)
    results = {}
    for name, ex in examples.items():
        where = run.task_dir(name, out_dir)
        where.mkdir(parents=True, exist_ok=True)
        results[name] = evaluate(predictor.for_task(name), ex, where, progress=progress, top=top)
    combined = combine(run.tasks, {n: read_predictions(run.task_dir(n, out_dir) / "predictions.jsonl") for n in results})
    atomic_write_json(out_dir / COMBINED, combined)
    own = run.task.name
    if own in results:
        results[own]["combined"] = combined
        render_report(out_dir, run.task, results[own])
    return results


def evaluate_run_tasks(run: Run, data: str | Path | None, out_dir: Path, progress: bool = True, top: int = 10) -> dict:
    """``classifine eval`` of a multi-task run: every task, the combined table; returns the run's own
    task's metrics (with ``combined``), or the first evaluated task's when it had no evaluation data."""
    examples = _examples(run, list(run.tasks), data)
    results = evaluate_tasks(Predictor.load(run), examples, out_dir, progress=progress, top=top)
    return results.get(run.task.name) or next(iter(results.values()))


def evaluate_run(run_dir: str | Path, data: str | Path | None = None, out_dir: str | Path | None = None,
                 progress: bool = True, top: int = 10) -> dict:
    """``classifine eval``: evaluate a finished run on ``data`` (default: the test file it was
    trained with) and write the report into ``out_dir`` (default: the run directory). A multi-task
    run: every task, and the combined table."""
    run = Run.load(run_dir)
    target = Path(out_dir) if out_dir is not None else run.dir
    if len(run.tasks) > 1:
        return evaluate_run_tasks(run, data, target, progress=progress, top=top)
    path = Path(data) if data is not None else run.task.data_path("test")
    if path is None:
        raise DataError("no evaluation data", ["pass --data FILE (the run was trained without test data)"])
    examples = load_examples(run.task, path)
    return evaluate(Predictor.load(run), examples, target, progress=progress, top=top)


def read_combined(run_dir: Path) -> dict | None:
    path = Path(run_dir) / COMBINED
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
