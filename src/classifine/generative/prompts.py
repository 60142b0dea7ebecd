"""Prompts and answers for generative methods, rendered from the task spec.

One renderer serves training and inference, and prompt and answer are tokenised separately and
concatenated in both, so the token boundary the model learns is exactly the one it is scored on.
Models with a chat template get it (the packaged Gemma gets Gemma's turn template); others get a
plain "Answer:" layout. Multi-label tasks ask one yes/no question per label after a shared prefix,
so the prefix's KV cache serves every label (see decoding.py).

A prompt is tokenised in fixed pieces: the frame before the input text (the same for every text of
a task), the text with what follows it, and for multi-label the label's question. Each piece is
tokenised on its own, in training and inference alike, so the scorer can compute the frame's KV
cache once for all documents and still see exactly the tokens the model was trained on.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..core.task import TaskSpec

log = logging.getLogger("classifine")

MARK = "\x00LABEL\x00"  # where a multi-label question is spliced into a rendered prompt
TEXT = "\x00TEXT\x00"    # where the input text goes
DEFAULT_INSTRUCTIONS = {
    "single_label": "Classify the text into exactly one of the labels.",
    "ordinal": "Rate the text on the scale below; answer with one value of the scale.",
    "multi_label": "Decide whether the text has the label named below.",
    "extraction": "List every {entity} named in the text, exactly as written, as JSON.",
}


def instruction(task: TaskSpec) -> str:
    text = (task.instruction or DEFAULT_INSTRUCTIONS[task.kind]).strip()
    labels = ", ".join(task.label_names)
    return text.replace("{labels}", labels).replace("{entity}", task.entity)


def _label_block(task: TaskSpec) -> str:
    if task.kind == "extraction":
        return f'Answer with JSON of the form {{"{task.entity}": ["...", "..."]}}; use [] when there is none.'
    lines = [f"- {lab}: {desc}" if desc else f"- {lab}" for lab, desc in task.labels.items()]
    head = "Labels:" if task.kind != "ordinal" else "Scale (lowest first):"
    return head + "\n" + "\n".join(lines)


def prompt_body(task: TaskSpec, text: str, question: str | None = None) -> str:
    """The user's message for one text: instruction, labels (or the JSON form), the text and, for
    multi-label, the label's question. Chat templates and annotators wrap it."""
    parts = [instruction(task), _label_block(task) if task.kind != "multi_label" else "", f"Text:\n{text}"]
    if question is not None:
        parts.append(question)
    return "\n\n".join(p for p in parts if p)


def label_question(label: str) -> str:
    return f"Label:\n{label}\nDoes the text have this label? Answer yes or no."


def _key(task: TaskSpec) -> tuple:
    """What a task's prompt frame depends on (a cache key that outlives no task it describes)."""
    return task.kind, instruction(task), tuple((task.labels or {}).items()), task.entity


def answer_text(task: TaskSpec, gold) -> str:
    """The answer the model is trained to give (without the end-of-turn marker)."""
    if task.kind == "extraction":
        return json.dumps({task.entity: list(gold)}, ensure_ascii=False)
    if task.output == "json":
        return json.dumps({task.label_column: gold}, ensure_ascii=False)
    return str(gold)


