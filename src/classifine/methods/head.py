"""``head``: ``AutoModelForSequenceClassification`` fine-tuned with the HF Trainer.

Encoders and decoders (Gemma 3 included), full or LoRA (peft), 4-bit NF4 with CUDA. Losses:
class-weighted cross-entropy (single_label), BCE with per-label positive weights (multi_label),
weighted MSE on the scale position (ordinal). The best checkpoint by a task metric is kept, with
early stopping. The saved model folder is plain transformers (LoRA merged), so
``pipeline("text-classification", model=run/model, top_k=None)`` works without classifine, and
gives classifine's answers: ``fold_decision`` writes what is tuned on validation (class offsets,
temperature, multi-label thresholds, the ordinal level rule) into the classifier layer itself
(README.md, "Load runs without classifine").
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..core.accel import ENGINES, ONNX_FILES, Forward, cache_key, graph_engine, onnx_cache, outputs, read_choice, requested
from ..core.budget import plan_for_encoder, token_lengths, truncation
from ..core.data import Examples
from ..core.runs import atomic_write_json
from ..core.settings import (AdapterSettings, InferenceSettings, NonNegative, Positive, TrainerSettings, load_for_training,
                             quiet_trainer, resume_checkpoint, trainer_callbacks, training_arguments)
from ..core.task import TaskSpec
from ..errors import RunError
from ..scoring.decision import class_weights, ordinal_probabilities, probabilities, softmax
from ..scoring.kinds import validation_metrics

KINDS = ("single_label", "multi_label", "ordinal")
REFUSED = {"extraction": "a sequence-classification head labels whole texts and cannot name entities: use method sft for extraction"}
NEEDS_MODEL = True
TRAINS = True
META = "classifine_head.json"


class Config(TrainerSettings, AdapterSettings, InferenceSettings):
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
    logits = np.asarray(logits, dtype=np.float64)
    if kind == "ordinal" and (logits.ndim == 1 or logits.shape[1] == 1):  # a folded head has one logit per level
        return ordinal_probabilities(logits.reshape(-1), sigma, n_labels)
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
    # a plain tokenizer call with truncation=True (pipeline(..., truncation=True)) then cuts where training did
    tokenizer.model_max_length = config.max_length
    tokenizer.save_pretrained(model_dir)
    (model_dir / META).write_text(json.dumps({"kind": task.kind, "labels": names, "max_length": config.max_length,
                                              "sigma": sigma, "base_model": model}, ensure_ascii=False, indent=1))
    return {"steps": int(result.global_step), "train_loss": float(result.training_loss),
            "best_checkpoint": trainer.state.best_model_checkpoint, "best_metric": trainer.state.best_metric,
            "trainable_parameters": trainable, "resumed": resumed}


# --- decisions folded into the classifier layer ---------------------------------------------------
# The Predictor turns a method's probabilities into answers with what training tuned on validation
# (decision.json). transformers' pipeline never reads that file, so for head runs the decisions go
# into the layer that produces the logits, which is exact because each is affine in the logits:
#   single_label  softmax((z + o) / T)          = softmax(W' h + b'),  W' = W / T,  b' = (b + o) / T
#   multi_label   sigmoid(z) >= t  <=>  sigmoid(z - logit(t)) >= 0.5,   b' = b - logit(t)
#   ordinal       softmax(-(l - s)^2 / (2 sigma^2 T)) over levels l: the s^2 term is the same for
#                 every level, so it is softmax(a_l s + c_l), a_l = l / (sigma^2 T), c_l = -l^2 / (2 sigma^2 T):
#                 the one-output regression layer becomes one output per level.
# Decoder heads in transformers have no bias (`score` is Linear(bias=False)), so offsets,
# thresholds other than 0.5 and ordinal levels cannot be folded there: nothing is folded then,
# and decision.json keeps applying them (the pipeline's answers differ; README says how).
# The raw layer stays recoverable: META["folded"] holds what was folded (W = T W', b = T b' - o, ...),
# the LoRA adapter in model/adapter is never folded, and `fit` always rewrites raw weights, so a
# resumed run tunes its decisions on raw probabilities again.

PROBES = ["a", "The quick brown fox jumps over the lazy dog.", "0 1 2 3 4 5 6 7 8 9"]


def _output_layer(net, n_out: int):
    """(name, module) of the linear layer whose outputs are the logits: the last one with
    ``n_out`` outputs (``classifier``, ``classifier.out_proj``, ``score``, ...)."""
    import torch

    found = [(name, m) for name, m in net.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == n_out]
    return found[-1] if found else (None, None)


def _folded_layer(task: TaskSpec, decision: dict, W: np.ndarray, b: np.ndarray | None, sigma: float):
    """(W', b', folded decision keys, note); W' None when the decision cannot be folded."""
    T = float(decision.get("temperature", 1.0))
    if task.kind == "single_label":
        offsets = decision.get("offsets")
        if offsets and b is None:
            return None, None, [], "class offsets need a bias, and this model's classifier layer has none"
        bias = None if b is None else (b + np.asarray(offsets if offsets else 0.0)) / T
        return W / T, bias, (["offsets"] if offsets else []) + (["temperature"] if "temperature" in decision else []), None
    if task.kind == "multi_label":
        t = np.clip([decision.get("thresholds", {}).get(lab, 0.5) for lab in task.label_names], 1e-6, 1 - 1e-6)
        shift = np.log(t / (1 - t))
        if b is None and np.any(shift != 0):
            return None, None, [], "thresholds other than 0.5 need a bias, and this model's classifier layer has none"
        return W, None if b is None else b - shift, ["thresholds"] if "thresholds" in decision else [], None
    if b is None:
        return None, None, [], "an ordinal head's level rule needs a bias, and this model's classifier layer has none"
    levels = np.arange(len(task.label_names), dtype=np.float64)
    a = levels / (sigma ** 2 * T)
    return a[:, None] * W, a * b[0] - levels ** 2 / (2 * sigma ** 2 * T), ["temperature"] if "temperature" in decision else [], None


