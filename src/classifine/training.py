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
from .core.data import Examples, TaskExamples, check_trainable, label_stats, load_examples, split_validation
from .core.models import describe, resolve
from .core.runs import (Run, atomic_write_text, atomic_write_yaml, barrier, fit_dir, hardware, library_versions,
                        prepare_run_dir, process_rank, run_lock, write_manifest)
from .core.task import TaskSpec, as_task, check_task_set, load_task
from .errors import ConfigError, DataError
from .evaluation.multitask import evaluate_tasks
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


def _other_tasks(task: TaskSpec, module, method: str, settings, given: list) -> list[TaskSpec]:
    """The other tasks of a multi-task run: specs given with the run's own (``train([a, b, c])``,
    or several on the command line) and those of the ``tasks`` setting, checked to agree."""
    specs = [as_task(t) for t in given] + [load_task(p) for p in getattr(settings, "tasks", None) or []]
    if not specs:
        return []
    if not getattr(module, "MULTI_TASK", False):
        raise ConfigError(f"method {method} trains one task per run",
                          ["train several tasks into one model with --method sft or orpo (zeroshot for the base model)"])
    check_task_set([task, *specs])
    for spec in specs:
        check_kind(module, method, spec.kind)
    return specs


def _other_data(others: list[TaskSpec], trains: bool, test: str | Path | None, seed: int
                ) -> tuple[list[TaskExamples], dict[str, Examples], dict[str, dict]]:
    """Each other task's training, validation and test examples from its own spec (``--test``
    applies to every task: the tasks answer about the same records). Every task without training
    data is named at once."""
    missing = [o.name for o in others if trains and o.data_path("train") is None]
    if missing:
        raise DataError(f"tasks {missing} have no training data", ["set data.train in each of their specs"])
    data, tests, paths = [], {}, {}
    for o in others:
        train_ex = val_ex = None
        val_path = o.data_path("validation")
        if trains:
            train_ex = load_examples(o, o.data_path("train"))
            if val_path is not None:
                val_ex = load_examples(o, val_path)
            else:
                train_ex, val_ex = split_validation(o, train_ex, seed=seed)
            check_trainable(o, train_ex, val_ex, held_out=val_path is None)
        test_path = Path(test) if test is not None else o.data_path("test")
        if test_path is not None:
            tests[o.name] = load_examples(o, test_path)
        data.append(TaskExamples(o, train_ex, val_ex))
        paths[o.name] = {"train": o.data_path("train") if trains else None, "validation": val_path if trains else None,
                         "test": test_path}
    return data, tests, paths


def _frozen(task: TaskSpec, paths: dict) -> TaskSpec:
    """The spec as the run keeps it: data paths made absolute (the files it was trained on)."""
    return task.model_copy(update={"data": task.data.model_copy(update={
        split: str(Path(p).resolve()) if p else None for split, p in paths.items()})})


def _tuned(predictor: Predictor, validation: Examples, settings) -> dict:
    """The decisions tuned on validation from the model's own probabilities (the predictor's task).
    class_weight none = no imbalance handling at all, so no class offsets either."""
    return tune_decision(predictor.task, batched_proba(predictor, validation.texts, progress=False), validation.labels,
                         calibrate=getattr(settings, "calibrate", True), offsets=settings.class_weight != "none")


