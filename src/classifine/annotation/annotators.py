"""Annotators: an OpenAI-compatible server, or a local causal LM scored with classifine's own label
scoring. Both take a task and a batch of texts and return one result per text (``label``,
``probabilities``, ``confidence``, ``valid``, ``raw``), asking the answer cache first.

Few-shot examples: the server gets them as earlier chat turns (user: the example's prompt,
assistant: its answer), the pattern chat models and base models behind a chat template follow
best; the local scorer gets them in the instruction (``with_examples``), because its prompt frame
is one user turn whose KV cache every text of a batch shares.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass

import numpy as np

from ..core.data import Examples
from ..core.task import TaskSpec
from ..errors import AnnotatorError, ConfigError
from ..generative.prompts import answer_text, instruction, label_question, prompt_body
from . import answers
from .cache import AnswerCache

SHOT_MODES = ("fixed", "similar", "diverse")


def with_examples(task: TaskSpec, shots: list[tuple[str, object]]) -> TaskSpec:
    """The task with labelled examples appended to its instruction."""
    if not shots:
        return task
    lines = []
    for text, gold in shots:
        if task.kind == "multi_label":
            answer = ", ".join(gold) if gold else "none of the labels"
        else:
            answer = answer_text(task, gold)
        lines.append(f"Text: {text}\nAnswer: {answer}")
    return task.model_copy(update={"instruction": instruction(task) + "\n\nExamples:\n\n" + "\n\n".join(lines)})


class ExamplePicker:
    """Few-shot examples from labelled rows: ``fixed`` (the file's first k), ``diverse`` (one per
    label in turn, the same for every text) or ``similar`` (the k nearest by TF-IDF cosine over
    character n-grams, which works for any script)."""

    def __init__(self, pool: Examples, k: int, mode: str = "diverse", seed: int = 13):
        if mode not in SHOT_MODES:
            raise ConfigError(f"unknown example choice {mode!r}", [f"use one of {', '.join(SHOT_MODES)}"])
        self.pool, self.k, self.mode = pool, min(k, len(pool)), mode
        self._fixed = list(range(self.k)) if mode == "fixed" else self._diverse(seed)
        if mode == "similar":
            from sklearn.feature_extraction.text import TfidfVectorizer

            self._vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, max_features=50000)
            self._matrix = self._vec.fit_transform(pool.texts)

    def _diverse(self, seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        by_label: dict[str, list[int]] = {}
        for i, y in enumerate(self.pool.labels):
            key = y if isinstance(y, str) else json.dumps(sorted(y))
            by_label.setdefault(key, []).append(i)
        queues = [list(rng.permutation(v)) for _, v in sorted(by_label.items())]
        picked: list[int] = []
        while len(picked) < self.k:
            for q in queues:
                if q and len(picked) < self.k:
                    picked.append(int(q.pop()))
        return picked

    def shots(self, texts: list[str]) -> list[list[tuple[str, object]]]:
        if self.k == 0:
            return [[] for _ in texts]
        if self.mode != "similar":
            fixed = [(self.pool.texts[i], self.pool.labels[i]) for i in self._fixed]
            return [fixed for _ in texts]
        sims = (self._vec.transform(texts) @ self._matrix.T).toarray()
        out = []
        for row, text in zip(sims, texts):
            order = [i for i in np.argsort(-row, kind="stable") if self.pool.texts[i] != text][:self.k]
            out.append([(self.pool.texts[i], self.pool.labels[i]) for i in order[::-1]])  # nearest last
        return out

    def describe(self) -> dict:
        return {"mode": self.mode, "k": self.k, "rows": len(self.pool)}


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass
class ServerAnnotator:
    """An OpenAI-compatible chat endpoint; temperature 0, log-probabilities with 20 alternatives."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    timeout: float = 60.0
    retries: int = 5
    top_logprobs: int = 20
    # off for servers that refuse log-probabilities or pay dearly for them (llama-cpp-python computes
    # them for every prompt position): the answer alone then decides, with no confidence
    logprobs: bool = True
    backoff: float = 0.5  # seconds before the first retry; doubles each time (a Retry-After header wins)
    client: object = None

    def identity(self) -> dict:
        # the URL is left out on purpose: the same model behind another port answers the same
        return {"type": "openai-compatible", "model": self.model,
                "top_logprobs": self.top_logprobs if self.logprobs else None}

    def name(self) -> str:
        return f"{self.model} @ {self.base_url}"

    def payloads(self, task: TaskSpec, text: str, shots: list[tuple[str, object]] = ()) -> list[dict]:
        def ask(question: str | None, answer, max_tokens: int, stop: list[str] | None = None) -> dict:
            turns = []
            for shot_text, gold in shots:
                turns += [{"role": "user", "content": prompt_body(task, shot_text, question)},
                          {"role": "assistant", "content": answer(gold)}]
            turns.append({"role": "user", "content": prompt_body(task, text, question)})
            extra = {"logprobs": True, "top_logprobs": self.top_logprobs} if self.logprobs else {}
            return {"messages": turns, "temperature": 0, "max_tokens": max_tokens, **extra, **({"stop": stop} if stop else {})}
        if task.kind == "multi_label":
            return [ask(label_question(lab), lambda gold, lab=lab: "yes" if lab in gold else "no", 4, ["\n"])
                    for lab in task.label_names]
        if task.kind == "extraction":
            return [ask(None, lambda gold: answer_text(task, gold), 256)]
        # a token spells at least one byte; the slack shows what an invalid answer was. Only the
        # first line is read, so the server may stop there.
        longest = max(len(answer_text(task, lab).encode("utf-8")) for lab in task.label_names)
        return [ask(None, lambda gold: answer_text(task, gold), 8 + longest, ["\n"])]

    def key(self, payload: dict) -> str:
        return _key(self.identity(), payload)

    def result(self, task: TaskSpec, responses: list[dict]) -> dict:
        choices = [r["choices"][0] for r in responses]
        if task.kind == "multi_label":
            return answers.multi_label(task, [answers.yes_probability(c) for c in choices])
        if task.kind == "extraction":
            return answers.extraction(task, choices[0])
        return answers.classify(task, choices[0])

    async def annotate(self, task: TaskSpec, texts: list[str], shots: list[list], cache: AnswerCache) -> list[dict]:
        async def one(text: str, examples: list) -> dict:
            async def call(payload: dict) -> dict:
                key = self.key(payload)
                hit = cache.get(key)
                if hit is not None:
                    return hit
                response = await self.client.chat(payload)
                cache.put(key, response)
                return response
            responses = await asyncio.gather(*(call(p) for p in self.payloads(task, text, examples)))
            return self.result(task, list(responses))
        return list(await asyncio.gather(*(one(x, s) for x, s in zip(texts, shots))))


