"""``orpo``: ORPO preference tuning (TRL's ``ORPOTrainer``) on pairs built from labelled data.

chosen = the gold answer; rejected = the model's own wrong answer where it has one (label scoring
of the untuned model), else a sampled wrong label; multi-label questions flip yes/no; extraction
gets a corrupted entity set (an entity dropped, or a wrong span added). Several tasks can be trained
into one model: ``tasks: [other.yaml, ...]`` adds each spec's training data, every example carrying
its own task's instruction; the run's own task is the first. ``class_weight`` acts by sampling
(each task's pairs drawn in proportion to its class weights), since TRL's ORPO loss takes no weights.

ORPOTrainer computes full-vocabulary logits for chosen and rejected sequences, so a step costs
about twice an sft step on Gemma's 262k vocabulary; start from an sft run (``init_adapter``) to
need fewer of them.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import Examples, load_examples
from ..decoding import LabelScorer
from ..errors import ConfigError
from ..generative import GenerativeScorer, balanced_sampler, example_weights, load_causal_lm, training_pairs
from ..prompts import PromptFormat, answer_text, truncate_texts
from ..runs import atomic_write_text
from ..task import TaskSpec, load_task
from .sft import calibrate, evaluate_by_task_metric, save_generative, task_metric_fn

KINDS = ("single_label", "multi_label", "ordinal", "extraction")
REFUSED: dict[str, str] = {}
NEEDS_MODEL = True


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = -1
    learning_rate: float = Field(default=1e-4, gt=0)
    beta: float = Field(default=0.1, gt=0)        # weight of the odds-ratio term
    batch_size: int = Field(default=4, ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    max_length: int = Field(default=256, ge=16)
    scheduler: Literal["cosine", "linear", "constant"] = "linear"
    warmup: float = Field(default=0.05, ge=0)
    lora: bool = True
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    load_in_4bit: bool = False
    merge: bool = False
    own_rejections: bool = True    # rejected = the model's own wrong answer where it has one
    tasks: list[str] = Field(default_factory=list)   # more task specs trained into the same model
    decoding: Literal["score", "generate"] = "score"
    max_new_tokens: int = Field(default=24, ge=1)
    calibrate: bool = True
    eval_steps: int | None = Field(default=None, ge=1)
    eval_rows: int = Field(default=200, ge=1)
    early_stopping_patience: int = Field(default=3, ge=1)
    negatives: int = Field(default=1, ge=1)
    class_weight: Literal["balanced", "none"] | dict[str, float] = "balanced"
    score_batch_size: int = Field(default=8, ge=1)
    logging_steps: int = Field(default=10, ge=1)
    seed: int = 13


def _corrupt(gold: list[str], text: str, rng: random.Random) -> list[str]:
    """A plausible wrong entity set: drop one, or add a span of the text that is not an entity."""
    words = [w.strip(".,;:()\"'") for w in text.split()]
    spans = [w for w in words if w and w not in gold]
    if gold and (not spans or rng.random() < 0.5):
        return [g for i, g in enumerate(gold) if i != rng.randrange(len(gold))]
    return gold + [rng.choice(spans)] if spans else ["none"]


def build_pairs(task: TaskSpec, examples: Examples, fmt: PromptFormat, model, tokenizer, config: Config) -> list[dict]:
    rng = random.Random(config.seed)
    texts, _ = truncate_texts(fmt, task, examples.texts, config.max_length, 96 if task.kind == "extraction" else 8)
    own: list[str | None] = [None] * len(texts)
    if config.own_rejections and task.kind in ("single_label", "ordinal"):
        scores = LabelScorer(model.eval(), tokenizer, task, config.score_batch_size).scores(texts)
        own = [task.label_names[i] for i in scores.argmax(1)]
        model.train()
    rows = []
    weights = example_weights(task, examples, config.class_weight)  # applied by sampling (fit)
    if task.kind == "multi_label":
        for text, gold, stratum in training_pairs(task, examples.subset(range(len(texts))), config.seed, config.negatives):
            answer, label = gold
            prefix, suffixes = fmt.split_prompt(task, text)
            wrong = "no" if answer == "yes" else "yes"
            rows.append({"prompt": prefix + suffixes[task.label_names.index(label)],
                         "chosen": answer + fmt.end_text, "rejected": wrong + fmt.end_text,
                         "draw": weights.get(stratum, 1.0)})
        return rows
    for text, gold, mine in zip(texts, examples.labels, own):
        if task.kind == "extraction":
            wrong = _corrupt(list(gold), text, rng)
        else:
            wrong = mine if mine is not None and mine != gold else rng.choice([lab for lab in task.label_names if lab != gold])
        rows.append({"prompt": fmt.prompt(task, text), "chosen": fmt.answer(task, gold),
                     "rejected": answer_text(task, wrong) + fmt.end_text, "own": mine is not None and mine != gold,
                     "draw": weights.get(gold, 1.0) if isinstance(gold, str) else 1.0})
    return rows


def fit(task: TaskSpec, train: Examples, validation: Examples | None, config: Config, model: str,
        run_dir: Path, progress: bool = True, resume: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import EarlyStoppingCallback
    from transformers.integrations import TensorBoardCallback
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    # --- setup: the pairs of every task, each with its own instruction ---
    tokenizer, net = load_causal_lm(model, config.lora, config.lora_r, config.lora_alpha, config.lora_dropout,
                                    config.target_modules, config.load_in_4bit)
    fmt = PromptFormat.for_tokenizer(tokenizer)
    extra = [load_task(p) for p in config.tasks]
    missing = [t.name for t in extra if t.data_path("train") is None]
    if missing:
        raise ConfigError("tasks listed in 'tasks' need training data", [f"set data.train in the spec of {missing}"])
    rows = build_pairs(task, train, fmt, net, tokenizer, config)
    per_task = {task.name: len(rows)}
    for other in extra:
        other_rows = build_pairs(other, load_examples(other, other.data_path("train")), fmt, net, tokenizer, config)
        per_task[other.name] = len(other_rows)
        rows += other_rows
        atomic_write_text(run_dir / "tasks" / f"{other.name}.yaml", other.to_yaml())
    own_share = float(np.mean([r.pop("own", False) for r in rows])) if rows else 0.0
    np.random.default_rng(config.seed).shuffle(rows)
    draw = [r.pop("draw") for r in rows]  # class weights act through the sampler: TRL's loss takes none

    cuda = torch.cuda.is_available()
    strategy = "epoch" if config.eval_steps is None else "steps"
    metric = "loss" if task.kind == "extraction" else "macro_f1"
    args = ORPOConfig(
        output_dir=str(run_dir / "checkpoints"), num_train_epochs=config.epochs, max_steps=config.max_steps,
        learning_rate=config.learning_rate, beta=config.beta, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation,
        max_length=config.max_length + 96, lr_scheduler_type=config.scheduler, warmup_steps=config.warmup,
        eval_strategy=strategy, save_strategy=strategy, eval_steps=config.eval_steps, save_steps=config.eval_steps,
        save_total_limit=2, load_best_model_at_end=True, metric_for_best_model=metric, greater_is_better=metric != "loss",
        logging_steps=config.logging_steps, report_to="none", seed=config.seed, use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),  # trl defaults ORPO to bf16: 25x slower on CPU
        disable_tqdm=not progress,
    )
    val = validation.subset(range(min(len(validation), config.eval_rows)))
    task_metrics = task_metric_fn(task, tokenizer, val, config)

    class TaskORPOTrainer(ORPOTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return balanced_sampler(draw, config.seed) or super()._get_train_sampler(train_dataset)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if task.kind == "extraction":
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            return evaluate_by_task_metric(self, task_metrics, metric_key_prefix)

    val_rows = build_pairs(task, val, fmt, net, tokenizer, config.model_copy(update={"own_rejections": False}))
    for r in val_rows:
        r.pop("own", None)
        r.pop("draw", None)
    tensorboard = TensorBoardCallback()
    tensorboard.logging_dir = str(run_dir / "logs")
    trainer = TaskORPOTrainer(model=net, args=args, train_dataset=Dataset.from_list(rows),
                              eval_dataset=Dataset.from_list(val_rows), processing_class=tokenizer,
                              callbacks=[EarlyStoppingCallback(config.early_stopping_patience), tensorboard])

    # --- train ---
    has_checkpoint = resume and any((run_dir / "checkpoints").glob("checkpoint-*"))
    result = trainer.train(resume_from_checkpoint=True if has_checkpoint else None)

    # --- save ---
    best = trainer.model
    calibration = calibrate(task, best, tokenizer, validation, config)
    save_generative(task, best, tokenizer, config, model, run_dir / "model", calibration)
    return {"steps": int(result.global_step), "train_loss": float(result.training_loss), "pairs": per_task,
            "rejected_from_own_answers": round(own_share, 4), "best_metric": trainer.state.best_metric,
            "best_checkpoint": trainer.state.best_model_checkpoint, "resumed": bool(has_checkpoint), **calibration}


Scorer = GenerativeScorer
