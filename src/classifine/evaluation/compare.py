"""``classifine compare``: runs side by side on the same rows, and a leaderboard of one task's runs.

The comparison is rebuilt from each run's predictions.jsonl with ``report.assemble_from_rows`` and
the *first* run's task spec, so every run is scored by the same rules (threshold, subsets,
normalisation) even when their specs were edited between runs. Runs must have been evaluated on the
same rows (the fingerprint in metrics.json); ``align_on`` joins them on a column instead.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..core.runs import Run
from ..errors import RunError
from ..scoring.kinds import HEADLINE, KINDS, METRICS, key_metrics
from .render import cell, combined_note, render_template
from .report import assemble_from_rows, read_predictions

MAX_LISTED = 5


@dataclass
class Evaluated:
    """A run with its evaluation: metrics.json and predictions.jsonl."""

    name: str
    run: Run
    metrics: dict
    task: str | None = None  # another task of a multi-task run (its files in tasks/<name>/)

    @property
    def rows(self) -> list[dict]:
        return read_predictions(self.run.task_dir(self.task or self.run.task.name) / "predictions.jsonl")


def load_evaluated(run_dir: str | Path | Run, task: str | None = None) -> Evaluated:
    run = run_dir if isinstance(run_dir, Run) else Run.load(run_dir)
    where = run.task_dir(task or run.task.name)
    missing = [f for f in ("metrics.json", "predictions.jsonl") if not (where / f).is_file()]
    if missing:
        what = f"run {run.dir}" + (f" (task {task})" if task else "")
        raise RunError(f"{what} has not been evaluated (no {' or '.join(missing)})",
                       [f"evaluate it first: classifine eval {run.dir} --data TEST_FILE"])
    metrics = json.loads((where / "metrics.json").read_text(encoding="utf-8"))
    return Evaluated(name=run.dir.name, run=run, metrics=metrics, task=task)


def _load_all(run_dirs: list) -> list[Evaluated]:
    evs, problems = [], []
    for d in run_dirs:
        try:
            evs.append(load_evaluated(d))
        except RunError as e:
            problems.append(e.summary.rstrip(":") + (f": {'; '.join(e.problems)}" if e.problems else ""))
    if problems:
        raise RunError(f"{len(problems)} of the runs cannot be compared:", problems)
    names = [e.name for e in evs]
    for e in evs:  # two runs called "tfidf" in different folders need telling apart
        if names.count(e.name) > 1:
            e.name = f"{e.run.dir.parent.name}/{e.run.dir.name}"
    return evs


def _check_same_task(evs: list[Evaluated]) -> None:
    first = evs[0].run.task
    problems = []
    for e in evs[1:]:
        t = e.run.task
        if t.kind != first.kind:
            problems.append(f"{e.name} is a {t.kind} task, {evs[0].name} a {first.kind} task")
        elif t.label_names != first.label_names and set(t.label_names) != set(first.label_names):
            problems.append(f"{e.name} has labels {t.label_names}, {evs[0].name} has {first.label_names}")
    if problems:
        raise RunError("these runs solve different tasks and cannot be compared:",
                       problems + ["compare runs trained from the same task spec"])


def _align(evs: list[Evaluated], on: str | None) -> tuple[list[list[dict]], dict]:
    rows = [e.rows for e in evs]
    if on is None:
        prints = [e.metrics.get("fingerprint", {}) for e in evs]
        if all(p.get("sha256") and p.get("sha256") == prints[0].get("sha256") for p in prints):
            return rows, {"rows": len(rows[0])}
        listed = [f"{e.name}: {e.metrics.get('data', '?')} ({p.get('rows', len(r))} rows, fingerprint "
                  f"{(p.get('sha256') or 'none')[:12]})" for e, p, r in zip(evs, prints, rows)]
        same_texts = all(p.get("texts_sha256") == prints[0].get("texts_sha256") for p in prints)
        why = ("the texts are the same but the reference labels differ" if same_texts
               else "the evaluation data differ (other rows, or the same rows in another order)")
        raise RunError(f"refusing to compare: {why}", listed + [
            "evaluate every run on the same file: classifine eval RUN --data TEST_FILE",
            "or pass --align-on COLUMN (an id column of predictions.jsonl, or 'text') to compare on the rows they share"])
    problems, keyed = [], []
    for e, rs in zip(evs, rows):
        absent = sum(1 for r in rs if on not in r)
        if absent:
            cols = sorted({k for r in rs[:50] for k in r} - {"probabilities"})
            problems.append(f"{e.name}: {absent} row(s) of predictions.jsonl have no column {on!r} (columns: {cols})")
            continue
        index: dict[str, dict] = {}
        dupes = []
        for r in rs:
            key = str(r[on])
            if key in index:
                dupes.append(key)
            index[key] = r
        if dupes:
            problems.append(f"{e.name}: {len(dupes)} duplicate value(s) in {on!r}, e.g. {dupes[:MAX_LISTED]}: "
                            "align on a column that identifies each row")
        keyed.append(index)
    if problems:
        raise RunError(f"cannot align the runs on {on!r}:", problems)
    shared = [k for k in keyed[0] if all(k in idx for idx in keyed[1:])]
    if not shared:
        raise RunError(f"the runs share no value of {on!r}", ["check that they were evaluated on overlapping data"])
    differ = [k for k in shared if any(_gold(idx[k]) != _gold(keyed[0][k]) for idx in keyed[1:])]
    if differ:
        raise RunError(f"{len(differ)} aligned row(s) have different reference labels in different runs",
                       [f"{on} = {k!r}" for k in differ[:MAX_LISTED]] + ["the runs were evaluated on differently labelled data"])
    aligned = [[idx[k] for k in shared] for idx in keyed]
    return aligned, {"rows": len(shared), "aligned_on": on,
                     "dropped": {e.name: len(rs) - len(shared) for e, rs in zip(evs, rows)}}


def _gold(row: dict):
    g = row["gold"]
    return sorted(g) if isinstance(g, list) else g


def _delta(a: dict | None, b: dict | None) -> str:
    if a is None or b is None:
        return "–"
    d = b["value"] - a["value"]
    return f"{100 * d:+.2f} pp" if a["unit"] == "pct" else f"{d:+.4f}"


def _cell(r: dict | None) -> str:
    if r is None:
        return "–"
    return cell(r["value"], r["num"], r["den"]) if r["unit"] == "pct" else f"{r['value']:.4f}"


def _table(title: str, names: list[str], lines: list[tuple[str, list[dict | None]]], note: str | None = None) -> dict:
    """Rows of (label, one metric entry per run); every run after the first gets a Δ column against it."""
    headers = ["", names[0]]
    for n in names[1:]:
        headers += [n, f"Δ {n} − {names[0]}" if len(names) > 2 else "Δ"]
    rows = []
    for label, entries in lines:
        row = [label, _cell(entries[0])]
        for e in entries[1:]:
            row += [_cell(e), _delta(entries[0], e)]
        rows.append(row)
    return {"title": title, "headers": headers, "rows": rows, "note": note}


def _entry(value, num=None, den=None, unit="pct") -> dict:
    return {"value": value, "num": num, "den": den, "unit": unit}


def compare(run_dirs: list, align_on: str | None = None) -> dict:
    """Overall, per slice, per subset and per class, with differences to the first run (the base)."""
    if len(run_dirs) < 2:
        raise RunError("compare needs at least two runs", ["pass the base run first: classifine compare BASE_RUN NEW_RUN"])
    evs = _load_all(run_dirs)
    _check_same_task(evs)
    aligned, info = _align(evs, align_on)
    task = evs[0].run.task
    results = [assemble_from_rows(task, rows) for rows in aligned]
    names = [e.name for e in evs]
    head = HEADLINE[task.kind]
    sections = []
    keyed = [{r["key"]: r for r in key_metrics(task.kind, m)} for m in results]
    order = list(dict.fromkeys(k for d in keyed for k in d))
    sections.append(_table("Overall", names, [(next(d[k]["name"] for d in keyed if k in d), [d.get(k) for d in keyed])
                                               for k in order]))
    for col in task.slices:
        values = list(dict.fromkeys(v for m in results for v in m.get("slices", {}).get(col, {})))
        if not values:
            continue
        lines = []
        for v in values:
            cells = [m["slices"][col].get(v) for m in results]
            lines.append((f"{col} = {v}", [None if c is None else _entry(c[head], c["correct"], c["n"]) for c in cells]))
        sections.append(_table(f"{METRICS[head].header.capitalize()} by {col}", names, lines))
    lines = []
    for name in task.subsets:
        subs = [m["subsets"].get(name) for m in results]
        if any(s is None for s in subs):  # a column subset whose column the evaluation data lacks
            continue
        if "labels" in subs[0]:
            lines.append((f"{name}: recall", [_entry(s["recall"], s["found"], s["relevant"]) for s in subs]))
            lines.append((f"{name}: exact label accuracy", [_entry(s["accuracy"], s["correct"], s["n"]) for s in subs]))
        else:
            lines.append((f"{name}: {METRICS[subs[0]['metric']].name}", [_entry(s["rate"], s["correct"], s["n"]) for s in subs]))
    if lines:
        sections.append(_table("Subsets", names, lines,
                               "recall: rows whose reference is in the subset that were predicted inside it"))
    if results[0].get("per_class"):
        lines = []
        for lab in task.label_names:
            pcs = [m["per_class"].get(lab) for m in results]
            lines.append((f"{lab} (n={pcs[0]['support']})", [None if p is None else _entry(p["f1"]) for p in pcs]))
        sections.append(_table("F1 per class", names, lines))
    combined = _combined_sections(evs, names, align_on)
    if combined:  # a multi-task run: the sections below are its own task's
        sections = combined + [{**sec, "title": f"{sec['title']}: {task.name}"} for sec in sections]
    return {"task": task.name, "kind": task.kind, "runs": [_describe(e) for e in evs], "alignment": info,
            "data": evs[0].metrics.get("data"), "sections": sections, "results": results}


def _combined_sections(evs: list[Evaluated], names: list[str], align_on: str | None) -> list[dict]:
    """Runs that answer the same several tasks (multi-task runs, and their zero-shot base): the
    combined table and the subsets, rebuilt from each task's predictions with the first run's
    specs, then each other task's overall metrics. Runs of one task get nothing here."""
    from .multitask import combine

    tasks = evs[0].run.tasks
    if len(tasks) < 2:
        return []
    problems = [f"{e.name} answers {list(e.run.tasks)}, {evs[0].name} answers {list(tasks)}" for e in evs[1:]
                if set(e.run.tasks) != set(tasks)]
    if problems:
        raise RunError("these multi-task runs answer different tasks:", problems + ["compare runs trained on the same task specs"])
    rows: list[dict[str, list[dict]]] = [{} for _ in evs]
    for name in tasks:
        per_task = [load_evaluated(e.run, None if name == e.run.task.name else name) for e in evs]
        for pt, e in zip(per_task, evs):
            pt.name = e.name
        aligned, _ = _align(per_task, align_on)
        for i, r in enumerate(aligned):
            rows[i][name] = r
    combos = [combine(tasks, r) for r in rows]
    lines = [(line["label"], [_entry(c["table"][k]["rate"], c["table"][k]["num"], c["table"][k]["den"]) for c in combos])
             for k, line in enumerate(combos[0]["table"])]
    out = [_table("All tasks", names, lines, combined_note(combos[0]))]
    for sname, first in combos[0]["subsets"].items():
        lines = [(f"{line['task']} · {line['label']} ({line['metric']})",
                  [_entry(c["subsets"][sname][k]["rate"], c["subsets"][sname][k]["num"], c["subsets"][sname][k]["den"])
                   for c in combos]) for k, line in enumerate(first)]
        out.append(_table(f"Subset {sname}", names, lines))
    for name, task in tasks.items():
        if name == evs[0].run.task.name:
            continue
        results = [assemble_from_rows(task, r[name]) for r in rows]
        keyed = [{x["key"]: x for x in key_metrics(task.kind, m)} for m in results]
        order = list(dict.fromkeys(k for d in keyed for k in d))
        out.append(_table(f"Overall: {name}", names, [(next(d[k]["name"] for d in keyed if k in d), [d.get(k) for d in keyed])
                                                      for k in order]))
    return out


