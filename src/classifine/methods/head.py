"""``head``: ``AutoModelForSequenceClassification`` fine-tuned with the HF Trainer.

Encoders and decoders (Gemma 3 included), full or LoRA (peft), 4-bit NF4 with CUDA. Losses:
class-weighted cross-entropy (single_label), BCE with per-label positive weights (multi_label),
weighted MSE on the scale position (ordinal). The best checkpoint by a task metric is kept, with
early stopping. The saved model folder is plain transformers (LoRA merged), so
``pipeline("text-classification", model=run/model)`` works without classifine.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..core.budget import plan_for_encoder, token_lengths, truncation
from ..core.data import Examples
from ..core.settings import (AdapterSettings, NonNegative, Positive, TrainerSettings, load_for_training,
                             quiet_trainer, resume_checkpoint, trainer_callbacks, training_arguments)
from ..core.task import TaskSpec
from ..scoring.decision import class_weights, ordinal_probabilities, probabilities
from ..scoring.kinds import validation_metrics

KINDS = ("single_label", "multi_label", "ordinal")
REFUSED = {"extraction": "a sequence-classification head labels whole texts and cannot name entities: use method sft for extraction"}
NEEDS_MODEL = True
TRAINS = True
META = "classifine_head.json"


class Config(TrainerSettings, AdapterSettings):
    epochs: Positive = 3.0
    learning_rate: Positive | None = None                     # None: 5e-5 full, 2e-4 LoRA
    max_length: int | None = Field(default=None, ge=8)
    warmup: NonNegative = 0.1
    weight_decay: NonNegative = 0.01
    lora: bool = False
    metric: Literal["macro_f1", "accuracy", "micro_f1", "weighted_f1", "mae"] = "macro_f1"


def _targets(task: TaskSpec, labels: list) -> list:
    names = task.label_names
    if task.kind == "single_label":
        return [names.index(y) for y in labels]
    if task.kind == "ordinal":
        return [float(names.index(y)) for y in labels]
    return [[1.0 if lab in y else 0.0 for lab in names] for y in labels]


def _loss_fn(task: TaskSpec, train: Examples, class_weight):
    import torch
    import torch.nn.functional as F

    names = task.label_names
    if task.kind == "multi_label":
        pos = np.array([sum(lab in y for y in train.labels) for lab in names], dtype=float)
        neg = len(train.labels) - pos
        if class_weight == "balanced":  # positives weigh neg/pos, so rare labels are not ignored
            pw = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
        elif isinstance(class_weight, dict):
            pw = np.array([class_weight.get(lab, 1.0) for lab in names])
        else:
            pw = np.ones(len(names))
        pos_weight = torch.tensor(pw, dtype=torch.float32)

        def loss(outputs, labels, num_items_in_batch=None):
            return F.binary_cross_entropy_with_logits(outputs.logits, labels.to(outputs.logits.dtype),
                                                      pos_weight=pos_weight.to(outputs.logits.device))
        return loss
    counts = {lab: sum(1 for y in train.labels if y == lab) for lab in names}
    w = torch.tensor([class_weights(names, counts, class_weight)[lab] for lab in names], dtype=torch.float32)
    if task.kind == "ordinal":
        def loss(outputs, labels, num_items_in_batch=None):
            pred = outputs.logits.squeeze(-1)
            sw = w.to(pred.device)[labels.round().long()]
            return (sw * (pred - labels.to(pred.dtype)) ** 2).sum() / sw.sum()
        return loss

    def loss(outputs, labels, num_items_in_batch=None):
        return F.cross_entropy(outputs.logits, labels, weight=w.to(outputs.logits.device))
    return loss


def _probabilities(kind: str, logits: np.ndarray, n_labels: int, sigma: float) -> np.ndarray:
    if kind == "ordinal":
        return ordinal_probabilities(np.asarray(logits, dtype=np.float64).reshape(-1), sigma, n_labels)
    return probabilities(kind, logits)


def _load_model(task: TaskSpec, model: str, config: Config):
    from transformers import AutoModelForSequenceClassification

    names = task.label_names
    if task.kind == "ordinal":
        label_args = {"num_labels": 1, "problem_type": "regression", "id2label": {0: "score"}, "label2id": {"score": 0}}
    else:
        label_args = {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)},
                      "problem_type": "multi_label_classification" if task.kind == "multi_label" else "single_label_classification"}
    tokenizer, net = load_for_training(AutoModelForSequenceClassification, model, config, "SEQ_CLS",
                                       "for sequence classification", **label_args)
    net.config.pad_token_id = tokenizer.pad_token_id  # decoders classify from the last non-pad token
    return tokenizer, net


def prepare(task: TaskSpec, train: Examples, config: Config, model: str) -> tuple[Config, dict]:
    """max_length from the training texts (or the user's, checked), before anything is written."""
    facts = plan_for_encoder(model, train.texts, config, training=True)
    return config.model_copy(update={"max_length": facts["max_length"]}), facts


def fit(task: TaskSpec, train: Examples, validation: Examples | None, config: Config, model: str,
        run_dir: Path, progress: bool = True, resume: bool = False) -> dict:
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer

    # --- setup ---
    model_dir = run_dir / "model"
    tokenizer, net = _load_model(task, model, config)

    def encode(examples: Examples) -> Dataset:
        ds = Dataset.from_dict({"text": examples.texts, "labels": _targets(task, examples.labels)})
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=config.max_length),
                      batched=True, remove_columns=["text"])

    train_ds, val_ds = encode(train), encode(validation)
    names = task.label_names

    def metrics(ev) -> dict:
        return validation_metrics(task, validation.labels, _probabilities(task.kind, ev.predictions, len(names), sigma=1.0))

    lr = config.learning_rate or (2e-4 if config.lora or config.load_in_4bit else 5e-5)
    args = training_arguments(config, run_dir, config.metric, progress, learning_rate=lr,
                              per_device_eval_batch_size=config.batch_size * 2)
    trainer = quiet_trainer(Trainer(
        model=net, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), compute_loss_func=_loss_fn(task, train, config.class_weight),
        compute_metrics=metrics, callbacks=trainer_callbacks(config, run_dir)), progress)

    # --- train ---
    checkpoint = resume_checkpoint(run_dir, resume)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    resumed = checkpoint is not None

    # --- save: a plain transformers folder (LoRA merged; adapter kept beside it) ---
    trainable = int(sum(p.numel() for p in net.parameters() if p.requires_grad))
    best = trainer.model
    if hasattr(best, "merge_and_unload"):
        best.save_pretrained(model_dir / "adapter")
        best = best.merge_and_unload()
    sigma = 1.0
    if task.kind == "ordinal":  # the spread of held-out residuals turns a score into level probabilities
        pred = trainer.predict(val_ds).predictions.reshape(-1)
        gold = np.array(_targets(task, validation.labels))
        sigma = max(float(np.sqrt(np.mean((pred - gold) ** 2))), 0.25)
    best.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    (model_dir / META).write_text(json.dumps({"kind": task.kind, "labels": names, "max_length": config.max_length,
                                              "sigma": sigma, "base_model": model}, ensure_ascii=False, indent=1))
    return {"steps": int(result.global_step), "train_loss": float(result.training_loss),
            "best_checkpoint": trainer.state.best_model_checkpoint, "best_metric": trainer.state.best_metric,
            "trainable_parameters": trainable, "resumed": resumed}


