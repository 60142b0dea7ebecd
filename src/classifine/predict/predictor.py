"""Load any run and predict: records in, answer + a probability for every label out.

Methods only produce probabilities (``Scorer.predict_proba``); turning them into answers is the
same for every method (``scoring/decision.py``), with what was tuned on validation at training time.
That lives in ``model/decision.json``, which this module alone writes and reads: class offsets
(single_label) and a calibrating temperature; per-label thresholds and optional top_k (multi_label).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from ..core.accel import CHECKED, check_engine, read_choice, requested
from ..core.data import records_to_texts
from ..core.runs import Run, atomic_write_json
from ..errors import ConfigError
from ..methods import get_method
from ..scoring.decision import adjust, decide
from .checked import Check

DECISION = "decision.json"
BLANK = {"error": "blank record: every text field is empty, nothing to classify"}


class Predictor:
    def __init__(self, run: Run, scorer, decision: dict, task=None, check: Check | None = None):
        self.run, self.task, self.scorer, self.decision = run, task or run.task, scorer, decision
        self.check = check  # the onnx-int8-checked engine: fp32 answers for rows near a decision boundary

    @classmethod
    def load(cls, run_dir: str | Path | Run, scorer=None, engine: str | None = None, build: bool = False,
             task: str | None = None) -> "Predictor":
        """The run's own scorer (its method's ``Scorer``), or ``scorer(run)`` when given (vLLM).
        ``engine`` overrides the inference engine the run chose (methods whose Scorer has
        ``ENGINES``; core/accel.py); ``build`` lets it write a missing graph into the run.
        ``task`` names another task of a multi-task run (``Run.tasks``)."""
        run = run_dir if isinstance(run_dir, Run) else Run.load(run_dir)
        spec = run.task_named(task)  # an unknown task fails before the model is loaded
        Scorer = get_method(run.method).Scorer
        check = None
        if scorer is not None:
            scorer = scorer(run)
        elif hasattr(Scorer, "ENGINES"):
            choice = read_choice(run.model_dir)
            if (requested(engine) or choice["engine"]) == CHECKED:
                exact = choice.get("check_engine", "torch")
                check = Check(_check_margin(choice), lambda: Scorer.load(run.model_dir, engine=exact))
            scorer = Scorer.load(run.model_dir, engine=engine, build=build)
        else:
            if engine not in (None, "auto", "torch"):
                check_engine(engine)
                raise ConfigError(f"{run.method} runs have one inference engine", [f"drop --engine {engine}"])
            scorer = Scorer.load(run.model_dir)
        own = cls(run, scorer, read_decision(run.model_dir), check=check)
        return own if spec.name == run.task.name else own.for_task(spec.name)

    def for_task(self, name: str) -> "Predictor":
        """The predictor of another task of this multi-task run, sharing the loaded model."""
        spec = self.run.task_named(name)
        if spec.name == self.task.name:
            return self
        if not hasattr(self.scorer, "for_task"):
            raise ConfigError(f"{self.run.method} runs answer one task", [f"this run's task: {self.run.task.name}"])
        return Predictor(self.run, self.scorer.for_task(spec), read_decision(self.run.model_dir, spec.name), spec)

    def tasks(self) -> dict[str, "Predictor"]:
        """A predictor per task of the run (one for a single-task run), all on the one loaded model."""
        return {name: self.for_task(name) for name in self.run.tasks}

    @property
    def labels(self) -> list[str]:
        return self.task.label_names

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        probs = adjust(self.task.kind, np.asarray(self.scorer.predict_proba(texts), dtype=np.float64), self.decision)
        return self.check.mend(self.task.kind, self.labels, self.decision, texts, probs) if self.check else probs

    def format(self, probs: np.ndarray) -> list[dict]:
        answers = decide(self.task.kind, self.labels, probs, self.decision)
        out = []
        for answer, row in zip(answers, probs):
            item: dict = {}
            if self.task.kind == "multi_label":
                item["labels"] = answer
            else:
                item["label"] = answer
                item["confidence"] = round(float(row.max()), 6)
            item["probabilities"] = {lab: round(float(p), 6) for lab, p in zip(self.labels, row)}
            out.append(item)
        return out

    def predict_texts(self, texts: list[str]) -> list[dict]:
        """One answer per text; a blank text is an error of that record (``{"error": ...}``), never
        classified as if it were text."""
        texts = list(texts)
        blank = {i for i, t in enumerate(texts) if not t.strip()}
        if blank:
            kept = iter(self.predict_texts([t for i, t in enumerate(texts) if i not in blank]))
            return [dict(BLANK) if i in blank else next(kept) for i in range(len(texts))]
        if not texts:
            return []
        if self.task.kind == "extraction":
            return [self.format_entities(found) for found in self.scorer.extract(list(texts))]
        probs = self.predict_proba(texts)
        out = self.format(probs)
        for item, bad in zip(out, getattr(self.scorer, "last_invalid", None) or []):
            if bad:  # free generation named no label: say so rather than pass off a guess
                item["invalid"] = True
        return out

    def format_entities(self, found: list[dict]) -> dict:
        """Entities at or above the spec's min_confidence; the rest stay visible as candidates."""
        keep = [e for e in found if e["confidence"] >= self.task.min_confidence]
        return {self.task.entity: [e["name"] for e in keep], "entities": keep,
                "below_min_confidence": [e for e in found if e["confidence"] < self.task.min_confidence]}

    def predict(self, records: Iterable[dict]) -> list[dict]:
        records = list(records)
        return self.predict_texts(records_to_texts(self.task, records))


