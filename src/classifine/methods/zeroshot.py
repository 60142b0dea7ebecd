"""``zeroshot``: a causal LM used as it is, without training: the "base model" row that fine-tuned
runs are compared against (``classifine eval --model NAME --task T``, or ``train --method zeroshot``).

It goes through the same pipeline as every method and its run is an ordinary generative run
(``generative.causal_lm.GenerativeRun``) that names its base model and holds no weights, so report,
compare, card and serve treat it like any fine-tuned run. Labels are scored from the task's prompt
(every answer valid, a probability per label); ``decoding: generate`` measures free generation.
No training data is read; probabilities are not calibrated (there is no validation data to fit a
temperature on).
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..core.data import Examples, TaskExamples
from ..core.models import resolve
from ..core.settings import GenerativeSettings, MultiTaskSettings, Settings
from ..core.task import TaskSpec
from ..generative.causal_lm import GenerativeRun, GenerativeScorer

KINDS = ("single_label", "multi_label", "ordinal", "extraction")
REFUSED: dict[str, str] = {}
NEEDS_MODEL = True
TRAINS = False
MULTI_TASK = True   # the base model of a multi-task run, answering every task from its prompt


class Config(Settings, GenerativeSettings, MultiTaskSettings):
    max_length: int = Field(default=512, ge=16)


def prepare(task: TaskSpec, train: Examples | None, config: Config, model: str) -> tuple[Config, dict]:
    return config, {}  # no training texts to read a budget from: max_length is the setting (512)


def fit(task: TaskSpec, train: Examples | None, validation: Examples | None, config: Config, model: str,
        run_dir: Path, progress: bool = True, resume: bool = False, others: list[TaskExamples] = ()) -> dict:
    resolve(model)  # an unknown or missing model fails before anything is written
    tasks = {o.task.name: {"kind": o.task.kind, "labels": o.task.label_names, "temperature": 1.0} for o in others}
    GenerativeRun.save(run_dir / "model", task, model, config, zero_shot=True, temperature=1.0,
                       **({"tasks": tasks} if tasks else {}))
    return {"zero_shot": True}


Scorer = GenerativeScorer
