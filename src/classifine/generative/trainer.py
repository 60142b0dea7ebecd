"""Training a causal LM to answer the task's prompt (shared by sft, orpo and pretrain): the
(prompt, answer) token ids of each example, class weights applied by sampling or on the loss, the
left-padded collator, the loss that runs the LM head only on answer positions, and the Trainer whose
evaluation scores validation rows with the task's metric.

Why not TRL's SFTTrainer: see docs/DESIGN-NOTES.md ("Generative methods") for the measured step
times. In short, its loss is a mean over answer tokens (ours: a weighted mean over examples of each
answer's mean token loss, so class weights and long JSON answers weigh as intended), and it
tokenizes prompt and completion itself, while label scoring needs the prompt tokenised in the
pieces it caches (prompts.py).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..core.budget import load_tokenizer, model_caps, plan_max_length, token_lengths
from ..core.data import Examples
from ..core.settings import quiet_trainer, resume_checkpoint, trainer_callbacks, training_arguments
from ..core.task import TaskSpec
from ..scoring.decision import calibration, class_weights, probabilities
from ..scoring.kinds import validation_metrics
from .causal_lm import GenerativeRun
from .decoding import LabelScorer
from .prompts import PromptFormat, answer_budget, extraction_answer_budget, frame_tokens, truncate_texts


def training_pairs(task: TaskSpec, examples: Examples, seed: int, negatives: int = 2) -> list[tuple[str, object, str]]:
    """(text, gold, stratum) triples to train on. Multi-label asks one yes/no question per label:
    all positives plus up to ``negatives`` per positive (at least one) sampled negatives per text."""
    if task.kind == "extraction":
        return [(t, y, extraction_stratum(y)) for t, y in zip(examples.texts, examples.labels)]
    if task.kind != "multi_label":
        return [(t, y, y) for t, y in zip(examples.texts, examples.labels)]
    rng = random.Random(seed)
    out = []
    for text, gold in zip(examples.texts, examples.labels):
        neg = [lab for lab in task.label_names if lab not in gold]
        k = min(len(neg), max(1, negatives * len(gold)))
        out += [(text, ("yes", lab), lab) for lab in gold] + [(text, ("no", lab), "no") for lab in rng.sample(neg, k)]
    return out


def encode_features(task: TaskSpec, fmt: PromptFormat, pairs, max_length: int,
                    weights: dict[str, float], budget: int | None = None) -> tuple[list[dict], int]:
    """Token ids of prompt and answer per pair, and how many inputs had to be shortened."""
    texts, truncated = truncate_texts(fmt, task, [p[0] for p in pairs], max_length, answer_budget(task, fmt, budget))
    feats = []
    for text, (orig, gold, stratum) in zip(texts, pairs):
        if task.kind == "multi_label":
            answer, label = gold
            p, answer_str = fmt.prompt_ids(task, text, label), answer + fmt.end_text
        else:
            p, answer_str = fmt.prompt_ids(task, text), fmt.answer(task, gold)
        feats.append({"prompt": p, "answer": fmt.ids(answer_str), "weight": weights.get(stratum, 1.0)})
    return feats, truncated


def extraction_stratum(entities) -> str:
    """Extraction's two classes: answers that name entities and empty ones."""
    return "entities" if entities else "none"


def example_weights(task: TaskSpec, train: Examples, class_weight) -> dict[str, float]:
    """Class weights: the answer's label for single_label/ordinal, the label of a "yes" for
    multi_label ("no" weighs 1), and for extraction whether the answer names any entity at all, so
    that where most texts name none (news articles without a company) the model does not learn []
    as the safe answer: ``balanced`` draws both kinds of answer equally often."""
    if task.kind == "extraction":
        strata = ["entities", "none"]
        counts = {s: sum(1 for y in train.labels if extraction_stratum(y) == s) for s in strata}
        return class_weights(strata, counts, class_weight)
    if task.kind in ("single_label", "ordinal"):
        counts = {lab: sum(1 for y in train.labels if y == lab) for lab in task.label_names}
        return class_weights(task.label_names, counts, class_weight)
    counts = {lab: sum(1 for y in train.labels if lab in y) for lab in task.label_names}  # multi_label
    return {**class_weights(task.label_names, counts, class_weight), "no": 1.0}


