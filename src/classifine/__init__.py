"""classifine: turn language models into dependable text classifiers and extractors."""
from __future__ import annotations

from .errors import AnnotatorError, ClassifineError, ConfigError, DataError, ModelError, RunError, TaskError
from .core.task import TaskSpec, load_task

__version__ = "0.1.0"


def train(*args, **kwargs):
    """Train a run from a task spec; see ``classifine.training.train``. ``method="auto"`` with
    ``budget="30m"`` tries methods within the budget and keeps the best (``classifine.auto.auto``)."""
    if kwargs.get("method") == "auto" or (len(args) > 1 and args[1] == "auto"):
        from .auto import auto as _auto

        kwargs.pop("method", None)
        args = args[:1] + args[2:] if len(args) > 1 else args
        return _auto(*args, **kwargs)
    if "budget" in kwargs:
        raise ConfigError("budget applies to method='auto' only", ["drop budget, or pass method='auto'"])
    from .training import train as _train

    return _train(*args, **kwargs)


def annotate(task, input, out, model, base_url=None, api_key_env="OPENAI_API_KEY", concurrency=4, timeout=60.0,
             retries=5, examples=None, shots=4, choose="diverse", overwrite=False, plan=False, batch_size=32,
             progress=True, logprobs=True) -> dict:
    """Label ``input`` with an LLM into the folder ``out`` (``classifine annotate``): an OpenAI-compatible
    server when ``base_url`` is given, else the local causal LM ``model``. Returns the summary
    (``annotation.json``), or with ``plan=True`` the calls it would make."""
    from .annotation.annotators import make_annotator
    from .annotation.runner import annotate as _annotate

    annotator = make_annotator(model, base_url, api_key_env, concurrency, timeout, retries, logprobs=logprobs)
    return _annotate(task, input, out, annotator, examples=examples, shots=shots, shot_mode=choose,
                     overwrite=overwrite, plan=plan, batch_size=batch_size, progress=progress)


def review(folder, gold=None, others=(), apply=None) -> dict:
    """Agreement, review queue and merging reviewed labels (``classifine review``)."""
    from .annotation.review import review as _review

    return _review(folder, gold=gold, others=list(others), apply=apply)


def load(run_dir, task=None):
    """Load a finished run for prediction: ``classifine.load("runs/x").predict([{"title": ...}])``.
    ``task`` names another task of a multi-task run (``.for_task(name)`` switches on the loaded model)."""
    from .predict.predictor import Predictor

    return Predictor.load(run_dir, task=task)


def zero_shot(task, model, out, data=None, **kwargs) -> dict:
    """A causal LM evaluated without training (``classifine eval --model M --task T``); a list of
    specs evaluates the base model of a multi-task run. Returns the (first task's) metrics."""
    from .training import zero_shot as _zero_shot

    return _zero_shot(task, model, out, data, **kwargs)


def evaluate(run_dir, data=None, out_dir=None, progress=True) -> dict:
    """Evaluate a run (``classifine eval RUN``): every task of a multi-task run, and the combined table."""
    from .evaluation.multitask import evaluate_run

    return evaluate_run(run_dir, data, out_dir=out_dir, progress=progress)


def compare(run_dirs, align_on=None) -> dict:
    """Runs side by side, Δ in points to the first (``classifine compare``)."""
    from .evaluation.compare import compare as _compare

    return _compare(list(run_dirs), align_on=align_on)


def card(run_dir, base=None, **kwargs):
    """Write the run's model card (``classifine card``); returns its path."""
    from .evaluation.card import write_card

    return write_card(run_dir, base=base, **kwargs)


__all__ = ["train", "annotate", "review", "load", "zero_shot", "evaluate", "compare", "card", "AnnotatorError", "load_task",
           "TaskSpec", "ClassifineError", "TaskError", "DataError", "ConfigError", "ModelError", "RunError"]