def _describe(e: Evaluated) -> dict:
    return {"name": e.name, "dir": str(e.run.dir), "method": e.run.method, "model": e.run.config.get("model"),
            "data": e.metrics.get("data"), "fingerprint": e.metrics.get("fingerprint", {}).get("sha256")}


def model_size(run: Run) -> int:
    """Bytes on disk of model/ (what a deployment ships)."""
    return sum(p.stat().st_size for p in run.model_dir.rglob("*") if p.is_file())


def find_runs(paths: list) -> tuple[list[Path], list[str]]:
    """Runs among ``paths``: a run folder itself, or the run folders directly inside a folder.
    Returns the runs and a note for every folder skipped (not a run, or not evaluated)."""
    found, skipped = [], []
    for p in map(Path, paths):
        candidates = [p] if (p / "config.yaml").is_file() else sorted(c for c in p.iterdir() if c.is_dir()) if p.is_dir() else []
        if not candidates and not p.is_dir():
            skipped.append(f"{p}: not a directory")
        for c in candidates:
            if not (c / "config.yaml").is_file():
                skipped.append(f"{c}: not a run")
            elif not (c / "metrics.json").is_file():
                skipped.append(f"{c}: not evaluated (classifine eval {c} --data TEST_FILE)")
            else:
                found.append(c)
    return found, skipped


