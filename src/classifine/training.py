"""``classifine.train``: the one entry point every method goes through. Reads top to bottom:
setup (spec, settings, data) → train → save (run directory) → tune decisions on validation →
evaluate on the test data. ``zero_shot`` is the same path with the ``zeroshot`` method."""
from __future__ import annotations

import json
import logging
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from .core.accel import reuse_outputs
from .core.annotations import AnnotationFolder, load_annotated, provenance
from .core.data import Examples, check_trainable, label_stats, load_examples, split_validation
from .core.models import describe, resolve
from .core.runs import (Run, atomic_write_text, atomic_write_yaml, barrier, fit_dir, hardware, library_versions,
                        prepare_run_dir, process_rank, run_lock, write_manifest)
from .core.task import TaskSpec, as_task
from .errors import ConfigError, DataError
from .evaluation.report import evaluate
from .methods import build_config, check_kind, get_method
from .predict.engine import choose_engine
from .predict.predictor import Predictor, batched_proba, read_decision, save_decision
from .scoring.decision import tune_decision

log = logging.getLogger("classifine")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover
        pass


def _path(arg: str | Path | None, task: TaskSpec, split: str) -> Path | None:
    return Path(arg) if arg is not None else task.data_path(split)


def _training_examples(task: TaskSpec, path: Path, module, method: str, min_confidence: float | None,
                       soft: bool) -> tuple[Examples, dict | None]:
    """The training examples, and where their labels came from when an annotator gave them."""
    if not AnnotationFolder.holds(path):
        if min_confidence is not None or soft:
            raise ConfigError("--min-confidence and --soft-labels apply to annotation folders",
                              [f"{path} is a data file: pass the --out folder of `classifine annotate` as --train"])
        return load_examples(task, path), None
    if soft and not getattr(module, "SOFT_LABELS", False):
        raise ConfigError(f"method {method} does not train on soft labels",
                          ["use tfidf, embed or hybrid for --soft-labels, or drop it (hard labels above --min-confidence)"])
    ex = load_annotated(task, path, min_confidence, soft)
    return ex, provenance(path, ex)


