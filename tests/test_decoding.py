"""Decoding for generative methods, on a tiny random Gemma 3 built in the test."""
from __future__ import annotations

import json

import numpy as np
import pytest

from classifine.decoding import (EntityDecoder, LabelScorer, check_label_tokens, fit_temperature, parse_answer,
                                 probabilities, score_continuations)
from classifine.errors import ConfigError
from classifine.prompts import PromptFormat, truncate_texts
from classifine.task import parse_task


@pytest.fixture(scope="module")
def lm(gemma_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(gemma_path).eval(), AutoTokenizer.from_pretrained(gemma_path)


def task(kind="single_label", **kw):
    base = {"name": "t", "kind": kind, "text": "text", "label_column": "y"}
    if kind != "extraction":
        base["labels"] = {"sports": "games", "business": "money", "weather": ""}
    return parse_task({**base, **kw})


def naive_scores(model, prompts, conts):
    """log P(cont | prompt) from one full forward per (prompt, continuation): the reference."""
    import torch

    out = np.zeros((len(prompts), len(conts)))
    for i, p in enumerate(prompts):
        for j, c in enumerate(conts):
            ids = torch.tensor([p + c])
            with torch.inference_mode():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            out[i, j] = sum(float(logp[len(p) - 1 + k, tok]) for k, tok in enumerate(c))
    return out


def test_shared_prompt_scoring_equals_full_forward(lm):
    model, tok = lm
    prompts = [tok(t, add_special_tokens=False).input_ids for t in ["<bos>goal match today", "<bos>a much longer prompt about the market and shares", "<bos>rain"]]
    conts = [tok(t, add_special_tokens=False).input_ids for t in ["sports<eos>", "business news<eos>", "weather<eos>", "storm"]]
    fast = score_continuations(model, tok, prompts, conts, batch_size=2)  # padding and batching exercised
    assert np.allclose(fast, naive_scores(model, prompts, conts), atol=2e-4)


def test_label_probabilities_are_valid_for_every_kind(lm):
    model, tok = lm
    for kind, t in (("single_label", task()), ("ordinal", task("ordinal", labels=[1, 2, 3])),
                    ("multi_label", task("multi_label")), ("single_label", task(output="json"))):
        scores = LabelScorer(model, tok, t).scores(["goal match", "market shares profit"])
        p = probabilities(kind, scores)
        assert p.shape == (2, len(t.label_names)) and ((p > 0) & (p < 1)).all()
        if kind != "multi_label":
            assert np.allclose(p.sum(1), 1)


def test_labels_that_tokenize_badly_are_refused(lm):
    _, tok = lm
    t = task()
    with pytest.raises(ConfigError, match="tokenize identically"):
        check_label_tokens(t, [[5, 6], [5, 6], [7]])
    with pytest.raises(ConfigError, match="tokenizes to nothing"):
        check_label_tokens(t, [[5], [], [7]])


def test_temperature_recovers_a_known_scale():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 4)) * 3
    p = probabilities("single_label", logits, 2.5)  # the data's true temperature
    y = np.array([rng.choice(4, p=row) for row in p])
    assert fit_temperature("single_label", logits, y) == pytest.approx(2.5, rel=0.1)


@pytest.mark.parametrize("text,expected", [("sports", "sports"), (" Business.\nmore", "business"), ("cooking", None), ("", None)])
def test_parse_free_text(text, expected):
    assert parse_answer(task(), text) == expected


def test_parse_json_answers():
    t = task(output="json")
    assert parse_answer(t, 'Sure! {"y": "weather", "confidence": 0.9}') == "weather"
    assert parse_answer(t, '{"y": "weather"') is None  # truncated JSON is invalid, not guessed


def test_constrained_decoding_always_parses(lm):
    model, tok = lm
    t = task("extraction", entity="company")
    decoder = EntityDecoder(model, tok, t, max_new_tokens=40, max_entity_chars=12)
    fmt = PromptFormat.for_tokenizer(tok)
    for text in ["Acme Corp and Globex", "nothing here", "삼성전자 shares"]:  # a random model: any output must still parse
        found, raw = decoder.decode(fmt.prompt(t, text))
        obj = json.loads(raw)
        assert list(obj) == ["company"] and all(isinstance(x, str) for x in obj["company"])
        assert [e["name"] for e in found] == [x for x in obj["company"]][: len(found)]
        assert all(0 <= e["confidence"] <= 1 for e in found)


def test_entity_grammar_accepts_exactly_the_canonical_layout(lm):
    model, tok = lm
    d = EntityDecoder(model, tok, task("extraction", entity="org"))
    ok = ['{"org": []}', '{"org": ["A"]}', '{"org": ["A b", "C"]}']
    bad = ['{"org": [""]}', '{"org": ["A",]}', '{"orgs": []}', '{"org": ["a\\"b"]}', '{"org": ["A"] }']
    for doc in ok:
        assert d._advance(("head", 0), doc) == ("done",), doc
    for doc in bad:
        state = d._advance(("head", 0), doc)
        assert state != ("done",), doc


def test_long_inputs_are_truncated_but_instruction_kept(lm):
    _, tok = lm
    t = task(instruction="Classify carefully.")
    fmt = PromptFormat.for_tokenizer(tok)
    texts, cut = truncate_texts(fmt, t, ["goal " * 400, "short"], max_length=128, answer_budget=4)
    assert cut == 1 and texts[1] == "short"
    prompt = fmt.prompt(t, texts[0])
    assert "Classify carefully." in prompt and len(tok(prompt, add_special_tokens=False).input_ids) <= 124
    with pytest.raises(ConfigError, match="no room"):
        truncate_texts(fmt, t, ["x"], max_length=20, answer_budget=4)


def test_multi_label_prompt_splits_at_the_label(lm):
    _, tok = lm
    t = task("multi_label")
    fmt = PromptFormat.for_tokenizer(tok)
    prefix, suffixes = fmt.split_prompt(t, "goal match")
    assert len(suffixes) == 3 and "goal match" in prefix
    assert suffixes[0].startswith("sports (games)") and "weather" not in suffixes[1]


def test_answer_loss_is_the_same_with_and_without_restricting_the_lm_head(lm):
    import torch

    from classifine.generative import answer_loss, collate

    model, tok = lm
    feats = [{"prompt": tok("<bos>goal match", add_special_tokens=False).input_ids, "answer": tok("sports<eos>", add_special_tokens=False).input_ids, "weight": 1.0},
             {"prompt": tok("<bos>a longer prompt about shares", add_special_tokens=False).input_ids, "answer": tok("business<eos>", add_special_tokens=False).input_ids, "weight": 2.0}]
    batch = collate(feats, tok.pad_token_id)
    with torch.inference_mode():
        kept, _ = answer_loss(model, dict(batch))
        full, _ = answer_loss(model, {**batch, "logits_to_keep": 0})
    assert float(kept) == pytest.approx(float(full), rel=1e-5)
