"""Reading data files into examples for a task: CSV/TSV, JSONL and Parquet.

Every check names the file, the rows and the fix, and collects all problems of a file before
raising one ``DataError``. Row numbers are 1-based data rows (for CSV, line = row + 1 header line).
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ..errors import DataError
from .task import TaskSpec

log = logging.getLogger("classifine")

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
IMBALANCE_RATIO = 5.0
MAX_LISTED = 8


@dataclass
class Examples:
    """Texts (fields joined) and parsed labels of one split; ``frame`` keeps every original column
    for slices and ids. ``labels`` is None for unlabelled data; else str per row (single_label,
    ordinal) or list[str] per row (multi_label, extraction)."""

    texts: list[str]
    labels: list | None
    frame: pd.DataFrame
    source: str
    warnings: list[str] = field(default_factory=list)
    # soft labels (n_rows, n_labels): an annotator's probabilities, for methods that train on them
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: np.ndarray | list[int], source: str | None = None) -> "Examples":
        idx = list(index)
        return Examples(
            texts=[self.texts[i] for i in idx],
            labels=None if self.labels is None else [self.labels[i] for i in idx],
            frame=self.frame.iloc[idx].reset_index(drop=True),
            source=source or self.source,
            targets=None if self.targets is None else self.targets[idx],
        )


@dataclass
class TaskExamples:
    """Another task of a multi-task run with its data (training.py builds these; the methods that
    declare MULTI_TASK read them)."""

    task: TaskSpec
    train: Examples | None
    validation: Examples | None


def _format(path: Path) -> str:
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}'",
                        ["use .csv, .tsv, .jsonl or .parquet"])
    return fmt


def _check_utf8(path: Path) -> None:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not valid UTF-8",
            [f"undecodable byte 0x{raw[e.start]:02x} on line {line} (byte offset {e.start}): re-save the "
             "file as UTF-8 (e.g. `iconv -f cp949 -t utf-8 in.csv > out.csv` for Korean Windows files)"],
        ) from None


def _checked_format(path: Path, role: str) -> str:
    """The file's format, after checking that it exists and is not empty."""
    if not path.is_file():
        raise DataError(f"{role} file {path} not found", ["check the path (relative paths in a task spec are relative to the spec)"])
    fmt = _format(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty", ["the file has no bytes: write a header row and data rows"])
    return fmt


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a whole file as strings (no NaN guessing: a label 'None' or 'NA' stays a string)."""
    path = Path(path)
    fmt = _checked_format(path, "data")
    if fmt in ("csv", "tsv", "jsonl"):
        _check_utf8(path)
    try:
        if fmt in ("csv", "tsv"):
            frame = pd.read_csv(path, sep="," if fmt == "csv" else "\t", dtype=str, keep_default_na=False)
        elif fmt == "jsonl":
            frame = pd.DataFrame(_read_jsonl(path))
        else:
            frame = pd.read_parquet(path)
    except DataError:
        raise
    except Exception as e:  # pandas/pyarrow raise many types for malformed files
        raise DataError(f"{path} cannot be parsed as {fmt}", [f"{type(e).__name__}: {e}"]) from None
    if len(frame) == 0:
        raise DataError(f"{path} has no data rows", [f"columns found: {list(frame.columns)}; add rows below the header"])
    return frame


def _jsonl_record(line: str) -> tuple[dict | None, str | None]:
    """(record, problem) for one JSONL line; blank lines give (None, None)."""
    if not line.strip():
        return None, None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg})"
    if not isinstance(obj, dict):
        return None, f"expected a JSON object such as {{\"text\": \"...\"}}, found {type(obj).__name__}"
    return obj, None


def _read_jsonl(path: Path) -> list[dict]:
    rows, bad = [], []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            obj, problem = _jsonl_record(line)
            if problem:
                bad.append(f"line {n}: {problem}")
            elif obj is not None:
                rows.append(obj)
    if bad:
        raise DataError(f"{path} has {len(bad)} invalid JSON line(s)", bad[:MAX_LISTED] + ["each line must be one JSON object"])
    return rows


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return str(v)


def join_fields(frame: pd.DataFrame, fields: list[str]) -> list[str]:
    """Join the task's text fields in order, one per line; empty fields are skipped."""
    cols = [frame[f].map(_cell).tolist() for f in fields]
    return [_joined(parts) for parts in zip(*cols)]


def _joined(parts) -> str:
    return "\n".join(p.strip() for p in parts if p and p.strip())


def _rows(indices: list[int]) -> str:
    shown = ", ".join(str(i + 1) for i in indices[:MAX_LISTED])
    return shown + (f" … ({len(indices)} rows)" if len(indices) > MAX_LISTED else "")


def parse_label(task: TaskSpec, value) -> tuple[object, str | None]:
    """Parse one label cell for the task's kind. Returns (label, problem)."""
    if task.kind in ("single_label", "ordinal"):
        if isinstance(value, (list, tuple, np.ndarray)):
            return None, "is a list, but this is a single-label task (set kind: multi_label if rows carry several labels)"
        s = _cell(value).strip()
        if task.kind == "ordinal" and s not in task.labels:
            try:  # "3.0" in a numeric column means the label "3"
                f = float(s)
                if f.is_integer() and str(int(f)) in task.labels:
                    s = str(int(f))
            except ValueError:
                pass
        if s.startswith("[") or (task.label_separator in s and s not in task.labels):
            return None, f"{s!r} looks like several labels, but this is a {task.kind} task (set kind: multi_label)"
        return s, None
    # multi_label and extraction hold lists
    if isinstance(value, (list, tuple, np.ndarray)):
        items = list(value)
    else:
        s = _cell(value).strip()
        if s.startswith("["):
            try:
                items = json.loads(s)
            except json.JSONDecodeError as e:
                return None, f"{s[:40]!r} is not a valid JSON list ({e.msg})"
        elif task.kind == "extraction":
            return None, f"{s[:40]!r} is not a JSON list of strings (write e.g. [\"Samsung Electronics\", \"LG\"], or [] for none)"
        else:
            items = [x for x in s.split(task.label_separator)] if s else []
    if not all(isinstance(x, str) for x in items):
        return None, "must be a list of strings"
    return [x.strip() for x in items if x.strip()], None


def load_examples(task: TaskSpec, path: str | Path, require_labels: bool = True) -> Examples:
    """Read a file and check it against the task: columns, empty texts, labels."""
    path = Path(path)
    frame = read_table(path)
    frame.columns = [str(c) for c in frame.columns]
    needed = list(task.text) + ([task.label_column] if require_labels else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        close = {c: [f for f in frame.columns if f.lower() == c.lower()] for c in missing}
        hints = "; ".join(f"'{c}' may be '{close[c][0]}'" for c in missing if close[c])
        raise DataError(
            f"{path} is missing column(s) {missing}",
            [f"columns found: {list(frame.columns)}",
             f"rename the columns in the file or set text/label_column in the task spec{'; ' + hints if hints else ''}"],
        )
    problems: list[str] = []
    texts = join_fields(frame, task.text)
    empty = [i for i, t in enumerate(texts) if not t]
    if empty:
        problems.append(f"empty text in row(s) {_rows(empty)} (all of {task.text} are blank): fill them in or drop those rows")
    labels = None
    has_labels = task.label_column in frame.columns
    if has_labels:
        labels, label_problems = _parse_labels(task, frame[task.label_column].tolist())
        problems += label_problems
    elif require_labels:  # pragma: no cover - caught above as a missing column
        pass
    if problems:
        raise DataError(f"{path} does not fit task '{task.name}' ({len(problems)} problem(s)):", problems)
    return Examples(texts=texts, labels=labels, frame=frame, source=str(path))


def _parse_labels(task: TaskSpec, cells: list) -> tuple[list, list[str]]:
    labels, problems = [], []
    wrong_kind: dict[str, list[int]] = {}
    unknown: Counter = Counter()
    empty: list[int] = []
    for i, cell in enumerate(cells):
        label, problem = parse_label(task, cell)
        if problem:
            wrong_kind.setdefault(problem, []).append(i)
        elif task.kind in ("single_label", "ordinal"):
            if label == "":
                empty.append(i)
            elif label not in task.labels:
                unknown[label] += 1
        elif task.kind == "multi_label":
            unknown.update(x for x in label if x not in task.labels)
        labels.append(label)
    for problem, rows in wrong_kind.items():
        problems.append(f"label in row(s) {_rows(rows)} {problem}")
    if empty:
        problems.append(f"empty label in row(s) {_rows(empty)}: label every row, or drop the column for prediction-only data")
    if unknown:
        listed = ", ".join(f"{k!r} ({n})" for k, n in unknown.most_common(MAX_LISTED))
        problems.append(f"unknown label(s) in column '{task.label_column}': {listed}; the task's labels are "
                        f"{task.label_names}: add them to 'labels' in the task spec or fix the rows")
    return labels, problems


def stratify_key(task: TaskSpec, labels: list) -> list[str]:
    if task.kind in ("single_label", "ordinal"):
        return list(labels)
    return [x[0] if x else "" for x in labels]


def sample_rows(task: TaskSpec, examples: Examples, rows: int | None, seed: int = 13) -> Examples:
    """A stratified sample of ``rows`` rows (by the whole label set), or all of them."""
    if rows is None or rows >= len(examples):
        return examples
    from sklearn.model_selection import train_test_split

    strata = [json.dumps(y) if isinstance(y, list) else y for y in examples.labels]
    counts = Counter(strata)
    stratify = strata if min(counts.values()) >= 2 and rows >= len(counts) else None
    keep, _ = train_test_split(np.arange(len(examples)), train_size=rows, stratify=stratify, random_state=seed)
    return examples.subset(sorted(int(i) for i in keep))


def split_validation(task: TaskSpec, examples: Examples, fraction: float = 0.1, seed: int = 13) -> tuple[Examples, Examples]:
    """Hold out a stratified validation split when the user gave none."""
    from sklearn.model_selection import train_test_split

    n = len(examples)
    n_val = max(1, int(round(n * fraction)))
    if n < 4:
        raise DataError(f"{examples.source} has only {n} rows", ["give at least 4 labelled rows, or a separate validation file"])
    idx = np.arange(n)
    key = stratify_key(task, examples.labels)
    counts = Counter(key)
    # stratification needs two of each class and at least one row per class in the held-out part
    can_stratify = min(counts.values()) >= 2 and n_val >= len(counts)
    train_idx, val_idx = train_test_split(idx, test_size=n_val, random_state=seed,
                                          stratify=key if can_stratify else None)
    return (examples.subset(sorted(train_idx), examples.source),
            examples.subset(sorted(val_idx), f"{examples.source} (held-out validation)"))


def check_trainable(task: TaskSpec, train: Examples, validation: Examples, held_out: bool) -> None:
    """The preconditions every method has on its training data, checked before anything is written
    (all problems at once): two classes to tell apart, no class that a held-out split leaves
    unlearnable, no text field blank in a whole split."""
    problems = []
    for ex in (train,) if held_out else (train, validation):
        blank = [f for f in task.text if f in ex.frame.columns and not any(str(v).strip() for v in ex.frame[f])]
        if blank and len(ex):
            problems.append(f"{ex.source}: text field(s) {blank} are blank in every row: check the column names in "
                            "the spec's text, or drop the empty field from it")
    if task.kind in ("single_label", "ordinal"):
        counts = Counter(train.labels + (validation.labels if held_out else []))
        if len(counts) < 2:
            problems.append(f"{train.source}: every training row has the label {sorted(counts)}: a classifier needs at "
                            "least two labels present; add rows of the other labels")
        once = sorted(lab for lab, c in counts.items() if c == 1)
        if once and held_out:
            problems.append(f"label(s) {once} occur in a single training row, which the held-out validation split "
                            "leaves either unlearned or unvalidated: add rows for them, merge them into another "
                            "label, or pass a separate --validation file")
    elif task.kind == "multi_label" and not any(train.labels):
        problems.append(f"{train.source}: no training row has any label: a multi-label classifier needs positives")
    if problems:
        raise DataError("the training data cannot train this task:", problems)


def label_stats(task: TaskSpec, examples: Examples) -> dict:
    """Counts per label and an imbalance warning; the warnings are also kept on ``examples``."""
    if task.kind == "extraction":
        n_ent = [len(x) for x in examples.labels]
        return {"rows": len(examples), "entities": int(sum(n_ent)), "rows_without_entities": int(sum(1 for k in n_ent if k == 0))}
    counts: Counter = Counter()
    for y in examples.labels:
        counts.update(y if isinstance(y, list) else [y])
    per_label = {lab: int(counts.get(lab, 0)) for lab in task.labels}
    stats = {"rows": len(examples), "per_label": per_label}
    absent = [lab for lab, c in per_label.items() if c == 0]
    present = [c for c in per_label.values() if c > 0]
    examples.warnings = []  # recomputed, not accumulated, when called again
    if absent:
        examples.warnings.append(f"{examples.source}: labels with no rows: {absent}; the model cannot learn them")
    if present and max(present) / min(present) >= IMBALANCE_RATIO:
        rare = min((c, lab) for lab, c in per_label.items() if c > 0)
        examples.warnings.append(
            f"{examples.source}: labels are imbalanced (largest/smallest = {max(present) / min(present):.1f}, "
            f"rarest '{rare[1]}' has {rare[0]} rows); class_weight: balanced (the default) compensates")
    for w in examples.warnings:
        log.warning(w)
    stats["imbalance_ratio"] = round(max(present) / min(present), 2) if present else None
    return stats


def iter_records(path: str | Path, batch_size: int = 256) -> Iterator[list[dict]]:
    """Stream a file in batches of records so memory stays flat in the file's size."""
    path = Path(path)
    fmt = _checked_format(path, "input")
    if fmt in ("csv", "tsv"):
        try:
            for chunk in pd.read_csv(path, sep="," if fmt == "csv" else "\t", dtype=str,
                                     keep_default_na=False, chunksize=batch_size, encoding="utf-8"):
                if len(chunk):
                    yield chunk.to_dict("records")
        except UnicodeDecodeError:
            _check_utf8(path)
            raise
    elif fmt == "jsonl":
        batch: list[dict] = []
        try:
            with path.open(encoding="utf-8", errors="strict") as f:
                for n, line in enumerate(f, 1):
                    obj, problem = _jsonl_record(line)
                    if problem:
                        raise DataError(f"{path} line {n}: {problem}", ["each line must be one JSON object"])
                    if obj is None:
                        continue
                    batch.append(obj)
                    if len(batch) == batch_size:
                        yield batch
                        batch = []
        except UnicodeDecodeError:
            _check_utf8(path)  # raises a DataError with the line number
            raise
        if batch:
            yield batch
    else:
        import pyarrow.parquet as pq

        for rb in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield rb.to_pylist()


def records_to_texts(task: TaskSpec, records: list[dict], source: str = "input") -> list[str]:
    """Join the text fields of records (prediction input); missing fields are an error, not blanks."""
    missing = sorted({f for r in records for f in task.text if f not in r})
    if missing:
        found = sorted({k for r in records for k in r})
        raise DataError(f"{source}: records lack text field(s) {missing}",
                        [f"fields found: {found}; each record needs {task.text}"])
    # no DataFrame here: building one cost 0.44 ms a call (0.002 ms without), the largest part of the
    # server's own time per request
    return [_joined(_cell(r[f]) for f in task.text) for r in records]