def train(task: TaskSpec | str | Path | dict, method: str, out: str | Path, model: str | None = None,
          train: str | Path | None = None, validation: str | Path | None = None, test: str | Path | None = None,
          config: dict[str, Any] | None = None, overwrite: bool = False, resume: bool = False,
          progress: bool = True, choose_engine_now: bool = True, min_confidence: float | None = None,
          soft_labels: bool = False) -> Run:
    """Train ``method`` on ``task`` into ``out``. ``choose_engine_now=False`` leaves the run on
    PyTorch (``auto`` measures the engines of its winning run only). ``train`` may be an annotation
    folder (``classifine annotate``): its valid rows at or above ``min_confidence`` train, with the
    annotator's probabilities as targets when ``soft_labels`` (methods that declare SOFT_LABELS)."""
    # --- setup: everything the user gave is checked before any training starts ---
    task = as_task(task)
    module = get_method(method)
    check_kind(module, method, task.kind)
    settings = build_config(module, method, dict(config or {}), task.label_names)
    if module.NEEDS_MODEL and not model:
        raise ConfigError(f"method {method} needs a model", ["pass --model, e.g. --model gemma-3-270m or --model minilm-l6"])
    if not module.NEEDS_MODEL and model:
        raise ConfigError(f"method {method} uses no pretrained model", ["drop --model"])
    if model:
        resolve(model)  # an unknown or missing model fails before anything is read or written
    train_path = val_path = labelled_by = None
    train_ex = val_ex = None
    if module.TRAINS:
        train_path = _path(train, task, "train")
        if train_path is None:
            raise DataError("no training data", ["pass --train FILE or set data.train in the task spec"])
        train_ex, labelled_by = _training_examples(task, train_path, module, method, min_confidence, soft_labels)
        val_path = _path(validation, task, "validation")
        if val_path is not None:
            val_ex = load_examples(task, val_path)
        else:
            train_ex, val_ex = split_validation(task, train_ex, seed=settings.seed)
        check_trainable(task, train_ex, val_ex, held_out=val_path is None)
    test_path = _path(test, task, "test")
    test_ex = load_examples(task, test_path) if test_path is not None else None
    stats = {"train": label_stats(task, train_ex), "validation": label_stats(task, val_ex)} if train_ex else {}
    # settings read from the data (max_length, answer budget), checked before anything is written
    settings, budget = module.prepare(task, train_ex, settings, model)
    set_seed(settings.seed)
    rank, _ = process_rank()  # under `accelerate launch`, only rank 0 writes the run directory
    # one train per run folder at a time, held until the run is complete (released even on SIGKILL)
    with run_lock(out) if rank == 0 else nullcontext():
        if rank == 0:
            run_dir = prepare_run_dir(out, overwrite=overwrite, resume=resume)
            frozen = task.model_copy(update={"data": task.data.model_copy(update={
                "train": str(train_path.resolve()) if train_path else None,
                "validation": str(val_path.resolve()) if val_path else None,
                "test": str(test_path.resolve()) if test_path else None})})
            atomic_write_text(run_dir / "task.yaml", frozen.to_yaml())
        barrier()
        run_dir = Path(out)

        # frozen-model outputs computed while fitting (the validation vectors) serve the tuning pass;
        # the engine choice after this block times real forward passes
        with reuse_outputs():
            # --- train ---
            t0 = time.time()
            with fit_dir(run_dir) as where:
                info = module.fit(task, train_ex, val_ex, settings, model, where, progress=progress, resume=resume)
            train_seconds = time.time() - t0
            if rank != 0:
                barrier()  # rank 0 saves, tunes and evaluates
                return Run.load(run_dir)

            # --- save: configuration first, so the run loads; then decisions tuned on validation ---
            data = {"test": str(test_path) if test_path else None, "test_rows": len(test_ex) if test_ex else 0}
            if module.TRAINS:
                data = {"train": str(train_path), "validation": str(val_path) if val_path else "held out from train",
                        **data, "train_rows": len(train_ex), "validation_rows": len(val_ex)}
            record = {
                "method": method, "model": model, "model_info": describe(model) if model else None,
                "config": settings.model_dump(mode="json"), "seed": settings.seed, "data": data,
                "label_stats": stats, "budget": budget, **({"annotations": labelled_by} if labelled_by else {}),
                "warnings": (train_ex.warnings + val_ex.warnings) if train_ex else [],
                "train_seconds": round(train_seconds, 2), "info": info, "versions": library_versions(), "hardware": hardware(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_yaml(run_dir / "config.yaml", record)
            run = Run.load(run_dir, partial_ok=True)
            predictor = Predictor.load(run, engine="torch")  # tuned on fp32 PyTorch; the engine is chosen after
            predictor.decision = {}  # decisions are tuned on the model's own probabilities, never on adjusted ones
            if task.kind != "extraction" and val_ex is not None:
                # class_weight none = no imbalance handling at all, so no class offsets either
                decision = tune_decision(task, batched_proba(predictor, val_ex.texts, progress=False), val_ex.labels,
                                         calibrate=getattr(settings, "calibrate", True), offsets=settings.class_weight != "none")
                fold = getattr(module, "fold_decision", None)
                if fold is not None:  # head runs: into the classifier layer, so plain transformers answers the same
                    decision = fold(run.model_dir, task, decision)
                save_decision(run.model_dir, decision)
                predictor = Predictor.load(run, engine="torch") if fold is not None else predictor
                predictor.decision = read_decision(run.model_dir)
        # the inference engine, measured on validation against fp32 PyTorch (predict/engine.py)
        wanted = getattr(settings, "engine", "torch") if choose_engine_now else "torch"
        if choose_engine(run, val_ex, wanted).get("engine", "torch") != "torch":
            predictor = Predictor.load(run)
        write_manifest(run_dir)  # last of the run's own files: from here on the run checks itself

        # --- evaluate on the test data, when there is any ---
        if test_ex is not None:
            evaluate(predictor, test_ex, run_dir, progress=progress)
        barrier()
        return run


def zero_shot(task: TaskSpec | str | Path, model: str, out: str | Path, data: str | Path | None = None,
              decoding: str = "score", max_length: int = 512, overwrite: bool = False, progress: bool = True) -> dict:
    """A causal LM evaluated on the task without training (``classifine eval --model M --task T``):
    an ordinary run of the ``zeroshot`` method, so report, compare and card treat the base model
    like any fine-tuned run. Returns the evaluation's metrics."""
    task = as_task(task)
    path = Path(data) if data is not None else task.data_path("test")
    if path is None:
        raise DataError("no evaluation data", ["pass --data FILE or set data.test in the task spec"])
    run = train(task, "zeroshot", out, model=model, test=path, overwrite=overwrite, progress=progress,
                config={"decoding": decoding, "max_length": max_length})
    return json.loads((run.dir / "metrics.json").read_text(encoding="utf-8"))
