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
from pydantic import BaseModel, ConfigDict, Field

from ..data import Examples
from ..errors import ConfigError, ModelError
from ..heads import class_weights, ordinal_probabilities
from ..models import resolve
from ..task import TaskSpec

KINDS = ("single_label", "multi_label", "ordinal")
REFUSED = {"extraction": "a sequence-classification head labels whole texts and cannot name entities: use method sft for extraction"}
NEEDS_MODEL = True
META = "classifine_head.json"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: float = Field(default=3.0, gt=0)
    max_steps: int = -1
    learning_rate: float | None = Field(default=None, gt=0)   # None: 5e-5 full, 2e-4 LoRA
    batch_size: int = Field(default=8, ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    max_length: int = Field(default=256, ge=8)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: float = Field(default=0.1, ge=0)                  # < 1: fraction of steps; else steps
    weight_decay: float = Field(default=0.01, ge=0)
    lora: bool = False
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    load_in_4bit: bool = False
    eval_steps: int | None = Field(default=None, ge=1)        # None: evaluate once per epoch
    metric: Literal["macro_f1", "accuracy", "micro_f1", "weighted_f1", "mae"] = "macro_f1"
    early_stopping_patience: int = Field(default=3, ge=1)
    class_weight: Literal["balanced", "none"] | dict[str, float] = "balanced"
    gradient_checkpointing: bool = False
    logging_steps: int = Field(default=10, ge=1)
    seed: int = 13


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
    logits = np.asarray(logits, dtype=np.float64)
    if kind == "multi_label":
        return 1.0 / (1.0 + np.exp(-logits))
    if kind == "ordinal":
        return ordinal_probabilities(logits.reshape(-1), sigma, n_labels)
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _load_model(task: TaskSpec, model: str, config: Config):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve(model)
    names = task.label_names
    extra = {}
    if config.load_in_4bit:
        if not torch.cuda.is_available():
            raise ConfigError("load_in_4bit needs a CUDA GPU", ["set load_in_4bit: false on CPU (LoRA alone still works)"])
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                          bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    if task.kind == "ordinal":
        label_args = {"num_labels": 1, "problem_type": "regression", "id2label": {0: "score"}, "label2id": {"score": 0}}
    else:
        label_args = {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)},
                      "problem_type": "multi_label_classification" if task.kind == "multi_label" else "single_label_classification"}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        net = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32, **label_args, **extra)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load {model!r} for sequence classification", [str(e).splitlines()[0]]) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    net.config.pad_token_id = tokenizer.pad_token_id
    if config.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        net = prepare_model_for_kbit_training(net)
    if config.lora or config.load_in_4bit:
        from peft import LoraConfig, get_peft_model

        net = get_peft_model(net, LoraConfig(task_type="SEQ_CLS", r=config.lora_r, lora_alpha=config.lora_alpha,
                                             lora_dropout=config.lora_dropout, target_modules=config.target_modules))
    return tokenizer, net


def fit(task: TaskSpec, train: Examples, validation: Examples | None, config: Config, model: str,
        run_dir: Path, progress: bool = True, resume: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    from ..predictor import decide
    from ..report import compute_metrics

    # --- setup ---
    model_dir, ckpt_dir = run_dir / "model", run_dir / "checkpoints"
    tokenizer, net = _load_model(task, model, config)

    def encode(examples: Examples) -> Dataset:
        ds = Dataset.from_dict({"text": examples.texts, "labels": _targets(task, examples.labels)})
        return ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=config.max_length),
                      batched=True, remove_columns=["text"])

    train_ds, val_ds = encode(train), encode(validation)
    names = task.label_names

    def metrics(ev) -> dict:
        probs = _probabilities(task.kind, ev.predictions, len(names), sigma=1.0)
        pred = decide(task.kind, names, probs, {})
        out = compute_metrics(task, validation.labels, pred, probs)
        return {k: out[k] for k in ("macro_f1", "accuracy", "micro_f1", "weighted_f1", "mae", "subset_accuracy") if k in out}

    lr = config.learning_rate or (2e-4 if config.lora or config.load_in_4bit else 5e-5)
    per_epoch = "epoch" if config.eval_steps is None else "steps"
    args = TrainingArguments(
        output_dir=str(ckpt_dir), num_train_epochs=config.epochs, max_steps=config.max_steps, learning_rate=lr,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=config.batch_size * 2,
        gradient_accumulation_steps=config.gradient_accumulation, lr_scheduler_type=config.scheduler,
        warmup_steps=config.warmup, weight_decay=config.weight_decay,
        eval_strategy=per_epoch, save_strategy=per_epoch, eval_steps=config.eval_steps, save_steps=config.eval_steps,
        save_total_limit=2, load_best_model_at_end=True, metric_for_best_model=config.metric,
        greater_is_better=config.metric != "mae", logging_steps=config.logging_steps, report_to="none",
        seed=config.seed, use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        **({"gradient_checkpointing": True} if config.gradient_checkpointing else {}), disable_tqdm=not progress, save_only_model=False,
    )
    tensorboard = TensorBoardCallback()
    tensorboard.logging_dir = str(run_dir / "logs")
    trainer = Trainer(model=net, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_loss_func=_loss_fn(task, train, config.class_weight),
                      compute_metrics=metrics,
                      callbacks=[EarlyStoppingCallback(config.early_stopping_patience), tensorboard])

    # --- train ---
    has_checkpoint = resume and any(ckpt_dir.glob("checkpoint-*"))
    result = trainer.train(resume_from_checkpoint=True if has_checkpoint else None)

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
            "trainable_parameters": trainable,
            "resumed": bool(has_checkpoint)}


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
