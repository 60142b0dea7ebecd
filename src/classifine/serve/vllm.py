"""``classifine serve RUN --backend vllm``: generative runs served through vLLM on CUDA GPUs.

Only the engine is vLLM's: the run is read by ``GenerativeRun`` (the one reader of the generative
format), prompts and label continuations come from ``LabelScorer`` and answers from
``GenerativeScorer`` and the ``Predictor``, exactly as with the torch backend. What vLLM computes
is each continuation's summed log-probability after ``frame + text``: every sequence is submitted
with ``max_tokens=1, prompt_logprobs=0`` and the log-probs of the scored tokens are added up;
vLLM's prefix cache shares the frame and each text across labels. Tests run this path on CPU with
a fake engine whose log-probs come from a torch model, and compare with the torch backend.

vLLM loads full weights (``model/merged``, the run's own full model, or a zero-shot run's base
model) with ``trust_remote_code`` off unless the user turns it on.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..core.runs import Run
from ..errors import ConfigError
from ..generative.causal_lm import GenerativeRun, GenerativeScorer
from ..generative.decoding import LabelScorer
from ..methods import METHODS, is_generative
from ..predict.predictor import Predictor


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
    weights = None
    if not is_generative(run.method):
        generative = [m for m in METHODS if is_generative(m)]
        problems.append(f"run method {run.method!r} is not generative: vLLM serves {', '.join(generative)} runs; "
                        "serve this run with --backend torch")
    else:
        weights = GenerativeRun.read(run.model_dir).weights_dir()
        if weights is None:
            problems.append(f"{run.model_dir} holds a LoRA adapter but no merged weights: retrain with --set merge=true")
    if run.task.kind == "extraction":
        problems.append("extraction through vLLM is not implemented (it needs the constrained entity decoder): "
                        "serve with --backend torch")
    if problems:
        raise ConfigError(f"--backend vllm cannot serve {run.dir}:", problems)
    return weights


class VLLMEngine:
    """``LabelScorer``'s engine on a vLLM ``LLM``: summed log-probs of continuation tokens."""

    def __init__(self, llm):
        self.llm = llm

    def __call__(self, prompts: list[list[int]], conts: list[list[int]], shared: list[int],
                 scored_from: list[int]) -> np.ndarray:
        from vllm import SamplingParams, TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        seqs = [shared + p + c for p in prompts for c in conts]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs], params, use_tqdm=False)
        scores = np.zeros(len(seqs))
        for i, out in enumerate(outs):
            p, j = divmod(i, len(conts))
            start = len(shared) + len(prompts[p])
            # one dict per position (None for the first), holding at least the actual token
            logprobs = out.prompt_logprobs
            scores[i] = sum(logprobs[start + k][tok].logprob for k, tok in enumerate(conts[j]) if k >= scored_from[j])
        return scores.reshape(len(prompts), len(conts))


def vllm_scorer(run: Run, llm=None, trust_remote_code: bool = False) -> GenerativeScorer:
    """The run's GenerativeScorer with label scoring on vLLM (``llm``: an engine already built)."""
    from transformers import AutoTokenizer

    weights = check_environment(run) if llm is None else None  # every refusal before any file is read
    saved = GenerativeRun.read(run.model_dir)
    weights = weights or saved.weights_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(weights if saved.zero_shot else run.model_dir),
                                              trust_remote_code=trust_remote_code)
    if llm is None:
        from vllm import LLM

        llm = LLM(model=str(weights), tokenizer=str(weights), trust_remote_code=trust_remote_code,
                  enable_prefix_caching=True, dtype="auto")
    scorer = LabelScorer(None, tokenizer, run.task, engine=VLLMEngine(llm),
                         answer_end=saved.meta.get("score_answer_end", True))
    return GenerativeScorer(None, tokenizer, {**saved.meta, "decoding": "score"}, run.task, label_scorer=scorer)


def load_vllm_predictor(run_dir: str | Path, trust_remote_code: bool = False, llm=None) -> Predictor:
    return Predictor.load(run_dir, scorer=lambda run: vllm_scorer(run, llm, trust_remote_code))
