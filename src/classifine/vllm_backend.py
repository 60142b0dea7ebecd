"""``classifine serve RUN --backend vllm``: generative runs served through vLLM on CUDA GPUs.

UNTESTED HERE: this machine and CI have no GPU and no vLLM, so only the refusal path (no CUDA / no
vLLM / not a generative run → a ConfigError listing every reason) is covered by tests. The scoring
below mirrors ``decoding.LabelScorer`` (same prompts from ``prompts.PromptFormat``, same label
continuations, same calibration temperature), so the answers should match the torch backend up to
floating-point differences; check that on a GPU before relying on it.

vLLM loads the run's merged weights (``model/merged``, or ``model/`` when it holds a full model)
with ``trust_remote_code`` off unless the user turns it on. Label scoring uses prompt log-probs:
each (prompt + label) sequence is submitted with ``max_tokens=1, prompt_logprobs=0`` and the
log-probs of the label's tokens are summed; vLLM's prefix cache shares the prompt across labels.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .runs import Run

GENERATIVE_METHODS = ("sft", "orpo", "pretrain")


def _weights_dir(run: Run) -> Path | None:
    merged = run.model_dir / "merged"
    if (merged / "config.json").is_file():
        return merged
    if (run.model_dir / "config.json").is_file() and not (run.model_dir / "adapter_config.json").is_file():
        return run.model_dir
    return None


def check_environment(run: Run) -> Path:
    """Every reason vLLM cannot serve this run, at once; returns the weights folder."""
    problems = []
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if not has_cuda:
        problems.append("no CUDA GPU is visible (torch.cuda.is_available() is False): vLLM runs on CUDA GPUs; "
                        "on this machine serve with --backend torch")
    if importlib.util.find_spec("vllm") is None:
        problems.append("vLLM is not installed: `pip install vllm` on a CUDA machine")
    if run.method not in GENERATIVE_METHODS:
        problems.append(f"run method {run.method!r} is not generative: vLLM serves {', '.join(GENERATIVE_METHODS)} runs; "
                        "serve this run with --backend torch")
    if run.task.kind == "extraction":
        problems.append("extraction through vLLM is not implemented (it needs the constrained entity decoder): "
                        "serve with --backend torch")
    weights = _weights_dir(run) if run.method in GENERATIVE_METHODS else None
    if run.method in GENERATIVE_METHODS and weights is None:
        problems.append(f"{run.model_dir} holds a LoRA adapter but no merged weights: retrain with --set merge=true")
    if problems:
        raise ConfigError(f"--backend vllm cannot serve {run.dir}:", problems)
    return weights


class VLLMScorer:
    """``predict_proba(texts)`` computed by a vLLM engine; same shape as the methods' scorers."""

    def __init__(self, llm, tokenizer, task, meta: dict):
        from .prompts import PromptFormat

        self.llm, self.tokenizer, self.task, self.meta = llm, tokenizer, task, meta
        self.fmt = PromptFormat.for_tokenizer(tokenizer)
        if task.kind == "multi_label":
            self.yes_no = [self.fmt.ids(w + self.fmt.end_text) for w in ("yes", "no")]
        else:
            self.label_ids = [self.fmt.ids(self.fmt.answer(task, lab)) for lab in task.label_names]

    @classmethod
    def load(cls, run: Run, weights: Path, trust_remote_code: bool = False) -> "VLLMScorer":
        from transformers import AutoTokenizer
        from vllm import LLM

        from .generative import META

        meta = json.loads((run.model_dir / META).read_text())
        tokenizer = AutoTokenizer.from_pretrained(str(weights), trust_remote_code=trust_remote_code)
        llm = LLM(model=str(weights), tokenizer=str(weights), trust_remote_code=trust_remote_code,
                  enable_prefix_caching=True, dtype="auto")
        return cls(llm, tokenizer, run.task, meta)

    def _sequence_logprobs(self, sequences: list[tuple[list[int], list[int]]]) -> np.ndarray:
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p + c) for p, c in sequences], params, use_tqdm=False)
        scores = np.zeros(len(sequences))
        for i, ((prompt, cont), out) in enumerate(zip(sequences, outs)):
            logprobs = out.prompt_logprobs  # one dict per position (None for the first), holding the actual token
            scores[i] = sum(logprobs[len(prompt) + j][tok].logprob for j, tok in enumerate(cont))
        return scores

    def scores(self, texts: list[str]) -> np.ndarray:
        n_labels = len(self.task.label_names)
        if self.task.kind != "multi_label":
            seqs = [(self.fmt.prompt_ids(self.task, t), lab) for t in texts for lab in self.label_ids]
            return self._sequence_logprobs(seqs).reshape(len(texts), n_labels)
        seqs = []
        for t in texts:  # pieced as in training (prompts.py), so vLLM scores the tokens the model learned
            seqs += [(self.fmt.prompt_ids(self.task, t, lab), yn) for lab in self.task.label_names for yn in self.yes_no]
        s = self._sequence_logprobs(seqs).reshape(len(texts), n_labels, 2)
        return s[..., 0] - s[..., 1]  # log-odds of "yes", as LabelScorer

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        from .decoding import probabilities

        return probabilities(self.task.kind, self.scores(texts), self.meta.get("temperature", 1.0))


class VLLMPredictor:
    @staticmethod
    def load(run_dir: str | Path, trust_remote_code: bool = False):
        from .predictor import Predictor

        run = Run.load(run_dir)
        weights = check_environment(run)
        path = run.model_dir / "decision.json"
        decision = json.loads(path.read_text()) if path.exists() else {}
        return Predictor(run, VLLMScorer.load(run, weights, trust_remote_code), decision)
