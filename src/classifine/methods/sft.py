"""``sft``: a causal LM + LoRA (QLoRA with CUDA) trained to answer the task's prompt with the label
or the JSON object; loss on the answer tokens only, with only their positions going through the LM
head (generative/trainer.py). Prediction scores every label (generative/decoding.py), so the answer
is always a valid label with a probability per label, temperature-calibrated on validation;
extraction decodes JSON constrained to the task's schema.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..core.data import Examples, TaskExamples
from ..core.settings import AdapterSettings, GenerativeSettings, MultiTaskSettings, TrainerSettings
from ..core.task import TaskSpec
from ..generative.causal_lm import GenerativeScorer, load_causal_lm
from ..generative.decoding import LabelScorer
from ..generative.prompts import PromptFormat
from ..generative.trainer import make_trainer, task_answer_budget, train_and_save, training_features
from ..generative.trainer import prepare as prepare_generative

KINDS = ("single_label", "multi_label", "ordinal", "extraction")
REFUSED: dict[str, str] = {}
NEEDS_MODEL = True
TRAINS = True
MULTI_TASK = True   # ``tasks: [...]`` (or several specs on the command line): one model, every task


class Config(TrainerSettings, AdapterSettings, GenerativeSettings, MultiTaskSettings):
    lora: bool = True             # false: full fine-tuning (small models, e.g. after `pretrain`)
    # how class weights act: "sampling" draws each epoch's examples in proportion to them
    # (generative.trainer.ClassBalancedSampler); "loss" weighs each example's answer loss
    balance_by: Literal["sampling", "loss"] = "sampling"


def fit(task: TaskSpec, train: Examples, validation: Examples | None, config: Config, model: str,
        run_dir: Path, progress: bool = True, resume: bool = False, others: list[TaskExamples] = ()) -> dict:
    # --- setup: every task's (prompt, answer) pairs, each with its own prompt and answer budget ---
    tokenizer, net = load_causal_lm(model, config)
    fmt = PromptFormat.for_tokenizer(tokenizer)
    for t in [task, *(o.task for o in others)]:
        if t.kind in ("single_label", "ordinal"):
            LabelScorer(net, tokenizer, t)  # refuses labels that tokenize to nothing or identically
    feats, truncated = training_features(task, fmt, train, config)
    per_task, budgets = {task.name: len(feats)}, {}
    for o in others:
        budgets[o.task.name] = task_answer_budget(o.task, fmt, o.train.labels)
        more, cut = training_features(o.task, fmt, o.train, config.model_copy(update={"answer_budget": budgets[o.task.name]}))
        feats, truncated, per_task[o.task.name] = feats + more, truncated + cut, len(more)
    # the best checkpoint is chosen on the run's own task (its validation metric)
    trainer = make_trainer(task, net, tokenizer, feats, validation, config, run_dir, progress)

    # --- train, then save ---
    info = train_and_save(trainer, task, tokenizer, validation, config, model, run_dir, resume, others, budgets)
    return {**info, "train_examples": len(feats), **({"train_examples_per_task": per_task} if others else {}),
            "truncated_inputs": truncated,
            "trainable_parameters": int(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)),
            "prompt_format": "chat template" if fmt.chat else "plain"}


prepare = prepare_generative  # setup: max_length and the answer budget from the training data
Scorer = GenerativeScorer
