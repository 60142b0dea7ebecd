"""``orpo``: ORPO preference tuning (TRL's ``ORPOTrainer``) on pairs built from labelled data.

chosen = the gold answer; rejected = the model's own wrong answer where it has one (label scoring
of the untuned model), else a sampled wrong label; multi-label questions flip yes/no; extraction
gets a corrupted entity set (an entity dropped, or a wrong span added). Several tasks can be trained
into one model (``tasks: [other.yaml, ...]``, read by training.py): each adds its training data,
every example carrying its own task's instruction; the run's own task picks the best checkpoint. ``class_weight`` acts by sampling
(each task's pairs drawn in proportion to its class weights), since TRL's ORPO loss takes no weights.

ORPOTrainer computes full-vocabulary logits for chosen and rejected sequences, so a step costs
about twice an sft step on Gemma's 262k vocabulary.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import numpy as np

from ..core.data import Examples, TaskExamples
from ..core.settings import (AdapterSettings, AtLeast1, GenerativeSettings, MultiTaskSettings, Positive,
                             TrainerSettings, quiet_trainer, trainer_callbacks, training_arguments)
from ..core.task import TaskSpec
from ..generative.causal_lm import GenerativeScorer, load_causal_lm
from ..generative.decoding import LabelScorer
from ..generative.prompts import PromptFormat, answer_text, truncate_texts
from ..generative.trainer import (example_weights, extraction_stratum, selection_metric, task_answer_budget, task_trainer, train_and_save,
                                  training_pairs)
from ..generative.trainer import prepare as prepare_generative

KINDS = ("single_label", "multi_label", "ordinal", "extraction")
REFUSED: dict[str, str] = {}
NEEDS_MODEL = True
TRAINS = True
MULTI_TASK = True


class Config(TrainerSettings, AdapterSettings, GenerativeSettings, MultiTaskSettings):
    epochs: Positive = 1.0
    learning_rate: Positive = 1e-4
    beta: Positive = 0.1          # weight of the odds-ratio term
    batch_size: AtLeast1 = 4
    scheduler: Literal["cosine", "linear", "constant"] = "linear"
    negatives: AtLeast1 = 1
    own_rejections: bool = True    # rejected = the model's own wrong answer where it has one


def _corrupt(gold: list[str], text: str, rng: random.Random) -> list[str]:
    """A plausible wrong entity set: drop one, or add a span of the text that is not an entity."""
    words = [w.strip(".,;:()\"'") for w in text.split()]
    spans = [w for w in words if w and w not in gold]
    if gold and (not spans or rng.random() < 0.5):
        return [g for i, g in enumerate(gold) if i != rng.randrange(len(gold))]
    return gold + [rng.choice(spans)] if spans else ["none"]


def build_pairs(task: TaskSpec, examples: Examples, fmt: PromptFormat, model, tokenizer, config: Config) -> list[dict]:
    rng = random.Random(config.seed)
    # the pairs' answers get their own room (ORPOConfig.max_length is max_length + 96)
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
                     "draw": weights.get(gold if isinstance(gold, str) else extraction_stratum(gold), 1.0)})
    return rows


def fit(task: TaskSpec, train: Examples, validation: Examples | None, config: Config, model: str,
        run_dir: Path, progress: bool = True, resume: bool = False, others: list[TaskExamples] = ()) -> dict:
    from datasets import Dataset
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    # --- setup: the pairs of every task, each with its own instruction ---
    tokenizer, net = load_causal_lm(model, config)
    fmt = PromptFormat.for_tokenizer(tokenizer)
    rows = build_pairs(task, train, fmt, net, tokenizer, config)
    per_task, budgets = {task.name: len(rows)}, {}
    for o in others:
        budgets[o.task.name] = task_answer_budget(o.task, fmt, o.train.labels)
        other_rows = build_pairs(o.task, o.train, fmt, net, tokenizer, config)
        per_task[o.task.name] = len(other_rows)
        rows += other_rows
    own_share = float(np.mean([r.pop("own", False) for r in rows])) if rows else 0.0
    np.random.default_rng(config.seed).shuffle(rows)
    draw = [r.pop("draw") for r in rows]  # class weights act through the sampler: TRL's loss takes none
    base, val = task_trainer(ORPOTrainer, task, tokenizer, validation, config, draw)
    val_rows = build_pairs(task, val, fmt, net, tokenizer, config.model_copy(update={"own_rejections": False}))
    for r in val_rows:
        r.pop("own", None)
        r.pop("draw", None)
    args = training_arguments(config, run_dir, selection_metric(task), progress, args_class=ORPOConfig,
                              beta=config.beta, max_length=config.max_length + 96)
    trainer = quiet_trainer(base(model=net, args=args, train_dataset=Dataset.from_list(rows),
                                 eval_dataset=Dataset.from_list(val_rows), processing_class=tokenizer,
                                 callbacks=trainer_callbacks(config, run_dir)), progress)

    # --- train, then save ---
    info = train_and_save(trainer, task, tokenizer, validation, config, model, run_dir, resume, others, budgets)
    return {**info, "pairs": per_task, "rejected_from_own_answers": round(own_share, 4)}


prepare = prepare_generative  # setup: max_length and the answer budget from the training data
Scorer = GenerativeScorer
