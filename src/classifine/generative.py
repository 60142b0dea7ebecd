"""Shared machinery of the generative methods (sft, orpo, pretrain): loading a causal LM with LoRA
(QLoRA with CUDA), answer-only training features, the trainer whose loss runs the LM head only on
answer positions, and the scorer that loads a generative run.

Why our own trainer rather than TRL's SFTTrainer: SFTTrainer computes full-vocabulary logits at
every position (it also logs entropy and token accuracy from them). With Gemma's 262k vocabulary
that makes a step about 3x slower and doubles memory (DESIGN.md §8). Left-padding every example
puts all answers at the end of the batch, so ``logits_to_keep`` = longest answer + 1 covers every
position that carries loss; the Trainer, peft and accelerate are used as they are.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np

from .data import Examples
from .decoding import EntityDecoder, LabelScorer, generate_answers, parse_answer, probabilities
from .errors import ConfigError, ModelError
from .heads import class_weights
from .models import resolve
from .prompts import PromptFormat, truncate_texts
from .task import TaskSpec

log = logging.getLogger("classifine")
META = "generative.json"


def load_causal_lm(model: str, lora: bool, r: int = 16, alpha: int = 32, dropout: float = 0.05,
                   target_modules="all-linear", load_in_4bit: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve(model)
    extra = {}
    if load_in_4bit:
        if not torch.cuda.is_available():
            raise ConfigError("load_in_4bit (QLoRA) needs a CUDA GPU", ["set load_in_4bit: false on CPU; LoRA alone works"])
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                          bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        net = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **extra)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load {model!r} as a causal language model", [str(e).splitlines()[0]]) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training

        net = prepare_model_for_kbit_training(net)
    if lora or load_in_4bit:
        from peft import LoraConfig, get_peft_model

        net = get_peft_model(net, LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, lora_dropout=dropout,
                                             target_modules=target_modules))
    return tokenizer, net


def training_pairs(task: TaskSpec, examples: Examples, seed: int, negatives: int = 2) -> list[tuple[str, object, str]]:
    """(text, gold, stratum) triples to train on. Multi-label asks one yes/no question per label:
    all positives plus up to ``negatives`` per positive (at least one) sampled negatives per text."""
    if task.kind != "multi_label":
        return [(t, y, y if isinstance(y, str) else "") for t, y in zip(examples.texts, examples.labels)]
    rng = random.Random(seed)
    out = []
    for text, gold in zip(examples.texts, examples.labels):
        neg = [lab for lab in task.label_names if lab not in gold]
        k = min(len(neg), max(1, negatives * len(gold)))
        out += [(text, ("yes", lab), lab) for lab in gold] + [(text, ("no", lab), "no") for lab in rng.sample(neg, k)]
    return out


def encode_features(task: TaskSpec, fmt: PromptFormat, pairs, max_length: int,
                    weights: dict[str, float]) -> tuple[list[dict], int]:
    """Token ids of prompt and answer per pair, and how many inputs had to be shortened."""
    texts, truncated = truncate_texts(fmt, task, [p[0] for p in pairs], max_length, answer_budget=answer_budget(task, fmt))
    feats = []
    for text, (orig, gold, stratum) in zip(texts, pairs):
        if task.kind == "multi_label":
            answer, label = gold
            p, answer_str = fmt.prompt_ids(task, text, label), answer + fmt.end_text
        else:
            p, answer_str = fmt.prompt_ids(task, text), fmt.answer(task, gold)
        feats.append({"prompt": p, "answer": fmt.ids(answer_str), "weight": weights.get(stratum, 1.0)})
    return feats, truncated


def answer_budget(task: TaskSpec, fmt: PromptFormat) -> int:
    if task.kind == "extraction":
        return 96
    if task.kind == "multi_label":
        return 4
    return max(len(fmt.ids(fmt.answer(task, lab))) for lab in task.label_names)


def example_weights(task: TaskSpec, train: Examples, class_weight) -> dict[str, float]:
    """Class weights for the loss: the answer's label for single_label/ordinal, the label of a
    "yes" for multi_label ("no" weighs 1); extraction is not weighted."""
    if task.kind in ("single_label", "ordinal"):
        counts = {lab: sum(1 for y in train.labels if y == lab) for lab in task.label_names}
        return class_weights(task.label_names, counts, class_weight)
    if task.kind == "multi_label":
        counts = {lab: sum(1 for y in train.labels if lab in y) for lab in task.label_names}
        w = class_weights(task.label_names, counts, class_weight)
        return {**w, "no": 1.0}
    return {}


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


class GenerativeScorer:
    """Loads a generative run (adapter, merged weights or a full model) and predicts with it."""

    def __init__(self, model, tokenizer, meta: dict, task: TaskSpec):
        self.model, self.tokenizer, self.meta, self.task = model.eval(), tokenizer, meta, task
        self.decoding = meta.get("decoding", "score")
        self.last_invalid: list[bool] = []
        self.fmt = PromptFormat.for_tokenizer(tokenizer)
        self._label_scorer: LabelScorer | None = None
        self._entity_decoder: EntityDecoder | None = None

    @classmethod
    def load(cls, model_dir: Path) -> "GenerativeScorer":
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .task import load_task

        meta = json.loads((model_dir / META).read_text())
        task = load_task(model_dir.parent / "task.yaml")
        if meta.get("zero_shot"):  # a base model evaluated without training: nothing saved but the meta
            path = resolve(meta["base_model"])
            return cls(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path), meta, task)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        if (model_dir / "merged").is_dir():
            net = AutoModelForCausalLM.from_pretrained(str(model_dir / "merged"), dtype=torch.float32)
        elif (model_dir / "adapter_config.json").is_file():
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(resolve(meta["base_model"]), dtype=torch.float32)
            net = PeftModel.from_pretrained(base, str(model_dir)).merge_and_unload()  # merged in memory: faster
        else:
            net = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        return cls(net, tokenizer, meta, task)

    def _texts(self, texts: list[str]) -> list[str]:
        return truncate_texts(self.fmt, self.task, texts, self.meta["max_length"], answer_budget(self.task, self.fmt))[0]

    def scores(self, texts: list[str]) -> np.ndarray:
        if self._label_scorer is None:  # built once: it tokenizes every label
            self._label_scorer = LabelScorer(self.model, self.tokenizer, self.task, self.meta.get("score_batch_size", 8))
        return self._label_scorer.scores(self._texts(texts))

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        if self.task.kind == "extraction":
            raise ConfigError("extraction runs predict entities, not label probabilities", ["use extract()"])
        if self.decoding == "generate" and self.task.kind != "multi_label":
            return self._generate(texts)
        self.last_invalid = [False] * len(texts)
        return probabilities(self.task.kind, self.scores(texts), self.meta.get("temperature", 1.0))

    def _generate(self, texts: list[str]) -> np.ndarray:
        prompts = [self.fmt.prompt_ids(self.task, t) for t in self._texts(texts)]
        answers = generate_answers(self.model, self.tokenizer, prompts, self.meta.get("max_new_tokens", 24),
                                   self.meta.get("score_batch_size", 8), stop=self.fmt.ids(self.fmt.end_text)[-1:])
        parsed = [parse_answer(self.task, a) for a in answers]
        self.last_invalid = [p is None for p in parsed]
        probs = np.zeros((len(texts), len(self.task.label_names)))
        for i, p in enumerate(parsed):
            if p is None:  # an invalid answer carries no information: uniform, and flagged
                probs[i] = 1.0 / probs.shape[1]
            else:
                probs[i, self.task.label_names.index(p)] = 1.0
        return probs

    def extract(self, texts: list[str]) -> list[list[dict]]:
        if self._entity_decoder is None:
            self._entity_decoder = EntityDecoder(self.model, self.tokenizer, self.task)
        return [self._entity_decoder.decode(self.fmt.prompt_ids(self.task, t))[0] for t in self._texts(texts)]
