"""The annotation folder: what ``classifine annotate`` writes and ``train``/``review`` read.

``AnnotationFolder`` owns the format; nothing else reads or writes these files:

- ``annotations.jsonl``: one line per input row, in input order: the input record, then ``row``
  (0-based input row), ``label`` (None when the answer was invalid), ``probabilities`` (label ->
  probability; None for extraction), ``confidence``, ``annotator``, ``valid``, ``raw`` (the
  annotator's answer text) and, after a review, ``reviewed_label`` and ``annotator_label``.
- ``annotation.json``: the identity of the job (task, input, annotator, prompt hash), settings,
  counts, invalid rate and token usage.
- ``task.yaml``: the task spec (data paths left out), so review and train need no other argument.
- ``cache.sqlite``: answers by content hash (``annotation.cache``), so nothing is asked twice.

Rows are appended in order and flushed to disk per batch; after a crash the folder holds complete
lines up to some row (a torn last line is cut on resume), so resuming continues at that row and
the output equals an uninterrupted run's.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd

from ..errors import DataError
from .data import Examples, _parse_labels, join_fields
from .runs import atomic_write_json, atomic_write_text
from .task import TaskSpec, load_task

log = logging.getLogger("classifine")

ROWS = "annotations.jsonl"
META = "annotation.json"
CACHE = "cache.sqlite"
TASK = "task.yaml"
# the fields annotate adds to an input record; an input column of the same name is kept as input_<name>
FIELDS = ("row", "label", "probabilities", "confidence", "annotator", "valid", "raw",
          "reviewed_label", "annotator_label")


class AnnotationFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @staticmethod
    def holds(path: str | Path) -> bool:
        return (Path(path) / META).is_file()

    @property
    def rows_path(self) -> Path:
        return self.path / ROWS

    @property
    def cache_path(self) -> Path:
        return self.path / CACHE

    def meta(self) -> dict:
        try:
            return json.loads((self.path / META).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{self.path} is not an annotation folder (no {META})",
                            ["point to the --out folder of `classifine annotate`"]) from None

    def write_meta(self, meta: dict) -> None:
        atomic_write_json(self.path / META, meta)

    def write_task(self, task: TaskSpec) -> None:
        atomic_write_text(self.path / TASK, task.to_yaml())

    def task(self) -> TaskSpec:
        """The task the rows were annotated for (saved with them: review needs no spec argument)."""
        self.meta()  # a clear error for a folder that is not an annotation folder
        return load_task(self.path / TASK)

    def open(self, identity: dict, overwrite: bool = False) -> int:
        """Prepare the folder for ``identity`` (task, input, annotator, prompt) and return the number
        of rows already annotated. A folder of another job is refused unless ``overwrite``; the
        answer cache is kept either way (its keys are the requests themselves)."""
        self.path.mkdir(parents=True, exist_ok=True)
        if (self.path / META).is_file():
            old = self.meta().get("identity")
            if old != identity:
                if not overwrite:
                    differ = sorted(k for k in set(old or {}) | set(identity) if (old or {}).get(k) != identity.get(k))
                    raise DataError(f"{self.path} holds annotations of another job (differs in: {', '.join(differ)})",
                                    ["use another --out folder, or --overwrite to replace them (cached answers are reused)"])
                self.rows_path.unlink(missing_ok=True)
                (self.path / META).unlink()
        elif self.rows_path.exists() and not overwrite:
            raise DataError(f"{self.path} has {ROWS} but no {META}",
                            ["use another --out folder, or --overwrite to replace it"])
        elif self.rows_path.exists():
            self.rows_path.unlink()
        return self._complete_rows()

    def _complete_rows(self) -> int:
        """Count complete lines; cut a torn last line (a kill during a write) so appends stay aligned."""
        if not self.rows_path.exists():
            return 0
        data = self.rows_path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            with self.rows_path.open("r+b") as f:
                f.truncate(end)
        return data[:end].count(b"\n")

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
        with self.rows_path.open("ab") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        if not self.rows_path.exists():
            raise DataError(f"{self.path} has no annotations yet ({ROWS} is missing)",
                            ["run `classifine annotate` with this --out folder first"])
        with self.rows_path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def rewrite(self, records: list[dict]) -> None:
        """Replace every row at once (a review applied); the temporary file makes it atomic."""
        tmp = self.rows_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, self.rows_path)


def record(input_record: dict, **fields) -> dict:
    """An output line: the input record (a clashing column kept as ``input_<name>``), then ``fields``."""
    out = {(f"input_{k}" if k in FIELDS else k): v for k, v in input_record.items()}
    out.update(fields)
    return out


def final_label(rec: dict):
    """The label a row trains with: the reviewed one where a person gave it, else the annotator's."""
    reviewed = rec.get("reviewed_label")
    return rec.get("label") if reviewed in (None, "") else reviewed