def _expected(task: TaskSpec, decision: dict, logits: np.ndarray, sigma: float) -> np.ndarray:
    """What the Predictor answers from raw logits with ``decision`` (exactly, without clipping)."""
    T = float(decision.get("temperature", 1.0))
    if task.kind == "single_label":
        return softmax((logits + np.asarray(decision.get("offsets") or 0.0)) / T)
    if task.kind == "multi_label":
        t = np.clip([decision.get("thresholds", {}).get(lab, 0.5) for lab in task.label_names], 1e-6, 1 - 1e-6)
        return probabilities("multi_label", logits - np.log(t / (1 - t)))
    levels = np.arange(len(task.label_names), dtype=np.float64)
    return softmax(-((levels[None, :] - logits.reshape(-1, 1)) ** 2) / (2 * sigma ** 2 * T))


def _write_tensors(model_dir: Path, new: dict) -> bool:
    """Replace tensors in the model's safetensors file(s), keeping everything else and the dtype;
    each file through a temp file and a rename (hard-linked copies elsewhere stay untouched)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    index = model_dir / "model.safetensors.index.json"
    where = (json.loads(index.read_text())["weight_map"] if index.is_file()
             else {k: "model.safetensors" for k in new} if (model_dir / "model.safetensors").is_file() else {})
    if any(k not in where for k in new):
        return False
    shards = sorted({where[k] for k in new})
    for shard in shards:  # every tensor is found before any file is rewritten
        with safe_open(str(model_dir / shard), "pt") as f:
            if any(k not in f.keys() for k in new if where[k] == shard):
                return False
    for shard in shards:
        path = model_dir / shard
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(path))
        for k, v in new.items():
            if where[k] == shard:
                tensors[k] = torch.as_tensor(v).to(tensors[k].dtype).contiguous()
        tmp = path.with_name(f".{path.name}.folding")
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    return True


def fold_decision(model_dir: Path, task: TaskSpec, decision: dict) -> dict:
    """Write ``decision`` (tuned on the raw model's probabilities) into the classifier layer of the
    saved model; returns the decision to save, with ``folded``: the keys the model now applies
    itself (the Predictor skips them). Checked on probe texts before anything is written."""
    import torch

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / META).read_text())
    if meta.get("folded") is not None:
        raise RunError(f"{model_dir} already has its decisions folded into the classifier layer",
                       ["decisions are tuned on raw weights: train again (--overwrite), or --resume, which rewrites them"])
    scorer = Scorer.load(model_dir, engine="torch")
    net, n_out = scorer.net, int(scorer.net.config.num_labels)
    name, layer = _output_layer(net, n_out)
    if layer is None:
        return {**decision, "folded": [], "fold_note": "no linear output layer found to fold the decisions into"}
    W = layer.weight.detach().double().numpy()
    b = None if layer.bias is None else layer.bias.detach().double().numpy()
    W2, b2, keys, note = _folded_layer(task, decision, W, b, meta["sigma"])
    if W2 is None:
        return {**decision, "folded": [], "fold_note": note}
    enc = scorer.tokenizer(PROBES + [" ".join(task.label_names)], padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        raw = net(**enc).logits.double().numpy()
        new = torch.nn.Linear(W2.shape[1], W2.shape[0], bias=b2 is not None)
        new.weight.data = torch.as_tensor(W2).to(layer.weight.dtype)
        if b2 is not None:
            new.bias.data = torch.as_tensor(b2).to(layer.weight.dtype)
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, new)
        got = net(**enc).logits.double().numpy()
    expected = _expected(task, decision, raw, meta["sigma"])
    got = probabilities(task.kind if task.kind != "ordinal" else "single_label", got)
    if got.shape != expected.shape or np.abs(got - expected).max() > 1e-4:
        return {**decision, "folded": [], "fold_note": f"folding did not reproduce the decisions on probe texts ({name})"}
    tensors = {f"{name}.weight": W2}
    if b2 is not None:
        tensors[f"{name}.bias"] = b2
    if not _write_tensors(model_dir, tensors):
        return {**decision, "folded": [], "fold_note": f"the saved weights hold no tensor named {name}.weight"}
    if task.kind == "ordinal":  # the regression head became a classifier over the levels
        config = json.loads((model_dir / "config.json").read_text())
        config.update(id2label={str(i): lab for i, lab in enumerate(task.label_names)},
                      label2id={lab: i for i, lab in enumerate(task.label_names)}, problem_type="single_label_classification")
        atomic_write_json(model_dir / "config.json", config)
    folded = {k: decision[k] for k in keys}
    atomic_write_json(model_dir / META, {**meta, "folded": {"layer": name, "decision": folded,
                                                            "ordinal_levels": task.kind == "ordinal"}})
    return {**decision, "folded": keys}


class Scorer:
    """Logits of the saved classifier through ``core/accel.Forward``: PyTorch, or the run's ONNX
    graph (``engine``: the run's choice in model/inference.json unless overridden)."""

    ENGINES = ENGINES

    def __init__(self, tokenizer, forward: Forward, meta: dict, n_out: int):
        self.tokenizer, self.forward, self.meta, self.n_out = tokenizer, forward, meta, n_out

    @property
    def engine(self) -> str:
        return self.forward.engine

    @property
    def net(self):
        """The PyTorch model (loaded on first use when another engine runs the forward pass)."""
        return self.forward.module().model

    @classmethod
    def load(cls, model_dir: Path, engine: str | None = None, build: bool = False) -> "Scorer":
        """``build``: export a missing graph into the run (training); otherwise a run without one
        exports into the cache, keyed by its weights, and leaves the run as it was."""
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        model_dir = Path(model_dir)
        engine = graph_engine(requested(engine) or read_choice(model_dir)["engine"])
        meta = json.loads((model_dir / META).read_text())
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        # model_max_length is the run's max_length: truncation() measures texts past it on purpose
        tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True

        def module():
            return outputs(AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32), "logits")

        folder = model_dir / "onnx"
        if not build and not (folder / ONNX_FILES.get(engine, "")).is_file():  # never write into a finished run
            folder = onnx_cache(cache_key(model_dir.resolve(), files=list(model_dir.glob("*.safetensors"))))
        n_out = int(AutoConfig.from_pretrained(str(model_dir)).num_labels)
        return cls(tokenizer, Forward(tokenizer, meta["max_length"], module, engine, folder), meta, n_out)

    def truncation(self, texts: list[str]) -> dict:
        """What max_length cuts from these texts (the report's truncation section)."""
        budget = self.meta["max_length"] - self.tokenizer.num_special_tokens_to_add()
        return {"max_length": self.meta["max_length"], **truncation(token_lengths(self.tokenizer, texts), budget)}

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        logits = self.forward(list(texts)) if texts else np.zeros((0, self.n_out))
        return _probabilities(self.meta["kind"], logits.astype(np.float64), len(self.meta["labels"]), self.meta["sigma"])
