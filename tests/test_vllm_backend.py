"""The vLLM backend on CPU: a fake engine with vLLM's generate/prompt_logprobs interface whose
log-probabilities come from the same weights run by torch. The backend must then give exactly the
torch backend's answers and probabilities: same run loading, same prompts, same label scoring."""
from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass

import pytest

import classifine
from classifine.predict.predictor import Predictor
from classifine.serve.vllm import load_vllm_predictor

from toy import QUICK

RECORDS = [{"title": "goal match", "body": "striker league coach"}, {"title": "market", "body": "shares profit bank"},
           {"title": "storm", "body": "rain forecast wind"}]


@dataclass
class _Logprob:
    logprob: float


@dataclass
class _Output:
    prompt_logprobs: list


class FakeLLM:
    """``LLM.generate`` with ``prompt_logprobs=0``: for every prompt position after the first, a dict
    holding the actual token's log-probability, computed by a full forward of a torch model."""

    def __init__(self, weights: str):
        import torch
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32).eval()
        self.sequences = 0

    def generate(self, prompts, params, use_tqdm=True):
        import torch

        assert params.kwargs == {"max_tokens": 1, "prompt_logprobs": 0, "temperature": 0.0}
        outs = []
        for p in prompts:
            ids = p["prompt_token_ids"]
            with torch.inference_mode():
                logp = torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), -1)
            outs.append(_Output([None] + [{tok: _Logprob(float(logp[i - 1, tok]))} for i, tok in enumerate(ids) if i]))
            self.sequences += 1
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    """The two names the backend imports from vllm at scoring time."""
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # find_spec("vllm") finds it
    module.SamplingParams = type("SamplingParams", (), {"__init__": lambda self, **kw: setattr(self, "kwargs", kw)})
    module.TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def _agree(run, llm) -> None:
    expected = Predictor.load(run).predict(RECORDS)
    got = load_vllm_predictor(run, llm=llm).predict(RECORDS)
    assert llm.sequences > 0, "the engine scored the labels"
    for e, g in zip(expected, got):
        assert g.get("label", g.get("labels")) == e.get("label", e.get("labels"))
        assert g["probabilities"] == pytest.approx(e["probabilities"], abs=1e-4)


@pytest.mark.parametrize("kind", ["single_label", "multi_label"])
def test_zero_shot_run_scores_like_the_torch_backend(kind, small_tasks, gemma_path, tmp_path, fake_vllm):
    from classifine.training import zero_shot

    zero_shot(small_tasks[kind], gemma_path, tmp_path / "base", progress=False)
    _agree(tmp_path / "base", FakeLLM(gemma_path))


def test_merged_sft_run_scores_like_the_torch_backend(small_tasks, gemma_path, tmp_path, fake_vllm):
    out = tmp_path / "run"
    classifine.train(small_tasks["ordinal"], method="sft", model=gemma_path, out=out,
                     config={**QUICK, "merge": True, "lora_r": 4}, progress=False)
    _agree(out, FakeLLM(str(out / "model" / "merged")))


def test_adapter_only_and_extraction_runs_are_refused_with_the_fix(small_tasks, gemma_path, tmp_path, fake_vllm):
    from classifine.core.runs import Run
    from classifine.errors import ConfigError
    from classifine.serve.vllm import check_environment

    out = tmp_path / "run"
    classifine.train(small_tasks["extraction"], method="sft", model=gemma_path, out=out,
                     config={**QUICK, "max_length": 384, "max_steps": 1}, progress=False)
    with pytest.raises(ConfigError) as e:
        check_environment(Run.load(out))
    problems = "\n".join(e.value.problems)
    assert "merge=true" in problems and "extraction" in problems
