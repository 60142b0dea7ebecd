"""Causal LMs in and out of a run: loading one to train (LoRA / QLoRA as the settings say), the
saved format of a generative run (``GenerativeRun`` writes and reads it; nothing else does), and
``GenerativeScorer``, which predicts with a loaded run.

A generative run's ``model/`` holds ``generative.json`` (kind, labels, base model, max_length,
decoding, calibration) and the weights: a LoRA adapter (peft), a full model, optionally merged
16-bit weights in ``model/merged``; a zero-shot run holds only the JSON and names its base model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.budget import token_lengths, truncation
from ..core.models import resolve
from ..core.runs import atomic_write_text
from ..core.settings import AdapterSettings, load_for_training
from ..core.task import TaskSpec, load_task
from ..errors import ConfigError
from ..scoring.decision import probabilities
from .decoding import EntityDecoder, LabelScorer, generate_answers, parse_answer
from .prompts import PromptFormat, answer_budget, frame_tokens, truncate_texts

META = "generative.json"
# what differs between the tasks of a multi-task run (generative.json's "tasks" holds these per task)
TASK_META = ("kind", "labels", "answer_budget", "temperature")


def load_causal_lm(model: str, adapters: AdapterSettings):
    """(tokenizer, model) ready to train: LoRA-wrapped unless ``lora`` is off, 4-bit with CUDA."""
    from transformers import AutoModelForCausalLM

    return load_for_training(AutoModelForCausalLM, model, adapters, "CAUSAL_LM", "as a causal language model")


@dataclass
class GenerativeRun:
    """The saved format of a generative run's ``model/`` folder."""

    model_dir: Path
    meta: dict

    @classmethod
    def save(cls, model_dir: Path, task: TaskSpec, base_model: str, settings, net=None, tokenizer=None,
             **facts) -> "GenerativeRun":
        """Write the weights (``net`` and ``tokenizer``; none for a zero-shot run) and the metadata.
        ``settings`` carries max_length, decoding, max_new_tokens, score_batch_size and merge;
        ``facts`` adds e.g. the multi-label temperature or ``zero_shot``."""
        if net is not None:
            net.save_pretrained(model_dir)  # the LoRA adapter (peft) or the full model
            tokenizer.save_pretrained(model_dir)
            if getattr(settings, "merge", False) and hasattr(net, "merge_and_unload"):
                import torch

                net.merge_and_unload().to(torch.bfloat16).save_pretrained(model_dir / "merged")
                tokenizer.save_pretrained(model_dir / "merged")
        meta = {"kind": task.kind, "labels": task.label_names, "base_model": base_model,
                "max_length": settings.max_length, "decoding": settings.decoding,
                "max_new_tokens": settings.max_new_tokens, "score_batch_size": settings.score_batch_size,
                "answer_budget": settings.answer_budget, "score_answer_end": False, **facts}
        atomic_write_text(model_dir / META, json.dumps(meta, ensure_ascii=False, indent=1))
        return cls(model_dir, meta)

    @classmethod
    def read(cls, model_dir: Path) -> "GenerativeRun":
        return cls(Path(model_dir), json.loads((Path(model_dir) / META).read_text()))

    @property
    def zero_shot(self) -> bool:
        return bool(self.meta.get("zero_shot"))

    def weights_dir(self) -> Path | None:
        """A folder of full weights that other engines (vLLM) load: the merged weights, the run's
        own full model, or the base model of a zero-shot run; None for an adapter alone."""
        if self.zero_shot:
            return Path(resolve(self.meta["base_model"]))
        if (self.model_dir / "merged" / "config.json").is_file():
            return self.model_dir / "merged"
        if (self.model_dir / "config.json").is_file() and not (self.model_dir / "adapter_config.json").is_file():
            return self.model_dir
        return None

    def load_model(self):
        """(model, tokenizer) in fp32; an adapter is merged in memory, which scores faster."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        weights = self.weights_dir()
        if weights is not None:
            tokenizer_dir = weights if self.zero_shot else self.model_dir
            return (AutoModelForCausalLM.from_pretrained(str(weights), dtype=torch.float32),
                    AutoTokenizer.from_pretrained(str(tokenizer_dir)))
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(resolve(self.meta["base_model"]), dtype=torch.float32)
        net = PeftModel.from_pretrained(base, str(self.model_dir)).merge_and_unload()
        return net, AutoTokenizer.from_pretrained(str(self.model_dir))


class GenerativeScorer:
    """Predicts with a generative run: label scoring (or free generation) for classification,
    schema-constrained JSON for extraction. ``label_scorer`` replaces the torch scorer (vLLM)."""

    def __init__(self, model, tokenizer, meta: dict, task: TaskSpec, label_scorer: LabelScorer | None = None):
        self.model, self.tokenizer, self.meta, self.task = model, tokenizer, meta, task
        if model is not None:
            model.eval()
        self.decoding = meta.get("decoding", "score")
        self.last_invalid: list[bool] = []
        self.fmt = PromptFormat.for_tokenizer(tokenizer)
        self._label_scorer = label_scorer
        self._entity_decoder: EntityDecoder | None = None
        self.root: GenerativeScorer | None = None  # the run's own task's scorer, for a multi-task run's others

    @classmethod
    def load(cls, model_dir: Path) -> "GenerativeScorer":
        run = GenerativeRun.read(model_dir)
        model, tokenizer = run.load_model()
        return cls(model, tokenizer, run.meta, load_task(Path(model_dir).parent / "task.yaml"))

    def for_task(self, task: TaskSpec) -> "GenerativeScorer":
        """The scorer of another task of a multi-task run: the same model and tokenizer (loaded
        once), that task's prompt, answer budget and calibration."""
        root = self.root or self
        if task.name == root.task.name:
            return root
        tasks = root.meta.get("tasks") or {}
        if task.name not in tasks:
            raise ConfigError(f"this model was not trained for the task {task.name!r}",
                              [f"its tasks: {', '.join([root.task.name, *tasks])}"])
        meta = {k: v for k, v in root.meta.items() if k not in TASK_META and k != "tasks"}
        scorer = GenerativeScorer(self.model, self.tokenizer, {**meta, **tasks[task.name]}, task)
        scorer.root = root
        return scorer

    def _texts(self, texts: list[str]) -> list[str]:
        return truncate_texts(self.fmt, self.task, texts, self.meta["max_length"], self.answer_budget)[0]

    @property
    def answer_budget(self) -> int:
        return answer_budget(self.task, self.fmt, self.meta.get("answer_budget"))

    def truncation(self, texts: list[str]) -> dict:
        """What max_length cuts from these texts (the report's truncation section)."""
        budget = self.meta["max_length"] - frame_tokens(self.fmt, self.task) - self.answer_budget
        return {"max_length": self.meta["max_length"], **truncation(token_lengths(self.tokenizer, texts), budget)}

    def scores(self, texts: list[str]) -> np.ndarray:
        if self._label_scorer is None:  # built once: it tokenizes every label
            self._label_scorer = LabelScorer(self.model, self.tokenizer, self.task, self.meta.get("score_batch_size", 8),
                                             answer_end=self.meta.get("score_answer_end", True))
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
            self._entity_decoder = EntityDecoder(self.model, self.tokenizer, self.task, max_new_tokens=self.answer_budget)
        return [self._entity_decoder.decode(self.fmt.prompt_ids(self.task, t))[0] for t in self._texts(texts)]
