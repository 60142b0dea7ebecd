"""Defaults read from the data (max_length, the answer budget) and every evaluation shown beside its
trivial baseline, with a warning when the model does not beat it."""
from __future__ import annotations

import csv
import json
import math
import random

import numpy as np
import pytest
import yaml

import classifine
from classifine.errors import ConfigError
from classifine.scoring.kinds import KINDS, trivial_baseline

from toy import NOISE, QUICK, WORDS

FAST_HEAD = {"epochs": 1, "batch_size": 16, "learning_rate": 5e-3}


@pytest.fixture(scope="module")
def long_task(tmp_path_factory):
    """Bodies of 30-50 words: long enough that a short max_length visibly cuts them."""
    folder = tmp_path_factory.mktemp("long")
    rng = random.Random(5)
    for split, n in (("train", 60), ("test", 20)):
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["title", "body", "label"])
            w.writeheader()
            for i in range(n):
                lab = list(WORDS)[i % 3]
                body = " ".join(rng.choice(WORDS[lab] + NOISE) for _ in range(rng.randint(30, 50)))
                w.writerow({"title": lab, "body": body, "label": lab})
    (folder / "task.yaml").write_text("name: long\nkind: single_label\ntext: [title, body]\nlabel_column: label\n"
                                      "labels: [sports, business, weather]\ndata: {train: train.csv, test: test.csv}\n")
    return folder / "task.yaml"