@dataclass
class PromptFormat:
    """How prompts are wrapped for one tokenizer: chat template or plain text."""

    tokenizer: object
    end_text: str
    _cache: dict = field(default_factory=dict, repr=False)  # per task: the frame and its token ids

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "PromptFormat":
        vocab = tokenizer.get_vocab()
        # Gemma ends a model turn with <end_of_turn>, other chat models with their eos token
        end = "<end_of_turn>" if getattr(tokenizer, "chat_template", None) and "<end_of_turn>" in vocab else tokenizer.eos_token
        if not end:
            raise ConfigError("the tokenizer has no end-of-sequence token", ["use a model whose tokenizer defines eos_token"])
        return cls(tokenizer, end)

    @property
    def chat(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def wrap(self, body: str) -> str:
        if self.chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                                      add_generation_prompt=True)
        bos = self.tokenizer.bos_token or ""
        return f"{bos}{body}\n\nAnswer:\n"

    def body(self, task: TaskSpec, text: str, question: str | None = None) -> str:
        return prompt_body(task, text, question)

    def _parts(self, task: TaskSpec) -> tuple[str, str, str]:
        """(before the input text, after it up to a multi-label question, after that question's
        label; empty for other kinds)."""
        key = ("frame", _key(task))
        if key not in self._cache:
            question = label_question(MARK) if task.kind == "multi_label" else None
            head, tail = self.wrap(self.body(task, TEXT, question)).split(TEXT, 1)
            middle, _, rest = tail.partition(MARK)
            self._cache[key] = (head, middle, rest)
        return self._cache[key]

    def frame(self, task: TaskSpec) -> tuple[str, str]:
        """(what comes before the input text, what comes after it). Multi-label: the part after
        the text runs up to the label's question."""
        return self._parts(task)[:2]

    def prompt(self, task: TaskSpec, text: str) -> str:
        if task.kind == "multi_label":
            raise ValueError("multi-label prompts are split per label: use split_prompt")
        head, tail = self.frame(task)
        return head + text + tail

    def split_prompt(self, task: TaskSpec, text: str) -> tuple[str, list[str]]:
        """Multi-label: (shared prefix, one suffix per label). Prefix + suffix is the full prompt
        for that label's yes/no question; the answer is "yes" or "no"."""
        head, tail, rest = self._parts(task)
        return head + text + tail, [self._label_line(task, lab) + rest for lab in task.label_names]

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def head_ids(self, task: TaskSpec) -> list[int]:
        """Token ids of the frame before the input text: the same for every text of the task."""
        key = ("head", _key(task))
        if key not in self._cache:
            self._cache[key] = self.ids(self.frame(task)[0])
        return self._cache[key]

    def text_ids(self, task: TaskSpec, text: str) -> list[int]:
        """Token ids of the input text and what follows it, up to the answer (multi-label: up to the
        label's question)."""
        return self.ids(text + self.frame(task)[1])

    def question_ids(self, task: TaskSpec) -> list[list[int]]:
        """Multi-label: token ids of each label's question, up to the answer."""
        key = ("questions", _key(task))
        if key not in self._cache:
            self._cache[key] = [self.ids(sfx) for sfx in self.split_prompt(task, "")[1]]
        return self._cache[key]

    def prompt_ids(self, task: TaskSpec, text: str, label: str | None = None) -> list[int]:
        """The prompt's token ids, pieced as the scorer pieces them; ``label`` picks a multi-label
        question."""
        ids = self.head_ids(task) + self.text_ids(task, text)
        if task.kind == "multi_label":
            if label is None:
                raise ValueError("a multi-label prompt asks about one label: pass label")
            ids = ids + self.question_ids(task)[task.label_names.index(label)]
        return ids

    @staticmethod
    def _label_line(task: TaskSpec, label: str) -> str:
        desc = task.labels[label]
        return f"{label} ({desc})" if desc else label

    def answer(self, task: TaskSpec, gold) -> str:
        return answer_text(task, gold) + self.end_text


def frame_tokens(fmt: PromptFormat, task: TaskSpec) -> int:
    """Tokens of the prompt around the input text (for multi-label, with the longest question)."""
    overhead = len(fmt.head_ids(task)) + len(fmt.text_ids(task, ""))
    if task.kind == "multi_label":
        overhead += max(len(q) for q in fmt.question_ids(task))
    return overhead


def truncate_texts(fmt: PromptFormat, task: TaskSpec, texts: list[str], max_length: int, answer_budget: int) -> tuple[list[str], int]:
    """Shorten input texts (never the instruction or the answer) so prompt + answer fit in
    ``max_length`` tokens. Returns the texts and how many were truncated."""
    tok = fmt.tokenizer
    overhead = frame_tokens(fmt, task)
    budget = max_length - overhead - answer_budget
    if budget < 8:
        raise ConfigError(f"max_length {max_length} leaves no room for the input text",
                          [f"the instruction, labels and answer take {overhead + answer_budget} tokens: raise max_length "
                           "or shorten the instruction and label descriptions"])
    out, cut = [], 0
    for text in texts:
        ids = tok(text, add_special_tokens=False).input_ids
        if len(ids) > budget:
            text = tok.decode(ids[:budget], skip_special_tokens=True)
            cut += 1
        out.append(text)
    if cut:
        log.warning("%d of %d input texts were truncated to fit max_length=%d (instruction and answer kept whole)",
                    cut, len(texts), max_length)
    return out, cut


EXTRACTION_ANSWER = 96  # the answer budget of extraction runs saved before it was read from the data


def answer_budget(task: TaskSpec, fmt: PromptFormat, saved: int | None = None) -> int:
    """Tokens reserved for the answer when inputs are truncated: the longest label answer; a yes/no
    for multi-label; for extraction the budget read from the training answers (``saved``)."""
    if saved:
        return int(saved)
    if task.kind == "extraction":
        return EXTRACTION_ANSWER
    if task.kind == "multi_label":
        return 4
    return max(len(fmt.ids(fmt.answer(task, lab))) for lab in task.label_names)


def extraction_answer_budget(fmt: PromptFormat, task: TaskSpec, answers: list) -> int:
    """The longest gold answer of the bulk of the data (99th percentile of the JSON answers'
    tokens) with a quarter more as margin, so a model is never cut off writing a typical answer."""
    import numpy as np

    lengths = [len(fmt.ids(fmt.answer(task, gold))) for gold in answers] or [len(fmt.ids(fmt.answer(task, [])))]
    return int(np.ceil(np.quantile(lengths, 0.99) * 1.25)) + 4
