"""Training methods, one module each with the same shape (DESIGN.md §3):

- ``Config``: a pydantic model of the method's hyper-parameters (unknown keys are errors);
- ``KINDS``: the task kinds it supports, and ``REFUSED``: why the others are refused;
- ``NEEDS_MODEL``: whether ``--model`` is required;
- ``fit(task, train, validation, config, model, run_dir, progress, resume) -> dict``: trains and
  saves into ``run_dir/model`` (checkpoints and logs beside it), returns facts for config.yaml;
- ``Scorer.load(model_dir)`` with ``predict_proba(texts) -> (n, n_labels) array``.
"""
from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from ..errors import ConfigError

METHODS = {
    "tfidf": "TF-IDF char n-grams + logistic regression (the baseline)",
    "embed": "frozen encoder/decoder embeddings + linear or ordinal head",
    "head": "AutoModelForSequenceClassification fine-tuning (full or LoRA) on the HF Trainer",
    "sft": "causal LM + LoRA answering the task prompt; label scoring, calibrated, schema-constrained JSON",
    "orpo": "ORPO preference tuning (TRL) on gold vs the model's own wrong answers; multi-task",
    "pretrain": "BPE tokenizer + small Llama-style LM from scratch on the texts, then sft on it",
}


def get_method(name: str) -> ModuleType:
    if name not in METHODS:
        hint = difflib.get_close_matches(name, list(METHODS), n=1)
        raise ConfigError(f"unknown method {name!r}",
                          ([f"did you mean {hint[0]!r}?"] if hint else []) + [f"methods: {', '.join(METHODS)}"])
    return importlib.import_module(f"{__name__}.{name}")


def build_config(method: ModuleType, name: str, values: dict[str, Any], labels: list[str]):
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


def check_kind(method: ModuleType, name: str, kind: str) -> None:
    if kind not in method.KINDS:
        raise ConfigError(f"method {name!r} does not support {kind} tasks",
                          [method.REFUSED.get(kind, f"supported kinds: {', '.join(method.KINDS)}")])
