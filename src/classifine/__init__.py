"""classifine: turn language models into dependable text classifiers and extractors."""
from __future__ import annotations

from .errors import ClassifineError, ConfigError, DataError, ModelError, RunError, TaskError
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


def load(run_dir):
    """Load a finished run for prediction: ``classifine.load("runs/x").predict([{"title": ...}])``."""
    from .predict.predictor import Predictor

    return Predictor.load(run_dir)


__all__ = ["train", "load", "load_task", "TaskSpec", "ClassifineError", "TaskError", "DataError",
           "ConfigError", "ModelError", "RunError"]