def predict_file(run_dir: str | Path, input_path: str | Path, output_path: str | Path, batch_size: int = 256,
                 progress: bool = True, predictor: Predictor | None = None, overwrite: bool = False,
                 sync_seconds: float = 2.0, task: str | None = None) -> dict:
    """Stream ``input_path`` in batches and write one prediction per record (JSONL or CSV).

    Memory stays flat in the input's size. Finished rows survive a crash or Ctrl-C, and running the
    same command again continues where it stopped (``resumable.py``); a different input or run is
    refused unless ``overwrite``. The output file appears, complete, only at the end.
    """
    from .resumable import predict_file as _predict_file

    predictor = predictor or Predictor.load(run_dir, task=task)
    return _predict_file(predictor, input_path, output_path, batch_size=batch_size, progress=progress,
                         overwrite=overwrite, sync_seconds=sync_seconds)


def _check_margin(choice: dict) -> float:
    margin = choice.get("check_margin")
    if margin is None:
        raise ConfigError(f"engine {CHECKED} needs the run's check margin, and this run has none",
                          ["it is measured on validation when a run chooses its engine (engine: auto or "
                           f"{CHECKED}, 200+ validation rows)", "--engine onnx-int8 runs int8 without the check"])
    return float(margin)


def _decision_path(model_dir: Path, task: str | None) -> Path:
    # the run's own task at model/decision.json; each other task of a multi-task run in model/tasks/<name>/
    return Path(model_dir) / DECISION if task is None else Path(model_dir) / "tasks" / task / DECISION


def save_decision(model_dir: Path, decision: dict, task: str | None = None) -> None:
    path = _decision_path(model_dir, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, decision)


def read_decision(model_dir: Path, task: str | None = None) -> dict:
    """What was tuned on validation and is still to be applied; empty for runs without (zero-shot
    runs, extraction). Entries listed in ``folded`` are already applied by the model's own
    classifier layer (head runs, methods/head.py ``fold_decision``) and are left out, so they are
    never applied twice; the file keeps them for the record. ``task``: another task of a multi-task run."""
    path = _decision_path(model_dir, task)
    decision = json.loads(path.read_text()) if path.exists() else {}
    return {k: v for k, v in decision.items() if k not in set(decision.get("folded") or ())}


def batched_proba(predictor: Predictor, texts: list[str], batch_size: int = 256, progress: bool = True) -> np.ndarray:
    from tqdm.auto import tqdm

    parts = []
    for i in tqdm(range(0, len(texts), batch_size), desc="evaluate", unit="batch", disable=not progress):
        parts.append(predictor.predict_proba(texts[i:i + batch_size]))
    return np.concatenate(parts) if parts else np.zeros((0, len(predictor.labels)))
