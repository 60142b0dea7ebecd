"""``sft``: a causal LM + LoRA (QLoRA with CUDA) trained to answer the task's prompt with the label
or the JSON object; loss on the answer tokens only, with only their positions going through the LM
head (generative.py). Prediction scores every label (decoding.py), so the answer is always a valid
label with a probability per label, temperature-calibrated on validation; extraction decodes JSON
constrained to the task's schema.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data import Examples
from ..generative import (META, GenerativeScorer, answer_loss, balanced_sampler, collate, encode_features,
                          example_weights, load_causal_lm, training_pairs)
from ..prompts import PromptFormat
from ..task import TaskSpec

KINDS = ("single_label", "multi_label", "ordinal", "extraction")
REFUSED: dict[str, str] = {}
NEEDS_MODEL = True


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(default=2.0, gt=0)
    max_steps: int = -1
    learning_rate: float = Field(default=2e-4, gt=0)
    batch_size: int = Field(default=8, ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    max_length: int = Field(default=256, ge=16)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: float = Field(default=0.05, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    lora: bool = True             # false: full fine-tuning (small models, e.g. after `pretrain`)
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    load_in_4bit: bool = False    # QLoRA: NF4 + double quantisation, CUDA only
    merge: bool = False           # also save merged 16-bit weights (model/merged) for plain transformers / vLLM
    decoding: Literal["score", "generate"] = "score"
    max_new_tokens: int = Field(default=24, ge=1)
    calibrate: bool = True
    eval_steps: int | None = Field(default=None, ge=1)
    eval_rows: int = Field(default=200, ge=1)   # validation rows scored at each evaluation
    early_stopping_patience: int = Field(default=3, ge=1)
    negatives: int = Field(default=2, ge=1)     # multi_label: sampled "no" questions per "yes"
    class_weight: Literal["balanced", "none"] | dict[str, float] = "balanced"
    # how class weights act: "sampling" draws each epoch's examples in proportion to them
    # (generative.ClassBalancedSampler); "loss" weighs each example's answer loss
    balance_by: Literal["sampling", "loss"] = "sampling"
    score_batch_size: int = Field(default=8, ge=1)
    gradient_checkpointing: bool = False
    logging_steps: int = Field(default=10, ge=1)
    seed: int = 13


def task_metric_fn(task: TaskSpec, tokenizer, val: Examples, config):
    """model -> the task's metrics on the validation rows, by label scoring."""
    from ..decoding import LabelScorer, probabilities
    from ..predictor import decide
    from ..report import compute_metrics

    def task_metrics(model) -> dict:
        scores = LabelScorer(model, tokenizer, task, config.score_batch_size).scores(val.texts)
        probs = probabilities(task.kind, scores)
        out = compute_metrics(task, val.labels, decide(task.kind, task.label_names, probs, {}), probs)
        return {k: out[k] for k in ("macro_f1", "accuracy", "micro_f1", "mae", "subset_accuracy") if k in out}
    return task_metrics


def evaluate_by_task_metric(trainer, task_metrics, prefix: str = "eval") -> dict:
    """Trainer.evaluate replacement: the Trainer picks the best checkpoint from what this returns."""
    trainer.model.eval()
    metrics = {f"{prefix}_{k}": v for k, v in task_metrics(trainer.model).items()}
    trainer.model.train()
    trainer.log(metrics)
    trainer.control = trainer.callback_handler.on_evaluate(trainer.args, trainer.state, trainer.control, metrics)
    return metrics


def make_trainer(task: TaskSpec, net, tokenizer, feats: list[dict], validation: Examples, config, run_dir: Path,
                 progress: bool, extra_callbacks: list | None = None):
    """A Trainer with answer-only loss whose evaluation scores the validation rows with the task's
    metric (macro-F1 by default; answer loss for extraction), so the best checkpoint is chosen by it.
    A feature's ``draw`` weight (class weights by sampling) sets how often it is drawn per epoch."""
    import torch
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    fmt = PromptFormat.for_tokenizer(tokenizer)
    draw = [f.pop("draw", 1.0) for f in feats]
    val = validation.subset(range(min(len(validation), config.eval_rows)))
    val_feats, _ = encode_features(task, fmt, training_pairs(task, val, config.seed), config.max_length, {})

    task_metrics = task_metric_fn(task, tokenizer, val, config)

    class AnswerTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, out = answer_loss(model, inputs)
            return (loss, out) if return_outputs else loss

        def _get_train_sampler(self, train_dataset=None):
            return balanced_sampler(draw, config.seed) or super()._get_train_sampler(train_dataset)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if task.kind == "extraction":
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            return evaluate_by_task_metric(self, task_metrics, metric_key_prefix)

    metric = "loss" if task.kind == "extraction" else "macro_f1"
    strategy = "epoch" if config.eval_steps is None else "steps"
    cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"), num_train_epochs=config.epochs, max_steps=config.max_steps,
        learning_rate=config.learning_rate, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation,
        lr_scheduler_type=config.scheduler, warmup_steps=config.warmup, weight_decay=config.weight_decay,
        eval_strategy=strategy, save_strategy=strategy, eval_steps=config.eval_steps, save_steps=config.eval_steps,
        save_total_limit=2, load_best_model_at_end=True, metric_for_best_model=metric, greater_is_better=metric != "loss",
        logging_steps=config.logging_steps, report_to="none", seed=config.seed, use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(), **({"gradient_checkpointing": True} if config.gradient_checkpointing else {}),
        remove_unused_columns=False, prediction_loss_only=True, disable_tqdm=not progress,
    )
    tensorboard = TensorBoardCallback()
    tensorboard.logging_dir = str(run_dir / "logs")
    pad = tokenizer.pad_token_id
    return AnswerTrainer(model=net, args=args, train_dataset=feats, eval_dataset=val_feats,
                         data_collator=lambda f: collate(f, pad),
                         callbacks=[EarlyStoppingCallback(config.early_stopping_patience), tensorboard, *(extra_callbacks or [])])


