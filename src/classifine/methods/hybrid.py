"""``hybrid``: TF-IDF and a language model's embeddings, blended with a weight chosen on validation.

The two parts see a text differently: character n-grams keep every surface form of every row of
the training set (in seconds), a frozen language model knows words the training set never showed
but, on a CPU, sees only as many rows as the budget embeds. Their log-probabilities (logits for
multi-label) are averaged with weight ``w`` on TF-IDF, ``w`` chosen on validation from 0, 0.1, ...,
1 by log-loss, so on validation the blend is never less likely than either part alone (each at its
best temperature, see below; w = 1 is the TF-IDF part, w = 0 the embed part). Log-loss, not
macro-F1: the blend is a probability model, and on a thousand validation rows with a rare class the
argmax metric moved by noise (a weight chosen by validation macro-F1 won 2 points there and lost
1.8 on test; BENCHMARKS.md). The macro-F1 of every weight is recorded beside it.

Each weight's log-loss is read after a temperature fitted to that blend, because the weight should
say which part *ranks* the labels better, not which is better calibrated: the run calibrates the
chosen blend afterwards anyway, and a part's overconfidence would otherwise pull the weight away
from it. That happens systematically to an embed part with tuned layers, whose linear head is
fitted on vectors of rows the layers were trained on (on kocohub its validation temperature was
2.1: raw log-loss chose w = 0.6, 62.27% on test; with the temperature w = 0.4, 63.00%).

Each part is an ordinary run of its method, written by that method under ``model/<part>/model``
and loaded by its own ``Scorer``: the hybrid composes methods through the ``Method`` protocol and
owns only ``hybrid.json`` (the parts, their weight and the validation scores behind it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..core.accel import graph_engine, read_choice, requested
from ..core.data import Examples, sample_rows
from ..core.settings import InferenceSettings, Settings
from ..core.task import TaskSpec
from ..scoring.decision import fit_temperature, probabilities, softmax
from ..scoring.kinds import selection_score
from ..scoring.metrics import log_loss

KINDS = ("single_label", "multi_label", "ordinal")
REFUSED = {"extraction": "a blend of whole-text classifiers cannot name entities: use method sft for extraction"}
NEEDS_MODEL = True
TRAINS = True
SOFT_LABELS = True  # single_label/ordinal heads train on an annotator's probabilities (linear.py)
PARTS = ("tfidf", "embed")   # the first needs no model; the second embeds with --model
WEIGHTS = tuple(i / 10 for i in range(11))
META = "hybrid.json"


class Config(Settings, InferenceSettings):
    tfidf: dict[str, Any] = Field(default_factory=dict)   # settings of the tfidf part (see method tfidf)
    embed: dict[str, Any] = Field(default_factory=dict)   # settings of the embed part (see method embed)
    weight: float | Literal["auto"] = "auto"   # TF-IDF's share of the blend; auto: chosen on validation
    embed_rows: int | None = Field(default=None, ge=2)   # the embed part trains on a stratified sample this size
    reuse_tfidf: str | None = None   # a tfidf run on the same task and training data: its model is copied, not refitted


def _methods():
    from . import build_config, get_method  # the registry imports every method module lazily

    return build_config, get_method


def _part_configs(task: TaskSpec, config: Config) -> dict:
    """Each part's settings, validated by its own method; class_weight and seed come from the hybrid
    unless the part sets them."""
    build_config, get_method = _methods()
    shared = {"class_weight": config.class_weight, "seed": config.seed}
    out = {}
    for part in PARTS:
        values = {**shared, **getattr(config, part)}
        if part == "embed":
            values.setdefault("engine", config.engine)
        out[part] = build_config(get_method(part), part, values, task.label_names)
    return out


def prepare(task: TaskSpec, train: Examples, config: Config, model: str) -> tuple[Config, dict]:
    _, get_method = _methods()
    parts = _part_configs(task, config)
    facts = {}
    for part in PARTS:
        parts[part], facts[part] = get_method(part).prepare(task, train, parts[part], model if part == "embed" else None)
    update = {part: parts[part].model_dump(mode="json") for part in PARTS}
    return config.model_copy(update=update), {**facts.get("embed", {}), "parts": facts}


def _reuse(task: TaskSpec, run_dir: Path, dest: Path) -> dict:
    """Copy the model of an earlier tfidf run (``auto`` fits TF-IDF once for its own try and the
    hybrids), after checking it is one, for this task's labels."""
    import shutil

    from ..core.runs import Run
    from ..errors import ConfigError

    run = Run.load(run_dir)  # a finished run, checked against its manifest
    if run.method != "tfidf" or run.task.label_names != task.label_names:
        raise ConfigError(f"reuse_tfidf: {run_dir} is not a tfidf run of this task",
                          [f"its method is {run.method!r} and its labels {run.task.label_names}; drop reuse_tfidf to fit one"])
    for f in run.model_dir.iterdir():
        if f.is_file() and f.name not in ("decision.json", "inference.json"):  # the hybrid tunes its own
            shutil.copy2(f, dest / f.name)
    return {"reused": str(run_dir), "train_rows": run.config.get("data", {}).get("train_rows"),
            "train_seconds": run.config.get("train_seconds")}


