"""Decoding for generative methods, on a tiny random Gemma 3 built in the test."""
from __future__ import annotations

import json

import numpy as np
import pytest

from classifine.generative.decoding import (EntityDecoder, LabelScorer, check_label_tokens, generate_answers,
                                            parse_answer, score_continuations)
from classifine.scoring.decision import fit_temperature, probabilities
from classifine.errors import ConfigError
from classifine.generative.prompts import PromptFormat, answer_text, truncate_texts
from classifine.core.task import parse_task


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


def test_the_kv_cache_goes_under_the_keyword_this_transformers_reads_without_warning(lm):
    # transformers 5.2x renamed past_key_values to cache and warns on the old name (gone in 5.40)
    import inspect
    import warnings

    from classifine.generative.decoding import cache_keyword, lm_parts

    model, tok = lm
    decoder = lm_parts(model)[0]
    assert cache_keyword(decoder) in inspect.signature(decoder.forward).parameters
    prompts = [tok(t, add_special_tokens=False).input_ids for t in ["<bos>goal match today", "<bos>rain"]]
    conts = [tok(t, add_special_tokens=False).input_ids for t in ["sports<eos>", "weather<eos>"]]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fast = score_continuations(model, tok, prompts, conts, shared=tok("<bos>frame:", add_special_tokens=False).input_ids)
        EntityDecoder(model, tok, task("extraction", entity="company"), max_new_tokens=4).decode(prompts[0])
    assert not [str(w.message) for w in seen if "past_key_values" in str(w.message)]
    frame = tok("<bos>frame:", add_special_tokens=False).input_ids
    assert np.allclose(fast, naive_scores(model, [frame + p for p in prompts], conts), atol=2e-4)


def test_continuations_sharing_a_prefix_share_its_lm_head_row(lm):
    from classifine.generative.decoding import lm_parts

    model, tok = lm
    prompts = [tok(t, add_special_tokens=False).input_ids for t in ["<bos>goal match today", "<bos>rain"]]
    conts = [tok(t, add_special_tokens=False).input_ids for t in ["business<eos>", "business news<eos>", "business news today<eos>", "weather<eos>"]]
    assert conts[1][:len(conts[0]) - 1] == conts[0][:-1] and conts[2][:len(conts[1]) - 1] == conts[1][:-1]
    rows = []
    hook = lm_parts(model)[1].register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        fast = score_continuations(model, tok, prompts, conts, batch_size=2)
    finally:
        hook.remove()
    assert np.allclose(fast, naive_scores(model, prompts, conts), atol=2e-4)
    distinct = len({tuple(c[:j]) for c in conts for j in range(len(c))})
    assert sum(rows) == len(prompts) * distinct < len(prompts) * sum(map(len, conts))


def test_a_frame_shared_by_every_prompt_gives_the_same_scores(lm):
    model, tok = lm
    frame = tok("<bos>Classify the text into sports, business or weather.\n\nText:\n", add_special_tokens=False).input_ids
    texts = [tok(t, add_special_tokens=False).input_ids for t in ["goal match today", "rain", "a much longer text about the market and shares", "x"]]
    conts = [tok(t, add_special_tokens=False).input_ids for t in ["sports<eos>", "business news<eos>", "weather<eos>"]]
    full = naive_scores(model, [frame + t for t in texts], conts)
    # the tiny model's sliding window (64) holds frame + short texts + answer but not the long text:
    # batch 3 runs the short ones on the cached frame (padded between frame and text), the long one
    # with the frame inline; batch 4 runs everything inline
    assert model.config.sliding_window == 64 and len(frame) + len(texts[2]) + 8 > 64 > len(frame) + 3 + 8
    for batch in (1, 3, 4):
        fast = score_continuations(model, tok, texts, conts, batch_size=batch, shared=frame)
        assert np.allclose(fast, full, atol=2e-4), batch
    # context-only leading tokens are fed but not scored
    part = score_continuations(model, tok, texts, conts, batch_size=2, shared=frame, scored_from=[1, 0, 2])
    ctx = naive_scores(model, [frame + t for t in texts], [conts[0][:1], conts[2][:2]])
    assert np.allclose(part[:, 0], full[:, 0] - ctx[:, 0], atol=2e-4)
    assert np.allclose(part[:, 1], full[:, 1], atol=2e-4)
    assert np.allclose(part[:, 2], full[:, 2] - ctx[:, 1], atol=2e-4)