@dataclass
class LocalAnnotator:
    """A causal LM on this machine (packaged name, path or Hugging Face id), scored with the label
    scorer: every answer is a valid label with a probability for every label."""

    model: str
    batch_size: int = 8
    max_length: int = 1024
    _net: object = None
    _tokenizer: object = None

    def identity(self) -> dict:
        return {"type": "local", "model": self.model, "max_length": self.max_length}

    def name(self) -> str:
        return f"{self.model} (local, label scoring)"

    def _load(self) -> None:
        if self._net is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..core.models import resolve

        path = resolve(self.model)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path)
            self._net = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        except (OSError, ValueError) as e:
            raise AnnotatorError(f"cannot load {self.model!r} as a causal language model",
                                 [f"{type(e).__name__}: {str(e)[:300]}", "pass a packaged name (classifine models), "
                                  "a local folder or a Hugging Face id of a decoder LM"]) from None

    def key(self, task: TaskSpec, text: str) -> str:
        return _key(self.identity(), task.to_yaml(), task.instruction, text)

    async def annotate(self, task: TaskSpec, texts: list[str], shots: list[list], cache: AnswerCache) -> list[dict]:
        from ..generative.causal_lm import GenerativeScorer

        tasks = [with_examples(task, s) for s in shots]
        keys = [self.key(t, x) for t, x in zip(tasks, texts)]
        out: list[dict | None] = [cache.get(k) for k in keys]
        todo = [i for i, r in enumerate(out) if r is None]
        # rows that share a prompt (fixed or diverse examples) are scored together
        groups: dict[str, list[int]] = {}
        for i in todo:
            groups.setdefault(tasks[i].instruction or "", []).append(i)
        for idx in groups.values():
            self._load()
            task = tasks[idx[0]]
            meta = {"max_length": self.max_length, "decoding": "score", "score_batch_size": self.batch_size,
                    "temperature": 1.0, "score_answer_end": False}
            scorer = GenerativeScorer(self._net, self._tokenizer, meta, task)
            batch = [texts[i] for i in idx]
            if task.kind == "extraction":
                for i, found in zip(idx, scorer.extract(batch)):
                    ents = [e for e in found if e["confidence"] >= task.min_confidence]
                    out[i] = {"label": [e["name"] for e in ents], "entities": ents, "probabilities": None,
                              "confidence": min((e["confidence"] for e in found), default=None),
                              "valid": True, "raw": json.dumps({task.entity: [e["name"] for e in found]}, ensure_ascii=False)}
            else:
                probs = scorer.predict_proba(batch)
                for i, p in zip(idx, probs):
                    out[i] = _local_result(task, p)
            for i in idx:
                cache.put(keys[i], out[i])
        return out  # type: ignore[return-value]


def _local_result(task: TaskSpec, p: np.ndarray) -> dict:
    names = task.label_names
    probs = {n: round(float(x), 6) for n, x in zip(names, p)}
    if task.kind == "multi_label":
        label, conf = answers.choose_labels(task, probs)
        raw = json.dumps(label, ensure_ascii=False)
    else:
        label = names[int(np.argmax(p))]
        conf, raw = probs[label], label
    return {"label": label, "probabilities": probs, "confidence": round(float(conf), 6), "valid": True, "raw": raw}


def make_annotator(model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4,
                   timeout: float = 60.0, retries: int = 5, batch_size: int = 8,
                   logprobs: bool = True) -> ServerAnnotator | LocalAnnotator:
    """A server annotator when ``base_url`` is given, else the local model ``model``."""
    problems = []
    if not model:
        problems.append("--model is required: the server's model name, or a local model (packaged name, path, HF id)")
    if concurrency < 1:
        problems.append(f"--concurrency {concurrency}: use 1 or more")
    if timeout <= 0:
        problems.append(f"--timeout {timeout}: use a positive number of seconds")
    if retries < 0:
        problems.append(f"--retries {retries}: use 0 or more")
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        problems.append(f"--base-url {base_url!r} is not an http(s) URL: e.g. http://127.0.0.1:8080/v1")
    if problems:
        raise ConfigError("the annotator settings are not valid:", problems)
    if base_url is not None:
        return ServerAnnotator(base_url, model, api_key_env, concurrency, timeout, retries, logprobs=logprobs)
    from ..core.models import resolve

    resolve(model)  # an unknown packaged name fails here, with the list of names
    return LocalAnnotator(model, batch_size=batch_size)