def blend(kind: str, parts: list[np.ndarray], weight: float) -> np.ndarray:
    """``weight`` on the first part's log-probabilities (multi-label: logits), the rest on the second."""
    a, b = (np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12) for p in parts)
    if kind == "multi_label":
        z = weight * np.log(a / (1 - a)) + (1 - weight) * np.log(b / (1 - b))
        return 1 / (1 + np.exp(-z))
    return softmax(weight * np.log(a) + (1 - weight) * np.log(b))


def fit(task: TaskSpec, train: Examples, validation: Examples | None, config: Config, model: str,
        run_dir: Path, progress: bool = True, resume: bool = False) -> dict:
    _, get_method = _methods()
    model_dir = run_dir / "model"
    parts = _part_configs(task, config)
    rows = {"tfidf": train, "embed": sample_rows(task, train, config.embed_rows, config.seed)}
    info = {}
    for part in PARTS:
        (model_dir / part / "model").mkdir(parents=True, exist_ok=True)
        if part == "tfidf" and config.reuse_tfidf:
            info[part] = _reuse(task, Path(config.reuse_tfidf), model_dir / part / "model")
            continue
        info[part] = get_method(part).fit(task, rows[part], validation, parts[part], model if part == "embed" else None,
                                          model_dir / part, progress=progress, resume=resume)
        info[part]["train_rows"] = len(rows[part])
    scores, losses = {}, {}
    weight = 0.5 if config.weight == "auto" else float(config.weight)
    if validation is not None and len(validation):
        probs = [get_method(p).Scorer.load(model_dir / p / "model").predict_proba(validation.texts) for p in PARTS]
        for w in WEIGHTS:
            mixed = blend(task.kind, probs, w)
            scores[w] = selection_score(task, validation.labels, mixed)
            losses[w] = _calibrated_log_loss(task, mixed, validation.labels)
        if config.weight == "auto":
            weight = min(WEIGHTS, key=lambda w: (round(losses[w], 6), abs(w - 0.5)))
    meta = {"parts": list(PARTS), "kind": task.kind, "weight": weight, "chosen_by": "validation log-loss after a temperature",
            "validation_scores": {str(w): round(s, 4) for w, s in scores.items()},
            "validation_log_loss": {str(w): round(v, 5) for w, v in losses.items()}}
    (model_dir / META).write_text(json.dumps(meta, indent=1))
    return {"weight": weight, "validation_scores": meta["validation_scores"],
            "validation_log_loss": meta["validation_log_loss"], "parts": info}


def _calibrated_log_loss(task: TaskSpec, probs: np.ndarray, gold: list) -> float:
    """Validation log-loss of ``probs`` after the temperature that minimises it (see the module doc)."""
    multi, labels = task.kind == "multi_label", task.label_names
    p = np.clip(probs, 1e-12, 1 - 1e-12)
    scores = np.log(p / (1 - p)) if multi else np.log(p)
    targets = (np.array([[lab in g for lab in labels] for g in gold], dtype=np.float64) if multi
               else np.array([labels.index(g) for g in gold]))
    t = fit_temperature(task.kind, scores, targets)
    return log_loss(probabilities(task.kind, scores, t), gold, labels, multi)


class Scorer:
    ENGINES = ("torch", "onnx")   # the embed part's; the TF-IDF part is numpy either way

    def __init__(self, parts: list, weight: float, kind: str):
        self.parts, self.weight, self.kind = parts, weight, "multi_label" if kind == "multi_label" else "single_label"

    @property
    def engine(self) -> str:
        return getattr(self.parts[1], "engine", "torch")

    @classmethod
    def load(cls, model_dir: Path, engine: str | None = None, build: bool = False) -> "Scorer":
        _, get_method = _methods()
        meta = json.loads((Path(model_dir) / META).read_text())
        engine = graph_engine(requested(engine) or read_choice(model_dir)["engine"])
        parts = []
        for part in meta["parts"]:
            scorer, where = get_method(part).Scorer, Path(model_dir) / part / "model"
            # a part with engines (embed) runs on the one chosen for the whole run
            parts.append(scorer.load(where, engine=engine, build=build) if hasattr(scorer, "ENGINES") else scorer.load(where))
        return cls(parts, float(meta["weight"]), meta["kind"])

    def truncation(self, texts: list[str]) -> dict:
        return self.parts[1].truncation(texts) if hasattr(self.parts[1], "truncation") else {}

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return blend(self.kind, [p.predict_proba(texts) for p in self.parts], self.weight)
