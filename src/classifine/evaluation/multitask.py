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

from pathlib import Path

import numpy as np

from ..core.data import Examples, load_examples
from ..core.runs import Run, atomic_write_json
from ..errors import DataError
from ..predict.predictor import Predictor
from ..scoring import metrics as M
from ..scoring.kinds import KINDS, METRICS, row_hits
from .report import evaluate, fingerprint, read_predictions, render_report

COMBINED = "combined.json"


def _cell(label: str, hits: list[bool], **extra) -> dict:
    return {"label": label, "num": int(sum(hits)), "den": len(hits), "rate": sum(hits) / len(hits) if hits else 0.0, **extra}


def _probs(task, rows: list[dict]) -> np.ndarray | None:
    if not rows or not all("probabilities" in r for r in rows):
        return None
    return np.array([[r["probabilities"][lab] for lab in task.label_names] for r in rows], dtype=np.float64)


def _slice_values(rows: dict[str, list[dict]], col: str) -> list[str]:
    from .report import _slice_order

    groups: dict[str, list[int]] = {}
    for task_rows in rows.values():
        for i, r in enumerate(task_rows):
            if col in r:
                groups.setdefault(str(r[col]) if r[col] != "" else "(blank)", []).append(i)
    return [v for v, _ in sorted(groups.items(), key=_slice_order(groups))]


def _value(row: dict, col: str) -> str:
    v = str(row.get(col, ""))
    return v if v != "" else "(blank)"


def combine(tasks: dict, rows: dict[str, list[dict]]) -> dict:
    """The combined numbers of the tasks evaluated (``rows``: predictions.jsonl rows per task name,
    in the run's task order). Pure: reads rows, computes, returns."""
    names = [n for n in tasks if n in rows]
    hits = {n: row_hits(tasks[n], [r["gold"] for r in rows[n]], [r["pred"] for r in rows[n]], _probs(tasks[n], rows[n]))
            for n in names}
    invalid = {n: [bool(r.get("invalid")) for r in rows[n]] for n in names}
    hits = {n: [h and not bad for h, bad in zip(hits[n], invalid[n])] for n in names}
    slices = [c for c in tasks[names[0]].slices if any(c in r for n in names for r in rows[n])] if names else []
    table = [_cell("total", [h for n in names for h in hits[n]])]
    table += [_cell(f"task = {n}", hits[n]) for n in names]
    for col in slices:
        for v in _slice_values({n: rows[n] for n in names}, col):
            table.append(_cell(f"{col} = {v}", [h for n in names for h, r in zip(hits[n], rows[n]) if _value(r, col) == v]))
    subsets: dict[str, list[dict]] = {}
    for n in names:
        task = tasks[n]
        for sname, sub in task.subsets.items():
            groups = [("all", list(range(len(rows[n]))))]
            for col in slices:
                groups += [(f"{col} = {v}", [i for i, r in enumerate(rows[n]) if _value(r, col) == v])
                           for v in _slice_values({n: rows[n]}, col)]
            for label, idx in groups:
                subsets.setdefault(sname, []).append({"task": n, **_subset_cell(task, sub, [rows[n][i] for i in idx],
                                                                                   [hits[n][i] for i in idx], label)})
    return {"tasks": names, "metrics": {n: KINDS[tasks[n].kind].row_metric for n in names}, "slices": slices,
            "table": table, "subsets": subsets,
            "fingerprints": {n: fingerprint([r["text"] for r in rows[n]], [r["gold"] for r in rows[n]]) for n in names}}


def _subset_cell(task, sub, rows: list[dict], hits: list[bool], label: str) -> dict:
    if sub.label_in is not None:  # recall into the group: rows (labels) of the group answered inside it
        s = M.subset_scores(task.kind, [r["gold"] for r in rows], [r["pred"] for r in rows], sub.label_in)
        return {"label": label, "metric": "recall into " + ", ".join(sub.label_in), "num": s["found"],
                "den": s["relevant"], "rate": s["recall"]}
    column = "gold" if sub.column == task.label_column else sub.column
    keep = [h for h, r in zip(hits, rows) if str(r.get(column, "")) in set(sub.values)]
    return _cell(label, keep, metric=METRICS[KINDS[task.kind].row_metric].name)


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
    task's metrics (with ``combined``), or the first evaluated task's."""
    examples = _examples(run, list(run.tasks), data)
    results = evaluate_tasks(Predictor.load(run), examples, out_dir, progress=progress, top=top)
    first = results.get(run.task.name) or next(iter(results.values()))
    first.setdefault("combined", None)
    return {**first, "task_results": {n: {"n": r["n"], "kind": r["kind"], "metrics_file": str(run.task_dir(n, out_dir) / "metrics.json")}
                                      for n, r in results.items()}}


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
    import json

    return json.loads(path.read_text(encoding="utf-8"))