class ClassBalancedSampler:
    """Class weights applied by what the model sees rather than by how much each loss counts: every
    epoch draws exactly ``len(weights)`` indices, example i about ``n * w_i / sum(w)`` times (floor or
    ceil, by systematic resampling over a fresh permutation), shuffled. A rare class's examples
    come back several times per epoch, a frequent class's are thinned without repeats.

    Why not loss weights: the Trainer clips the gradient norm (max_grad_norm 1.0; LoRA steps here
    run at norms of 2-25), so the one batch in four that holds a 9x-weighted rare example is scaled
    back like any other, and that class's share of the updates ends far below its weight (observed:
    "Extreme Hate", 3.6% of the data, was never predicted). Why not torch's WeightedRandomSampler:
    drawing with replacement also repeats and skips examples of the frequent classes at random."""

    def __init__(self, weights: list[float], seed: int = 13):
        self.weights = np.asarray(weights, dtype=np.float64)
        if (self.weights <= 0).any():
            raise ValueError("sampling weights must be positive")
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.weights)

    def indices(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.weights)
        order = rng.permutation(n)
        edges = np.cumsum(self.weights[order]) / self.weights.sum() * n
        picks = np.searchsorted(edges, rng.random() + np.arange(n), side="right")
        return rng.permutation(order[np.minimum(picks, n - 1)])

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        return iter(self.indices(epoch).tolist())


def balanced_sampler(weights: list[float], seed: int) -> ClassBalancedSampler | None:
    """The sampler for these weights, or None (the Trainer's own shuffling) when they are all equal."""
    return None if not weights or np.allclose(weights, weights[0]) else ClassBalancedSampler(weights, seed)


def collate(features: list[dict], pad_id: int) -> dict:
    """Left-pad prompt+answer; labels only on answer tokens; logits kept for the answer tail."""
    import torch

    T = max(len(f["prompt"]) + len(f["answer"]) for f in features)
    A = max(len(f["answer"]) for f in features)
    ids = torch.full((len(features), T), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, f in enumerate(features):
        seq = f["prompt"] + f["answer"]
        ids[i, T - len(seq):] = torch.tensor(seq)
        labels[i, T - len(f["answer"]):] = torch.tensor(f["answer"])
        mask[i, T - len(seq):] = 1
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "labels": labels, "weights": torch.tensor([f["weight"] for f in features], dtype=torch.float32),
            "logits_to_keep": A + 1}


def answer_loss(model, inputs: dict):
    """Weighted mean over examples of the mean token loss of each example's answer."""
    import torch.nn.functional as F

    labels, weights = inputs.pop("labels"), inputs.pop("weights")
    out = model(**inputs)
    keep = out.logits.shape[1]                        # logits_to_keep, or every position when it is 0
    logits = out.logits[:, :-1].float()               # positions T-keep .. T-2 predict T-keep+1 .. T-1
    targets = labels[:, labels.shape[1] - keep + 1:]
    tok_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                               reduction="none").view(targets.shape)
    n_tok = (targets != -100).sum(1).clamp(min=1)
    per_example = tok_loss.sum(1) / n_tok
    w = weights.to(per_example.device)
    return (per_example * w).sum() / w.sum(), out


def task_metric_fn(task: TaskSpec, tokenizer, val: Examples, config):
    """model -> the task's selection metrics on the validation rows, by label scoring."""
    def task_metrics(model) -> dict:
        scores = LabelScorer(model, tokenizer, task, config.score_batch_size).scores(val.texts)
        return validation_metrics(task, val.labels, probabilities(task.kind, scores))
    return task_metrics


def selection_metric(task: TaskSpec) -> str:
    """What picks the best checkpoint: macro-F1 by label scoring; the answer loss for extraction."""
    return "loss" if task.kind == "extraction" else "macro_f1"


def task_trainer(base, task: TaskSpec, tokenizer, validation: Examples, config, draw: list[float]):
    """``base`` (the HF Trainer, or TRL's ORPOTrainer) made to draw each example ``draw[i]``-times as
    often as others (class weights by sampling) and to evaluate by the task's metric on up to
    ``eval_rows`` validation rows, so the best checkpoint is the one that classifies best."""
    val = validation.subset(range(min(len(validation), config.eval_rows)))
    task_metrics = None if task.kind == "extraction" else task_metric_fn(task, tokenizer, val, config)

    class TaskTrainer(base):
        def _get_train_sampler(self, train_dataset=None):
            return balanced_sampler(draw, config.seed) or super()._get_train_sampler(train_dataset)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if task_metrics is None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            self.model.eval()
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in task_metrics(self.model).items()}
            self.model.train()
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return TaskTrainer, val


def make_trainer(task: TaskSpec, net, tokenizer, feats: list[dict], validation: Examples, config, run_dir: Path,
                 progress: bool):
    """A Trainer with answer-only loss (``answer_loss``) that selects its best checkpoint by the task's
    metric. A feature's ``draw`` weight (class weights by sampling) sets how often it is drawn."""
    from transformers import Trainer

    fmt = PromptFormat.for_tokenizer(tokenizer)
    draw = [f.pop("draw", 1.0) for f in feats]
    base, val = task_trainer(Trainer, task, tokenizer, validation, config, draw)
    val_feats, _ = encode_features(task, fmt, training_pairs(task, val, config.seed), config.max_length, {},
                                   config.answer_budget)

    class AnswerTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, out = answer_loss(model, inputs)
            return (loss, out) if return_outputs else loss

    args = training_arguments(config, run_dir, selection_metric(task), progress, remove_unused_columns=False,
                              prediction_loss_only=True)
    pad = tokenizer.pad_token_id
    return quiet_trainer(AnswerTrainer(model=net, args=args, train_dataset=feats, eval_dataset=val_feats,
                                       data_collator=lambda f: collate(f, pad), callbacks=trainer_callbacks(config, run_dir)),
                         progress)