def train(task: TaskSpec | str | Path | dict | list, method: str, out: str | Path, model: str | None = None,
          train: str | Path | None = None, validation: str | Path | None = None, test: str | Path | None = None,
          config: dict[str, Any] | None = None, overwrite: bool = False, resume: bool = False,
          progress: bool = True, choose_engine_now: bool = True, min_confidence: float | None = None,
          soft_labels: bool = False) -> Run:
    """Train ``method`` on ``task`` into ``out``. ``choose_engine_now=False`` leaves the run on
    PyTorch (``auto`` measures the engines of its winning run only). ``train`` may be an annotation
    folder (``classifine annotate``): its valid rows at or above ``min_confidence`` train, with the
    annotator's probabilities as targets when ``soft_labels`` (methods that declare SOFT_LABELS).
    ``task`` may be a list of specs: one model trained on every task (methods that declare
    MULTI_TASK), the first the run's own; ``train``/``validation`` are the first task's files."""
    # --- setup: everything the user gave is checked before any training starts ---
    given = list(task) if isinstance(task, (list, tuple)) else [task]
    task = as_task(given[0])
    module = get_method(method)
    check_kind(module, method, task.kind)
    settings = build_config(module, method, dict(config or {}), task.label_names)
    other_specs = _other_tasks(task, module, method, settings, given[1:])
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
    others, other_tests, other_paths = _other_data(other_specs, module.TRAINS, test, settings.seed)
    stats = {"train": label_stats(task, train_ex), "validation": label_stats(task, val_ex)} if train_ex else {}
    # settings read from the data (max_length, answer budget), checked before anything is written
    planned, budget = module.prepare(task, train_ex, settings, model)
    if others and module.TRAINS:  # one max_length for every task: the longest any of them needs
        plans = {o.task.name: module.prepare(o.task, o.train, settings, model) for o in others}
        longest = max([planned.max_length, *(c.max_length for c, _ in plans.values())])
        planned = planned.model_copy(update={"max_length": longest})
        budget = {**budget, "max_length": longest, "tasks": {n: facts for n, (_, facts) in plans.items()}}
    settings = planned
    set_seed(settings.seed)
    rank, _ = process_rank()  # under `accelerate launch`, only rank 0 writes the run directory
    # one train per run folder at a time, held until the run is complete (released even on SIGKILL)
    with run_lock(out) if rank == 0 else nullcontext():
        if rank == 0:
            run_dir = prepare_run_dir(out, overwrite=overwrite, resume=resume)
            frozen = _frozen(task, {"train": train_path, "validation": val_path, "test": test_path})
            atomic_write_text(run_dir / "task.yaml", frozen.to_yaml())
            for o in others:
                atomic_write_text(run_dir / "tasks" / f"{o.task.name}.yaml", _frozen(o.task, other_paths[o.task.name]).to_yaml())
        barrier()
        run_dir = Path(out)

        # frozen-model outputs computed while fitting (the validation vectors) serve the tuning pass;
        # the engine choice after this block times real forward passes
        with reuse_outputs():
            # --- train ---
            t0 = time.time()
            with fit_dir(run_dir) as where:
                info = module.fit(task, train_ex, val_ex, settings, model, where, progress=progress, resume=resume,
                                  **({"others": others} if others else {}))
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
                **({"tasks": [task.name, *(o.task.name for o in others)],
                    "task_data": {o.task.name: {**{k: str(v) if v else None for k, v in other_paths[o.task.name].items()},
                                                "train_rows": len(o.train) if o.train else 0,
                                                "test_rows": len(other_tests.get(o.task.name) or ())}
                                  for o in others}} if others else {}),
                "warnings": (train_ex.warnings + val_ex.warnings) if train_ex else [],
                "train_seconds": round(train_seconds, 2), "info": info, "versions": library_versions(), "hardware": hardware(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_yaml(run_dir / "config.yaml", record)
            run = Run.load(run_dir, partial_ok=True)
            predictor = Predictor.load(run, engine="torch")  # tuned on fp32 PyTorch; the engine is chosen after
            predictor.decision = {}  # decisions are tuned on the model's own probabilities, never on adjusted ones
            if task.kind != "extraction" and val_ex is not None:
                decision = _tuned(predictor, val_ex, settings)
                fold = getattr(module, "fold_decision", None)
                if fold is not None:  # head runs: into the classifier layer, so plain transformers answers the same
                    decision = fold(run.model_dir, task, decision)
                save_decision(run.model_dir, decision)
                predictor = Predictor.load(run, engine="torch") if fold is not None else predictor
                predictor.decision = read_decision(run.model_dir)
            for o in others:  # each other task's decisions, on its own validation rows
                if o.task.kind != "extraction" and o.validation is not None:
                    own = predictor.for_task(o.task.name)
                    own.decision = {}
                    save_decision(run.model_dir, _tuned(own, o.validation, settings), o.task.name)
        # the inference engine, measured on validation against fp32 PyTorch (predict/engine.py)
        wanted = getattr(settings, "engine", "torch") if choose_engine_now else "torch"
        if choose_engine(run, val_ex, wanted).get("engine", "torch") != "torch":
            predictor = Predictor.load(run)
        write_manifest(run_dir)  # last of the run's own files: from here on the run checks itself

        # --- evaluate on the test data, when there is any (every task's, and the combined table) ---
        if others and (test_ex is not None or other_tests):
            evaluate_tasks(predictor, {**({task.name: test_ex} if test_ex is not None else {}), **other_tests},
                           run_dir, progress=progress)
        elif test_ex is not None:
            evaluate(predictor, test_ex, run_dir, progress=progress)
        barrier()
        return run


def zero_shot(task: TaskSpec | str | Path | list, model: str, out: str | Path, data: str | Path | None = None,
              decoding: str = "score", max_length: int = 512, overwrite: bool = False, progress: bool = True) -> dict:
    """A causal LM evaluated on the task without training (``classifine eval --model M --task T``):
    an ordinary run of the ``zeroshot`` method, so report, compare and card treat the base model
    like any fine-tuned run. Several specs: the base model of a multi-task run (every task, the
    combined table). Returns the evaluation's metrics (the first task's)."""
    specs = [as_task(t) for t in (task if isinstance(task, (list, tuple)) else [task])]
    path = Path(data) if data is not None else specs[0].data_path("test")
    if path is None:
        raise DataError("no evaluation data", ["pass --data FILE or set data.test in the task spec"])
    # no --data: each spec's own test file (train's default), checked above for the first
    run = train(specs, "zeroshot", out, model=model, test=data, overwrite=overwrite, progress=progress,
                config={"decoding": decoding, "max_length": max_length})
    return json.loads((run.dir / "metrics.json").read_text(encoding="utf-8"))