class Scorer:
    def __init__(self, tokenizer, net, meta: dict, batch_size: int = 16):
        self.tokenizer, self.net, self.meta, self.batch_size = tokenizer, net, meta, batch_size

    @classmethod
    def load(cls, model_dir: Path) -> "Scorer":
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        meta = json.loads((model_dir / META).read_text())
        net = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
        return cls(AutoTokenizer.from_pretrained(str(model_dir)), net, meta)

    def truncation(self, texts: list[str]) -> dict:
        """What max_length cuts from these texts (the report's truncation section)."""
        budget = self.meta["max_length"] - self.tokenizer.num_special_tokens_to_add()
        return {"max_length": self.meta["max_length"], **truncation(token_lengths(self.tokenizer, texts), budget)}

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        import torch

        order = np.argsort([-len(t) for t in texts], kind="stable")
        n_out = 1 if self.meta["kind"] == "ordinal" else len(self.meta["labels"])
        logits = np.zeros((len(texts), n_out), dtype=np.float64)
        for s in range(0, len(texts), self.batch_size):
            idx = order[s:s + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.meta["max_length"], return_tensors="pt")
            with torch.inference_mode():
                logits[idx] = self.net(**enc).logits.float().numpy()
        return _probabilities(self.meta["kind"], logits, len(self.meta["labels"]), self.meta["sigma"])