def calibrate(task: TaskSpec, net, tokenizer, validation: Examples, config) -> dict:
    """Multi-label: a temperature for the per-label yes/no probabilities, with ECE before and after
    (on the same rows, so 'after' is optimistic: the test report gives the honest figure). Single-
    label and ordinal runs are calibrated after training like every method (decision.tune_decision)."""
    if task.kind != "multi_label" or not config.calibrate:
        return {"temperature": 1.0}
    val = validation.subset(range(min(len(validation), max(config.eval_rows, 200))))
    scores = LabelScorer(net.eval(), tokenizer, task, config.score_batch_size).scores(val.texts)
    targets = np.array([[lab in y for lab in task.label_names] for y in val.labels], dtype=float)
    return calibration(task.kind, scores, targets)


def task_answer_budget(task: TaskSpec, fmt: PromptFormat, labels: list | None, given: int | None = None) -> int:
    """Tokens kept for the answer: the user's, else read from the training answers (extraction) or
    the longest label's answer."""
    if given:
        return given
    return extraction_answer_budget(fmt, task, labels) if task.kind == "extraction" else answer_budget(task, fmt)


def other_tasks_meta(others, net, tokenizer, config, budgets: dict[str, int]) -> dict:
    """What generative.json keeps per other task of a multi-task run (causal_lm.TASK_META)."""
    return {o.task.name: {"kind": o.task.kind, "labels": o.task.label_names, "answer_budget": budgets.get(o.task.name),
                          **calibrate(o.task, net, tokenizer, o.validation, config)} for o in others}


def train_and_save(trainer, task: TaskSpec, tokenizer, validation: Examples, config, model: str, run_dir: Path,
                   resume: bool, others=(), budgets: dict[str, int] | None = None) -> dict:
    """Train (continuing from a checkpoint with ``resume``), calibrate the best model (for each task
    of a multi-task run) and save the run's model folder; returns the facts every generative method
    records."""
    checkpoint = resume_checkpoint(run_dir, resume)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    resumed = checkpoint is not None
    best = trainer.model
    facts = calibrate(task, best, tokenizer, validation, config)
    if others:
        facts["tasks"] = other_tasks_meta(others, best, tokenizer, config, budgets or {})
    GenerativeRun.save(run_dir / "model", task, model, config, best, tokenizer, **facts)
    return {"steps": int(result.global_step), "train_loss": float(result.training_loss),
            "best_checkpoint": trainer.state.best_model_checkpoint, "best_metric": trainer.state.best_metric,
            "resumed": resumed, **facts}


def training_features(task: TaskSpec, fmt: PromptFormat, train: Examples, config) -> tuple[list[dict], int]:
    """Token ids per training example with its class weight: on the loss (``weight``) or, with
    ``balance_by: sampling``, on how often it is drawn (``draw``, read by make_trainer)."""
    pairs = training_pairs(task, train, config.seed, config.negatives)
    feats, truncated = encode_features(task, fmt, pairs, config.max_length, example_weights(task, train, config.class_weight),
                                       config.answer_budget)
    if config.balance_by == "sampling":
        for f in feats:
            f["draw"], f["weight"] = f["weight"], 1.0
    return feats, truncated


def plan_budget(task: TaskSpec, train: Examples, config, tokenizer, model_path: str | None = None) -> tuple[object, dict]:
    """The settings with ``max_length`` and ``answer_budget`` read from the training data (unless the
    user set them), and the facts behind them: prompt frame, answer budget, text lengths and what
    the budget cuts (core/budget.py). A user's max_length that blinds the model is refused here."""
    fmt = PromptFormat.for_tokenizer(tokenizer)
    answer = task_answer_budget(task, fmt, train.labels, config.answer_budget)
    frame = frame_tokens(fmt, task)
    caps = {} if model_path is None else model_caps(model_path, config.batch_size, training=True)
    facts = plan_max_length(token_lengths(tokenizer, train.texts, config.seed), frame + answer, config.max_length,
                            config.allow_truncation, caps, floor=16, parts={"prompt_frame": frame, "answer_budget": answer})
    return config.model_copy(update={"max_length": facts["max_length"], "answer_budget": answer}), facts


def prepare(task: TaskSpec, train: Examples, config, model: str) -> tuple[object, dict]:
    """The generative methods' setup step (sft, orpo): budgets from the data, before any training."""
    tokenizer, path = load_tokenizer(model)
    return plan_budget(task, train, config, tokenizer, path)