def load_annotated(task: TaskSpec, folder: str | Path, min_confidence: float | None = None,
                   soft: bool = False) -> Examples:
    """Training examples from an annotation folder: valid rows (and reviewed ones) at or above
    ``min_confidence``; with ``soft`` the annotator's probabilities ride along as ``targets``
    (rows a person reviewed get their reviewed label as a one-hot target)."""
    af = AnnotationFolder(folder)
    meta = af.meta()
    if meta.get("task", {}).get("name") not in (None, task.name):
        raise DataError(f"{folder} was annotated for task {meta['task']['name']!r}, not {task.name!r}",
                        ["train with the task the folder was annotated for, or annotate again for this task"])
    if soft and task.kind not in ("single_label", "ordinal"):
        raise DataError(f"soft labels are for single_label and ordinal tasks, not {task.kind}",
                        ["drop --soft-labels; --min-confidence keeps the confident hard labels"])
    kept, dropped = [], {"invalid": 0, "below_confidence": 0}
    for rec in af.read():
        reviewed = rec.get("reviewed_label") not in (None, "")
        if not reviewed and not rec.get("valid"):
            dropped["invalid"] += 1
            continue
        conf = rec.get("confidence")
        if not reviewed and min_confidence and (conf is None or conf < min_confidence):
            dropped["below_confidence"] += 1
            continue
        kept.append(rec)
    if not kept:
        raise DataError(f"{folder}: no annotated row is usable for training",
                        [f"{dropped['invalid']} invalid, {dropped['below_confidence']} below --min-confidence "
                         f"{min_confidence}: lower --min-confidence or review the rows"])
    frame = pd.DataFrame(kept)
    missing = [c for c in task.text if c not in frame.columns]
    if missing:
        raise DataError(f"{folder}: the annotated rows lack text field(s) {missing}", [f"the task reads {task.text}"])
    frame[task.label_column] = [final_label(r) for r in kept]

    labels, problems = _parse_labels(task, frame[task.label_column].tolist())
    if problems:
        raise DataError(f"{folder} does not fit task '{task.name}':", problems)
    ex = Examples(texts=join_fields(frame, task.text), labels=labels, frame=frame, source=f"{folder} (annotations)")
    if soft:
        import numpy as np

        names = task.label_names
        targets = np.zeros((len(kept), len(names)))
        for i, rec in enumerate(kept):
            probs = rec.get("probabilities") or {}
            if rec.get("reviewed_label") not in (None, "") or not probs:
                targets[i, names.index(labels[i])] = 1.0
            else:
                targets[i] = [float(probs.get(n, 0.0)) for n in names]
                targets[i] /= max(targets[i].sum(), 1e-12)
        ex.targets = targets
    if any(dropped.values()):
        log.warning(f"{folder}: {len(kept)} annotated rows kept; dropped {dropped['invalid']} invalid and "
                           f"{dropped['below_confidence']} below confidence {min_confidence}")
    return ex


def provenance(folder: str | Path, examples: Examples) -> dict:
    """Where a run's training labels came from, for its card."""
    meta = AnnotationFolder(folder).meta()
    reviewed = int(sum(1 for v in examples.frame.get("reviewed_label", pd.Series(dtype=object)).tolist()
                       if v not in (None, "") and v == v))
    return {"annotator": meta.get("annotator"), "rows_annotated": meta.get("counts", {}).get("rows"),
            "rows_used": len(examples), "rows_reviewed_by_people": reviewed,
            "invalid_rate": meta.get("counts", {}).get("invalid_rate"), "agreement": _gold_agreement(meta),
            "soft_labels": examples.targets is not None}


def _gold_agreement(meta: dict) -> dict | None:
    """The headline agreement with human labels that ``classifine review --gold`` recorded."""
    gold = (meta.get("review") or {}).get("gold")
    if not gold:
        return None
    m = gold.get("metrics", {})
    keys = ("accuracy", "macro_f1", "subset_accuracy", "micro_f1")
    out = {k: round(float(m[k]), 4) for k in keys if k in m}
    if "cohen_kappa" in gold:
        out["cohen_kappa"] = round(float(gold["cohen_kappa"]), 4)
    return {**out, "rows": gold.get("rows")}
