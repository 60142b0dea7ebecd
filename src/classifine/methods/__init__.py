"""Training methods: one module each, all of the shape ``Method`` names (a Protocol: a shape to
match, not a base class to inherit code from; TRL's config/trainer pairs and torchtune's recipe
interface are the model). Settings shared by methods are declared once in ``core/settings.py``;
machinery shared by the generative methods lives in ``generative/``, never in a sibling method.
"""
from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ValidationError

from ..core.data import Examples
from ..core.task import TaskSpec
from ..errors import ConfigError
from ..generative.causal_lm import GenerativeScorer

METHODS = {
    "tfidf": "TF-IDF char n-grams + logistic regression (the baseline)",
    "embed": "frozen encoder/decoder embeddings (a decoder's top layers optionally tuned) + linear or ordinal head",
    "hybrid": "TF-IDF + LM embeddings (method embed), blended with a weight chosen on validation",
    "head": "AutoModelForSequenceClassification fine-tuning (full or LoRA) on the HF Trainer",
    "sft": "causal LM + LoRA answering the task prompt; label scoring, calibrated, schema-constrained JSON; multi-task",
    "orpo": "ORPO preference tuning (TRL) on gold vs the model's own wrong answers; multi-task",
    "pretrain": "BPE tokenizer + small Llama-style LM from scratch on the texts, then sft on it",
    "zeroshot": "a causal LM as it is, no training: label scoring from the task prompt (the base-model row)",
}


class Scorer(Protocol):
    """Loads a run's ``model/`` folder and gives a probability for every label of each text."""

    @classmethod
    def load(cls, model_dir: Path) -> "Scorer": ...

    def predict_proba(self, texts: list[str]) -> np.ndarray: ...


@runtime_checkable
class Method(Protocol):
    """What a method module provides.

    ``prepare`` is the setup step, run before anything is written: it returns the settings with
    what is read from the training data filled in (max_length, an answer budget; core/budget.py)
    and the facts behind them for config.yaml, or refuses settings that cannot work on this data.
    ``fit`` trains (unless ``TRAINS`` is False) and saves into ``run_dir/model`` (checkpoints and
    logs beside it) and returns facts for config.yaml. Methods only produce probabilities; turning
    them into answers, and what is tuned on validation for that, is shared (scoring/decision.py).
    A method that sets ``MULTI_TASK = True`` (sft, orpo, zeroshot) trains one model on several
    specs: its ``fit`` takes one more keyword, ``others`` (``core.data.TaskExamples`` of the other
    tasks, built by training.py), and its Scorer has ``for_task``."""

    Config: type[BaseModel]       # the method's settings; unknown keys are errors
    KINDS: tuple[str, ...]        # task kinds it supports
    REFUSED: dict[str, str]       # why each other kind is refused, with what to use instead
    NEEDS_MODEL: bool             # whether --model is required
    TRAINS: bool                  # False: no training data is read (zeroshot)
    Scorer: type[Scorer]          # generative methods use generative.causal_lm.GenerativeScorer

    def prepare(self, task: TaskSpec, train: Examples | None, config: Any, model: str | None) -> tuple[Any, dict]: ...

    def fit(self, task: TaskSpec, train: Examples | None, validation: Examples | None, config: Any, model: str | None,
            run_dir: Path, progress: bool = True, resume: bool = False) -> dict: ...


def get_method(name: str) -> Method:
    if name not in METHODS:
        hint = difflib.get_close_matches(name, list(METHODS), n=1)
        raise ConfigError(f"unknown method {name!r}",
                          ([f"did you mean {hint[0]!r}?"] if hint else []) + [f"methods: {', '.join(METHODS)}"])
    return importlib.import_module(f"{__name__}.{name}")


def is_generative(name: str) -> bool:
    """Whether a method's runs answer with a causal LM (a generative run: pipeline tag, vLLM serving)."""
    return name in METHODS and issubclass(get_method(name).Scorer, GenerativeScorer)


def build_config(method: Method, name: str, values: dict[str, Any], labels: list[str]):
    """Validate hyper-parameters, reporting every problem at once with the fix."""
    problems: list[str] = []
    config = None
    try:
        config = method.Config.model_validate(values)
    except ValidationError as e:
        known = list(method.Config.model_fields)
        for err in e.errors():
            key = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                hint = difflib.get_close_matches(key, known, n=1)
                problems.append(f"unknown setting {key!r} for method {name}: "
                                + (f"did you mean {hint[0]!r}?" if hint else f"settings: {', '.join(known)}"))
            else:
                problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    cw = values.get("class_weight")
    if isinstance(cw, dict):
        unknown = [k for k in cw if k not in labels]
        if unknown:
            problems.append(f"class_weight names unknown labels {unknown}: use labels from {labels}")
    if problems:
        raise ConfigError(f"invalid settings for method {name}:", problems)
    return config


def check_kind(method: Method, name: str, kind: str) -> None:
    if kind not in method.KINDS:
        raise ConfigError(f"method {name!r} does not support {kind} tasks",
                          [method.REFUSED.get(kind, f"supported kinds: {', '.join(method.KINDS)}")])