def calibrate(task: TaskSpec, net, tokenizer, validation: Examples, config) -> dict:
    """Multi-label: a temperature for the per-label yes/no probabilities, with ECE before and after
    (on the same rows, so 'after' is optimistic: the test report gives the honest figure). Single-
    label and ordinal runs are calibrated after training like every method (predictor.tune_decision)."""
    from ..decoding import LabelScorer
    from ..predictor import calibration

    if task.kind != "multi_label" or not config.calibrate:
        return {"temperature": 1.0}
    val = validation.subset(range(min(len(validation), max(config.eval_rows, 200))))
    scores = LabelScorer(net.eval(), tokenizer, task, config.score_batch_size).scores(val.texts)
    targets = np.array([[lab in y for lab in task.label_names] for y in val.labels], dtype=float)
    return calibration(task.kind, scores, targets)


def save_generative(task: TaskSpec, net, tokenizer, config, model: str, model_dir: Path, calibration: dict) -> None:
    import torch

    net.save_pretrained(model_dir)  # the LoRA adapter (peft) or the full model
    tokenizer.save_pretrained(model_dir)
    if config.merge and hasattr(net, "merge_and_unload"):
        net.merge_and_unload().to(torch.bfloat16).save_pretrained(model_dir / "merged")
        tokenizer.save_pretrained(model_dir / "merged")
    meta = {"kind": task.kind, "labels": task.label_names, "base_model": model, "max_length": config.max_length,
            "decoding": config.decoding, "max_new_tokens": config.max_new_tokens,
            "score_batch_size": config.score_batch_size, **calibration}
    (model_dir / META).write_text(json.dumps(meta, ensure_ascii=False, indent=1))


def training_features(task: TaskSpec, fmt: PromptFormat, train: Examples, config) -> tuple[list[dict], int]:
    """Token ids per training example with its class weight: on the loss (``weight``) or, with
    ``balance_by: sampling``, on how often it is drawn (``draw``, read by make_trainer)."""
    pairs = training_pairs(task, train, config.seed, config.negatives)
    feats, truncated = encode_features(task, fmt, pairs, config.max_length, example_weights(task, train, config.class_weight))
    if config.balance_by == "sampling":
        for f in feats:
            f["draw"], f["weight"] = f["weight"], 1.0
    return feats, truncated


def fit(task: TaskSpec, train: Examples, validation: Examples | None, config: Config, model: str,
        run_dir: Path, progress: bool = True, resume: bool = False) -> dict:
    # --- setup ---
    tokenizer, net = load_causal_lm(model, config.lora, config.lora_r, config.lora_alpha, config.lora_dropout,
                                    config.target_modules, config.load_in_4bit)
    fmt = PromptFormat.for_tokenizer(tokenizer)
    if task.kind in ("single_label", "ordinal"):
        from ..decoding import LabelScorer

        LabelScorer(net, tokenizer, task)  # refuses labels that tokenize to nothing or identically
    feats, truncated = training_features(task, fmt, train, config)
    trainer = make_trainer(task, net, tokenizer, feats, validation, config, run_dir, progress)

    # --- train ---
    has_checkpoint = resume and any((run_dir / "checkpoints").glob("checkpoint-*"))
    result = trainer.train(resume_from_checkpoint=True if has_checkpoint else None)

    # --- save ---
    best = trainer.model
    calibration = calibrate(task, best, tokenizer, validation, config)
    save_generative(task, best, tokenizer, config, model, run_dir / "model", calibration)
    return {"steps": int(result.global_step), "train_loss": float(result.training_loss), "train_examples": len(feats),
            "truncated_inputs": truncated,
            "best_checkpoint": trainer.state.best_model_checkpoint, "best_metric": trainer.state.best_metric,
            "trainable_parameters": int(sum(p.numel() for p in best.parameters() if p.requires_grad)),
            "prompt_format": "chat template" if fmt.chat else "plain", "resumed": bool(has_checkpoint), **calibration}


Scorer = GenerativeScorer