def leaderboard(paths: list) -> dict:
    """All evaluated runs of one task in one table, best first, with cost next to quality."""
    run_dirs, skipped = find_runs(paths)
    if not run_dirs:
        raise RunError("no evaluated runs found", skipped + ["pass run folders, or a folder that holds them"])
    evs = _load_all(run_dirs)
    by_task: dict[tuple, list[str]] = {}
    for e in evs:
        by_task.setdefault((e.run.task.name, e.run.task.kind), []).append(e.name)
    if len(by_task) > 1:
        raise RunError("a leaderboard ranks the runs of one task; these belong to several:",
                       [f"task {name!r} ({kind}): {', '.join(runs)}" for (name, kind), runs in by_task.items()]
                       + ["pass the runs of one task only"])
    unprinted = [e.name for e in evs if not e.metrics.get("fingerprint", {}).get("sha256")]
    if unprinted:
        raise RunError(f"cannot tell which data {', '.join(unprinted)} were evaluated on (no fingerprint in metrics.json)",
                       ["evaluate them again with this version: classifine eval RUN --data TEST_FILE"])
    prints: dict[str, list[str]] = {}
    for e in evs:
        fp = e.metrics.get("fingerprint", {})
        prints.setdefault(fp.get("sha256") or "none", []).append(f"{e.name} ({e.metrics.get('data')}, {fp.get('rows')} rows)")
    if len(prints) > 1:
        raise RunError("refusing to rank runs evaluated on different data:",
                       ["; ".join(group) for group in prints.values()]
                       + ["evaluate every run on the same file: classifine eval RUN --data TEST_FILE"])
    kind = evs[0].run.task.kind
    head, second = HEADLINE[kind], KINDS[kind].ranking
    rows = []
    for e in evs:
        m = e.metrics
        size = model_size(e.run)
        rows.append({"run": e.name, "method": e.run.method, "model": e.run.config.get("model") or "–",
                     head: m[head], "correct": m["correct"], "n": m["n"], second: m[second], "mae": m.get("mae"),
                     "train_seconds": e.run.config.get("train_seconds"), "docs_per_second": m.get("docs_per_second"),
                     "model_bytes": size})
    rows.sort(key=lambda r: (-r[second], -r[head], r["run"]))
    headers = ["#", "run", "method", "model", METRICS[head].header, METRICS[second].header] + (["MAE"] if kind == "ordinal" else []) + \
              ["train time", "docs/s", "model size"]
    table = []
    for i, r in enumerate(rows, 1):
        table.append([str(i), r["run"], r["method"], r["model"], cell(r[head], r["correct"], r["n"]), cell(r[second])]
                     + ([f"{r['mae']:.3f}"] if kind == "ordinal" else [])
                     + [_seconds(r["train_seconds"]), "–" if r["docs_per_second"] is None else f"{r['docs_per_second']:,.0f}",
                        _bytes(r["model_bytes"])])
    return {"task": evs[0].run.task.name, "kind": kind, "data": evs[0].metrics.get("data"), "skipped": skipped,
            "rows": rows, "sections": [{"title": "Leaderboard", "headers": headers, "rows": table,
                                        "note": f"sorted by {METRICS[second].header}; all runs evaluated on the same {rows[0]['n']} rows"}]}


def _seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def to_markdown(result: dict) -> str:
    return render_template("compare.md.j2", c=result)