@pytest.mark.parametrize("answer_end", [True, False])
@pytest.mark.parametrize("kind", ["single_label", "multi_label"])
def test_label_scores_are_those_of_the_prompts_the_model_is_trained_on(lm, kind, answer_end):
    """LabelScorer (frame cached once, then batches) equals a full forward over the exact token ids
    that training builds (prompt_ids + answer); without the answer's end, over the answer less the
    end-of-turn tokens that every answer closes with."""
    model, tok = lm
    t, fmt = task(kind), PromptFormat.for_tokenizer(tok)
    end = fmt.ids(fmt.end_text)

    def answer(text: str) -> list[int]:
        ids = fmt.ids(text + fmt.end_text)
        assert ids[len(ids) - len(end):] == end
        return ids if answer_end else ids[:len(ids) - len(end)]

    texts = ["goal match", "market shares profit and loss today"]
    got = LabelScorer(model, tok, t, batch_size=1, answer_end=answer_end).scores(texts)
    for i, text in enumerate(texts):
        if kind == "single_label":
            want = naive_scores(model, [fmt.prompt_ids(t, text)], [answer(answer_text(t, lab)) for lab in t.label_names])[0]
            want = want - want[0] + got[i][0]  # equal up to the answers' common start (a constant per text)
        else:
            want = np.array([np.subtract(*naive_scores(model, [fmt.prompt_ids(t, text, lab)], [answer("yes"), answer("no")])[0])
                             for lab in t.label_names])
        assert np.allclose(got[i], want, atol=2e-4)


def test_json_answers_score_their_common_start_once(lm):
    """`{"label": "` starts every JSON answer: it moves into the prompt, and the label probabilities
    are still exactly those of the full answers (a softmax over labels cancels the shared part)."""
    model, tok = lm
    t, fmt = task(output="json"), PromptFormat.for_tokenizer(tok)
    scorer = LabelScorer(model, tok, t, batch_size=2, answer_end=True)
    full = [fmt.ids(fmt.answer(t, lab)) for lab in t.label_names]
    assert scorer.common and all(f == scorer.common + c for f, c in zip(full, scorer.conts))
    texts = ["goal match", "market shares profit and loss today", "rain"]
    want = np.array([naive_scores(model, [fmt.prompt_ids(t, x)], full)[0] for x in texts])
    np.testing.assert_allclose(probabilities("single_label", scorer.scores(texts)), probabilities("single_label", want),
                               atol=1e-4)


def test_json_answers_without_their_end_score_the_label_tokens_alone(lm):
    """`"}` and the end of turn close every JSON answer: with them left out, each label is scored by
    its own tokens after `{"label": "`, in one pass with the prompt when those are one token each."""
    model, tok = lm
    t, fmt = task(output="json"), PromptFormat.for_tokenizer(tok)
    scorer = LabelScorer(model, tok, t, batch_size=2)
    full = [fmt.ids(fmt.answer(t, lab)) for lab in t.label_names]
    for lab, f, c in zip(t.label_names, full, scorer.conts):  # sports / business / weather: none starts another
        assert f[:len(scorer.common) + len(c)] == scorer.common + c
        assert tok.decode(c) == lab and tok.decode(f[len(scorer.common) + len(c):]) == '"}' + fmt.end_text
    texts = ["goal match", "market shares profit and loss today", "rain"]
    want = np.array([naive_scores(model, [fmt.prompt_ids(t, x) + scorer.common], scorer.conts)[0] for x in texts])
    np.testing.assert_allclose(probabilities("single_label", scorer.scores(texts)), probabilities("single_label", want),
                               atol=1e-4)