def test_head_max_length_comes_from_the_training_texts_and_is_recorded(long_task, bert_path, tmp_path):
    from transformers import AutoTokenizer

    from classifine.core.data import load_examples
    from classifine.core.task import load_task

    run = classifine.train(long_task, method="head", model=bert_path, out=tmp_path / "run", config=FAST_HEAD, progress=False)
    budget = run.config["budget"]
    task = load_task(long_task)
    tok = AutoTokenizer.from_pretrained(bert_path)
    lengths = [len(tok(t, add_special_tokens=False).input_ids) for t in load_examples(task, task.data_path("train")).texts]
    p95 = math.ceil(np.quantile(lengths, 0.95))
    assert budget["max_length_source"].startswith("data") and budget["text_tokens_p95"] == p95
    assert budget["max_length"] == 2 + -(-p95 // 8) * 8  # [CLS] and [SEP] around the text
    assert budget["train"]["truncated_share"] <= 0.05, "the default keeps 95% of the training texts whole"
    meta = json.loads((tmp_path / "run" / "model" / "classifine_head.json").read_text())
    assert meta["max_length"] == budget["max_length"], "prediction uses the same budget"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["truncation"]["evaluation"]["max_length"] == budget["max_length"]
    assert "## Truncation" in (tmp_path / "run" / "report.md").read_text()


def test_a_max_length_that_cuts_most_of_the_input_is_refused_with_the_value_that_fits(long_task, bert_path, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        classifine.train(long_task, method="head", model=bert_path, out=out, config={**FAST_HEAD, "max_length": 12},
                         progress=False)
    msg = str(e.value)
    assert "less than half of a typical training text" in msg and "allow_truncation=true" in msg
    fit = int(msg.split("--set max_length=")[1].split()[0])
    assert fit > 12 and not out.exists(), "refused before anything was written"
    run = classifine.train(long_task, method="head", model=bert_path, out=out, progress=False,
                           config={**FAST_HEAD, "max_length": 12, "allow_truncation": True})
    cut = run.config["budget"]["train"]
    assert cut["truncated_share"] == 1.0 and cut["tokens_kept_share"] < 0.5, "the cost is recorded"
    ok = classifine.train(long_task, method="head", model=bert_path, out=tmp_path / "fits", progress=False,
                          config={**FAST_HEAD, "max_length": fit})
    assert ok.config["budget"]["max_length_source"] == "set"


def test_extraction_answer_budget_comes_from_the_gold_answers(small_tasks, gemma_path, tmp_path):
    from transformers import AutoTokenizer

    from classifine.core.data import load_examples
    from classifine.core.task import load_task
    from classifine.generative.prompts import EXTRACTION_ANSWER, PromptFormat

    run = classifine.train(small_tasks["extraction"], method="sft", model=gemma_path, out=tmp_path / "run",
                           config={k: v for k, v in QUICK.items() if k != "max_length"} | {"max_steps": 2}, progress=False)
    task = load_task(small_tasks["extraction"])
    fmt = PromptFormat.for_tokenizer(AutoTokenizer.from_pretrained(gemma_path))
    longest = max(len(fmt.ids(fmt.answer(task, g))) for g in load_examples(task, task.data_path("train")).labels)
    budget = run.config["budget"]
    assert longest <= budget["answer_budget"] < EXTRACTION_ANSWER, "room for every gold answer, no fixed 96"
    meta = json.loads((tmp_path / "run" / "model" / "generative.json").read_text())
    assert meta["answer_budget"] == budget["answer_budget"] and meta["max_length"] == budget["max_length"]
    assert budget["max_length"] == budget["prompt_frame"] + budget["answer_budget"] + budget["text_budget"]


def test_sft_max_length_without_room_for_the_text_is_refused(small_tasks, gemma_path, tmp_path):
    with pytest.raises(ConfigError, match="leaves no room for the input text") as e:
        classifine.train(small_tasks["extraction"], method="sft", model=gemma_path, out=tmp_path / "r",
                         config={**QUICK, "max_length": 160}, progress=False)
    assert "prompt frame" in str(e.value) and "answer budget" in str(e.value) and "--set max_length=" in str(e.value)


@pytest.mark.parametrize("kind", ["single_label", "ordinal", "multi_label"])
def test_every_evaluation_has_its_trivial_baseline(kind, toy_tasks, tmp_path):
    classifine.train(toy_tasks[kind], method="tfidf", out=tmp_path / "run", progress=False)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    b = m["baseline"]
    head = KINDS[kind].headline
    assert set(KINDS[kind].summary) <= set(b["metrics"]) and 0 <= b["metrics"][head] <= 1
    gold = [json.loads(line)["gold"] for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    if kind != "multi_label":
        majority = max(set(gold), key=gold.count)
        assert b["metrics"]["accuracy"] == pytest.approx(gold.count(majority) / len(gold))
    else:
        assert set(b["label_frequencies"]) == {"sports", "business", "weather"}
    assert b["beaten"] == (m[head] > b["metrics"][head])
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Trivial baseline" in report and b["describe"].replace("'", "&#39;") in report.replace("'", "&#39;")


def test_extraction_baseline_is_the_empty_set():
    from classifine.core.task import parse_task

    task = parse_task({"name": "x", "kind": "extraction", "text": ["t"], "label_column": "y", "entity": "company"})
    gold = [[], ["Acme"], [], ["Globex", "Initech"]]
    b = trivial_baseline(task, gold)
    assert b["answer"] == [] and b["metrics"]["exact_match"] == 0.5
    assert b["metrics"]["f1"] == 0 and b["metrics"]["recall"] == 0 and b["metrics"]["exact_match_with_entities"] == 0
    from classifine.evaluation.render import sections
    from classifine.evaluation.report import assemble

    m = assemble(task, ["a", "b", "c", "d"], gold, [[], [{"name": "Acme", "confidence": 0.9}], [], []], None, None, {})
    table = next(s for s in sections(task, m) if s["title"] == "Trivial baseline")
    assert ["entity-set exact match", "75.00%", "50.00%", "+25.00 pp"] in table["rows"] and m["baseline"]["beaten"]


def test_a_model_at_its_baseline_is_flagged_in_the_report_the_cli_and_the_card(toy_tasks, tmp_path, capsys):
    from classifine.cli import _summary
    from classifine.core.data import load_examples
    from classifine.core.task import load_task
    from classifine.evaluation.card import write_card
    from classifine.evaluation.render import render_markdown
    from classifine.evaluation.report import assemble

    task = load_task(toy_tasks["single_label"])
    ex = load_examples(task, task.data_path("test"))
    majority = max(task.label_names, key=ex.labels.count)
    m = assemble(task, ex.texts, ex.labels, [majority] * len(ex), None, None, {})
    assert m["baseline"]["beaten"] is False and m["accuracy"] == m["baseline"]["metrics"]["accuracy"]
    m.update(method="constant", model=None, data="test.csv", docs_per_second=None, evaluated="now")  # what evaluate() adds
    assert "Warning:** The model does not beat its trivial baseline" in render_markdown(task, m, {})
    _summary(m, "test")
    assert "does not beat its trivial baseline" in capsys.readouterr().err
    # a run whose evaluation sits at the baseline says so in its card
    run = classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "run", progress=False)
    path = tmp_path / "run" / "metrics.json"
    saved = json.loads(path.read_text())
    saved["baseline"]["beaten"], saved["accuracy"] = False, saved["baseline"]["metrics"]["accuracy"]
    path.write_text(json.dumps(saved))
    assert "does not beat its trivial baseline" in write_card(run.dir).read_text()
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["budget"] == {}, "tfidf has no token budget"