def test_relative_scores_of_one_token_labels_skip_the_vocabulary_normaliser_and_nothing_else(lm, monkeypatch):
    """One-token continuations all read the same state: ``relative`` leaves out its log-normaliser,
    a constant per prompt, so probabilities over labels are unchanged; anything else is scored in full."""
    import classifine.generative.decoding as decoding

    model, tok = lm
    prompts = [tok(t, add_special_tokens=False).input_ids for t in ["<bos>goal match today", "<bos>rain", "<bos>market shares"]]
    ones = [tok(t, add_special_tokens=False).input_ids[:1] for t in ["sports", "business", "weather"]]
    full = score_continuations(model, tok, prompts, ones, batch_size=2)
    calls, real = [], decoding._head_logprobs
    monkeypatch.setattr(decoding, "_head_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    rel = score_continuations(model, tok, prompts, ones, batch_size=2, relative=True)
    assert not calls  # the full vocabulary was never normalised
    shift = full - rel
    np.testing.assert_allclose(shift, shift[:, :1].repeat(3, 1), atol=1e-4)  # one constant per prompt
    assert np.abs(shift).min() > 1e-3  # and it really was left out
    np.testing.assert_allclose(probabilities("single_label", rel), probabilities("single_label", full), atol=1e-5)
    # two-token continuations read different states: scored in full, relative or not
    twos = [tok(t, add_special_tokens=False).input_ids for t in ["sports news", "business", "weather report"]]
    np.testing.assert_allclose(score_continuations(model, tok, prompts, twos, relative=True),
                               score_continuations(model, tok, prompts, twos), atol=1e-5)
    assert calls


def test_the_common_end_is_cut_only_while_labels_stay_apart():
    from classifine.generative.decoding import _without_common_end

    quote, eot, nl = 9, 1, 2
    # "hate" would start "hateful" without its closing quote, so the quote stays for every label
    assert _without_common_end([[5, quote, eot, nl], [5, 6, quote, eot, nl], [7, quote, eot, nl]], [0, 0, 0]) == \
        [[5, quote], [5, 6, quote], [7, quote]]
    assert _without_common_end([[5, quote, eot], [7, quote, eot]], [0, 0]) == [[5], [7]]
    # multi-label: the question is context, its yes/no must remain to be scored
    assert _without_common_end([[3, 4, 11, eot], [3, 4, 12, eot]], [2, 2]) == [[3, 4, 11], [3, 4, 12]]
    assert _without_common_end([[3, eot], [4, eot]], [1, 1]) == [[3, eot], [4, eot]]
    assert _without_common_end([[3, eot], [4, 5]], [0, 0]) == [[3, eot], [4, 5]]


def test_one_token_continuations_are_scored_from_the_prompt_alone(lm):
    model, tok = lm
    frame = tok("<bos>frame:", add_special_tokens=False).input_ids
    prompts = [tok(t, add_special_tokens=False).input_ids for t in ["goal match today", "a much longer prompt about the market", "rain"]]
    conts = [[c] for c in tok(" sports business weather", add_special_tokens=False).input_ids]
    fast = score_continuations(model, tok, prompts, conts, batch_size=2, shared=frame)
    assert np.allclose(fast, naive_scores(model, [frame + p for p in prompts], conts), atol=2e-4)


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


def test_generation_stops_at_the_end_of_turn_token(lm):
    model, tok = lm
    fmt = PromptFormat.for_tokenizer(tok)
    prompts = [fmt.prompt_ids(task(), "goal match"), fmt.prompt_ids(task(), "a much longer text about shares")]
    free = generate_answers(model, tok, prompts, max_new_tokens=6, batch_size=2)
    first = [tok(a, add_special_tokens=False).input_ids[0] for a in free]
    # the token each prompt starts its answer with, made the stop token: generation ends right there
    stopped = generate_answers(model, tok, prompts[:1], max_new_tokens=6, stop=first[:1])
    assert len(tok(free[0], add_special_tokens=False).input_ids) > 1
    assert tok(stopped[0], add_special_tokens=False).input_ids == first[:1]


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
        found, raw = decoder.decode(fmt.prompt_ids(t, text))
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
    ids = fmt.prompt_ids(t, "goal match", "business")
    assert ids[:len(fmt.head_ids(t))] == fmt.head_ids(t) and ids[-len(fmt.question_ids(t)[1]):] == fmt.question_ids(t)[1]
    assert tok.decode(ids) == prefix + suffixes[1]
    with pytest.raises(ValueError, match="pass label"):
        fmt.prompt_ids(t, "goal match")


def test_answer_loss_is_the_same_with_and_without_restricting_the_lm_head(lm):
    import torch

    from classifine.generative.trainer import answer_loss, collate

    model, tok = lm
    feats = [{"prompt": tok("<bos>goal match", add_special_tokens=False).input_ids, "answer": tok("sports<eos>", add_special_tokens=False).input_ids, "weight": 1.0},
             {"prompt": tok("<bos>a longer prompt about shares", add_special_tokens=False).input_ids, "answer": tok("business<eos>", add_special_tokens=False).input_ids, "weight": 2.0}]
    batch = collate(feats, tok.pad_token_id)
    with torch.inference_mode():
        kept, _ = answer_loss(model, dict(batch))
        full, _ = answer_loss(model, {**batch, "logits_to_keep": 0})
    assert float(kept) == pytest.approx(float(full), rel=1e-5)
