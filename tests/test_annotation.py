"""Annotation without a server: answer parsing from log-probabilities, the local annotator on a tiny
model, the folder (resume, identity, torn lines), review (agreement, queue, --apply) and training on
annotations. The OpenAI-compatible path against a real llama.cpp server is in test_annotation_server.py."""
from __future__ import annotations

import json
import math
import random

import pytest
from typer.testing import CliRunner

import classifine
from classifine.annotation import answers
from classifine.annotation.annotators import ExamplePicker, make_annotator, with_examples
from classifine.annotation.runner import annotate
from classifine.cli import app
from classifine.core.annotations import AnnotationFolder, load_annotated
from classifine.core.data import load_examples
from classifine.core.task import load_task, parse_task
from classifine.errors import ConfigError, DataError

from toy import write_task


def step(token: str, lp: float, alts: dict[str, float]) -> dict:
    return {"token": token, "logprob": lp, "top_logprobs": [{"token": t, "logprob": v} for t, v in alts.items()]}


def task_of(kind: str = "single_label", **extra):
    spec = {"name": "t", "kind": kind, "text": "text", "label_column": "label", **extra}
    if kind != "extraction":
        spec.setdefault("labels", ["World", "Sports", "Sci/Tech"])
    return parse_task(spec, "test")


def test_classify_reads_every_label_from_the_answer_tokens():
    task = task_of()
    # the model answered "Sci/Tech" as "Sci" + "/Tech"; "Sports" shares the first letter only in text
    content = [step("Sci", math.log(0.6), {"Sci": math.log(0.6), "Sports": math.log(0.3), "World": math.log(0.05)}),
               step("/Tech", math.log(0.9), {"/Tech": math.log(0.9), "ence": math.log(0.1)})]
    res = answers.classify(task, {"message": {"content": "Sci/Tech"}, "logprobs": {"content": content}})
    assert res["valid"] and res["label"] == "Sci/Tech"
    raw = {"Sci/Tech": 0.6 * 0.9, "Sports": 0.3, "World": 0.05}
    z = sum(raw.values())
    for lab, p in raw.items():
        assert res["probabilities"][lab] == pytest.approx(p / z, abs=1e-5)
    assert res["confidence"] == res["probabilities"]["Sci/Tech"]


def test_classify_json_answers_and_labels_missing_from_the_top_k():
    task = task_of(output="json")
    toks = ['{"', 'label', '":', ' "', 'World', '"}']
    content = [step(t, 0.0, {t: 0.0}) for t in toks]
    content[4] = step("World", math.log(0.7), {"World": math.log(0.7), "Sports": math.log(0.2)})
    res = answers.classify(task, {"message": {"content": "".join(toks)}, "logprobs": {"content": content}})
    assert res["label"] == "World"
    # Sci/Tech is not among the alternatives: it gets at most the smallest one listed (0.2)
    assert res["probabilities"]["Sci/Tech"] <= res["probabilities"]["Sports"] + 1e-9
    assert res["probabilities"]["World"] > 0.6


def test_an_answer_outside_the_labels_is_invalid_and_kept_raw_never_mapped():
    task = task_of()
    content = [step("Politics", math.log(0.8), {"Politics": math.log(0.8), "World": math.log(0.1)})]
    res = answers.classify(task, {"message": {"content": "Politics"}, "logprobs": {"content": content}})
    assert res["valid"] is False and res["label"] is None and res["raw"] == "Politics"
    # a label and then rambling counts as that label; a longer word that starts like one does not
    assert answers.leading_label(task, "World médical\nmore") == "World"
    assert answers.leading_label(task, "sports, I think") == "Sports"
    assert answers.leading_label(task, "Worldwide news") is None
    assert answers.leading_label(task, "Sci/Techこ") is None and answers.leading_label(task, "") is None
    # a server without log-probabilities: the answer decides, no confidence is invented
    res = answers.classify(task, {"message": {"content": "Sports"}})
    assert res["label"] == "Sports" and res["confidence"] is None and res["probabilities"]["Sports"] == 1.0


def test_multi_label_yes_no_and_extraction_confidences():
    task = task_of("multi_label", threshold=0.5)
    yes = {"message": {"content": "yes"}, "logprobs": {"content": [step("yes", math.log(0.8), {"yes": math.log(0.8), "no": math.log(0.2)})]}}
    no = {"message": {"content": "No."}, "logprobs": {"content": [step("No", math.log(0.7), {"No": math.log(0.7), "Yes": math.log(0.3)})]}}
    bad = {"message": {"content": "maybe"}, "logprobs": {"content": [step("maybe", 0.0, {"maybe": 0.0})]}}
    res = answers.multi_label(task, [answers.yes_probability(c) for c in (yes, no, yes)])
    assert res["label"] == ["World", "Sci/Tech"] and res["probabilities"]["Sports"] == pytest.approx(0.3)
    assert res["confidence"] == pytest.approx(0.7)
    assert answers.multi_label(task, [answers.yes_probability(c) for c in (yes, bad, yes)])["valid"] is False
    ext = task_of("extraction", entity="company", min_confidence=0.5)
    toks = ['{"company": ["', "Acme", " Corp", '", "', "Glo", "bex", '"]}']
    lps = [0.0, math.log(0.9), math.log(0.9), 0.0, math.log(0.5), math.log(0.6), 0.0]
    choice = {"message": {"content": "".join(toks)}, "logprobs": {"content": [step(t, lp, {t: lp}) for t, lp in zip(toks, lps)]}}
    res = answers.extraction(ext, choice)
    assert res["label"] == ["Acme Corp"]  # Globex: 0.3 < min_confidence 0.5
    assert res["entities"][0]["confidence"] == pytest.approx(0.81, abs=1e-4)
    broken = answers.extraction(ext, {"message": {"content": '{"company": ["Acme"'}})
    assert broken["valid"] is False and broken["raw"] == '{"company": ["Acme"'


class Oracle:
    """A stand-in annotator for folder, review and training tests: the gold label with noise."""

    def __init__(self, gold: dict, labels: list[str], noise: float = 0.2):
        self.gold, self.labels, self.noise, self.calls = gold, labels, noise, 0

    def identity(self):
        return {"type": "oracle", "noise": self.noise}

    def name(self):
        return "oracle"

    async def annotate(self, task, texts, shots, cache):
        out = []
        for text in texts:
            hit = cache.get(text)
            if hit is None:
                self.calls += 1
                rng = random.Random(text)
                lab = self.gold[text] if rng.random() > self.noise else rng.choice(self.labels)
                conf = 0.9 if lab == self.gold[text] else 0.5
                probs = {x: conf if x == lab else (1 - conf) / (len(self.labels) - 1) for x in self.labels}
                hit = {"label": lab, "probabilities": probs, "confidence": conf, "valid": True, "raw": lab}
                cache.put(text, hit)
            out.append(hit)
        return out


@pytest.fixture()
def annotated(tmp_path):
    spec = write_task(tmp_path / "data", "single_label", n_train=90, n_test=30)
    task = load_task(spec)
    ex = load_examples(task, tmp_path / "data" / "train.csv")
    oracle = Oracle(dict(zip(ex.texts, ex.labels)), task.label_names)
    annotate(task, tmp_path / "data" / "train.csv", tmp_path / "ann", oracle, progress=False, batch_size=16)
    return spec, tmp_path / "ann", oracle


def test_folder_resumes_after_a_torn_write_and_asks_nothing_twice(annotated, tmp_path):
    spec, folder, oracle = annotated
    full = (folder / "annotations.jsonl").read_bytes()
    assert full.count(b"\n") == 90 and oracle.calls == 90
    # a kill in the middle of a write: 40 complete lines and half of the next one
    lines = full.splitlines(keepends=True)
    (folder / "annotations.jsonl").write_bytes(b"".join(lines[:40]) + lines[40][:25])
    summary = annotate(load_task(spec), tmp_path / "data" / "train.csv", folder, oracle, progress=False, batch_size=16)
    assert (folder / "annotations.jsonl").read_bytes() == full  # the same as the uninterrupted run
    assert oracle.calls == 90 and summary["rows_this_run"] == 50 and summary["cache_hits_this_run"] == 50
    again = annotate(load_task(spec), tmp_path / "data" / "train.csv", folder, oracle, progress=False)
    assert again["rows_this_run"] == 0 and oracle.calls == 90


def test_a_folder_of_another_job_is_refused_unless_overwrite(annotated, tmp_path):
    spec, folder, oracle = annotated
    other = write_task(tmp_path / "other", "single_label", n_train=30, n_test=5)
    with pytest.raises(DataError, match="another job") as e:
        annotate(load_task(other), tmp_path / "other" / "train.csv", folder, oracle, progress=False)
    assert "input" in str(e.value) and "--overwrite" in str(e.value)
    assert (folder / "annotations.jsonl").read_bytes().count(b"\n") == 90  # nothing lost
    done = annotate(load_task(other), tmp_path / "other" / "train.csv", folder, oracle, progress=False, overwrite=True)
    assert done["counts"]["rows"] == 30


def test_bad_input_is_reported_before_any_call(tmp_path, annotated):
    spec, _, oracle = annotated
    bad = tmp_path / "bad.csv"
    bad.write_text("headline\nsomething\n", encoding="utf-8")
    calls = oracle.calls
    with pytest.raises(DataError, match="text field"):
        annotate(load_task(spec), bad, tmp_path / "x", oracle, progress=False)
    with pytest.raises(DataError, match="does not exist"):
        annotate(load_task(spec), tmp_path / "missing.csv", tmp_path / "x", oracle, progress=False)
    assert oracle.calls == calls and not (tmp_path / "x" / "annotations.jsonl").exists()
    with pytest.raises(ConfigError) as e:
        make_annotator("m", base_url="localhost:8080", concurrency=0)
    assert "http" in str(e.value) and "concurrency" in str(e.value)


def test_review_gold_agreement_queue_and_apply(annotated, tmp_path):
    spec, folder, _ = annotated
    summary = classifine.review(folder, gold=tmp_path / "data" / "train.csv")
    rows = AnnotationFolder(folder).read()
    gold = load_examples(load_task(spec), tmp_path / "data" / "train.csv").labels
    acc = sum(r["label"] == g for r, g in zip(rows, gold)) / len(rows)
    assert summary["gold"]["rows"] == 90 and summary["gold"]["metrics"]["accuracy"] == pytest.approx(acc)
    assert -1 <= summary["gold"]["cohen_kappa"] < 1
    queue = (folder / "review.csv").read_text(encoding="utf-8").splitlines()
    assert queue[0].startswith("row,") and len(queue) == 91
    # wrong labels (noise) come first: the oracle is unsure of them and cleanlab flags most
    head = [int(line.split(",")[0]) for line in queue[1:11]]
    assert sum(rows[i]["label"] != gold[i] for i in head) >= 7
    assert "review queue" in (folder / "report.html").read_text(encoding="utf-8").lower()
    # a person fixes the first ten rows of the queue
    fixed = tmp_path / "reviewed.csv"
    fixed.write_text("row,reviewed_label\n" + "".join(f"{i},{gold[i]}\n" for i in head), encoding="utf-8")
    done = classifine.review(folder, apply=fixed)
    wrong = sum(rows[i]["label"] != gold[i] for i in head)
    assert done["applied"] == {"applied": 10, "confirmed": 10 - wrong, "changed": wrong, "reviewed_total": 10}
    after = AnnotationFolder(folder).read()
    assert all(after[i]["reviewed_label"] == gold[i] and after[i]["annotator_label"] == rows[i]["label"] for i in head)
    bad = tmp_path / "bad.csv"
    bad.write_text("row,reviewed_label\n1,cooking\n999,sports\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        classifine.review(folder, apply=bad)
    assert "cooking" in str(e.value) and "999" in str(e.value)


def test_agreement_between_annotators(annotated, tmp_path):
    spec, folder, _ = annotated
    task = load_task(spec)
    ex = load_examples(task, tmp_path / "data" / "train.csv")
    second = Oracle(dict(zip(ex.texts, ex.labels)), task.label_names, noise=0.5)
    annotate(task, tmp_path / "data" / "train.csv", tmp_path / "ann2", second, progress=False)
    summary = classifine.review(folder, others=[tmp_path / "ann2"], gold=tmp_path / "data" / "train.csv")
    a = summary["annotators"]
    both = summary["gold_consensus"]
    # two annotators: a tie goes to the higher averaged probability, so majority = probability average here
    assert both["majority"]["rows"] == 90 and both["majority"]["accuracy"] == both["probability_average"]["accuracy"]
    assert both["majority"]["accuracy"] >= summary["gold"]["metrics"]["accuracy"] - 0.1
    assert a["rows"] == 90 and 0 < a["fleiss_kappa"] < 1 and 0 < a["krippendorff_alpha"] < 1
    assert any("annotators disagree" in line for line in (folder / "review.csv").read_text().splitlines())


def test_training_on_annotations_hard_soft_and_the_card(annotated, tmp_path, bert_path):
    spec, folder, _ = annotated
    classifine.review(folder, gold=tmp_path / "data" / "train.csv")
    hard = classifine.train(spec, method="tfidf", out=tmp_path / "hard", train=folder, min_confidence=0.6, progress=False)
    facts = hard.config["annotations"]
    kept = sum(1 for r in AnnotationFolder(folder).read() if r["confidence"] >= 0.6)
    assert facts["rows_used"] == kept < 90 and facts["agreement"]["rows"] == 90 and not facts["soft_labels"]
    soft = classifine.train(spec, method="tfidf", out=tmp_path / "soft", train=folder, soft_labels=True, progress=False)
    assert soft.config["annotations"]["soft_labels"] and soft.config["annotations"]["rows_used"] == 90
    from classifine.evaluation.card import write_card

    card = write_card(soft.dir).read_text(encoding="utf-8")
    assert "from an LLM annotator, `oracle`" in card and "soft labels" in card
    with pytest.raises(ConfigError, match="soft labels"):
        classifine.train(spec, method="head", model=bert_path, out=tmp_path / "h", train=folder, soft_labels=True, progress=False)
    with pytest.raises(ConfigError, match="annotation folders"):
        classifine.train(spec, method="tfidf", out=tmp_path / "f", min_confidence=0.5, progress=False)
    with pytest.raises(DataError, match="no annotated row"):
        load_annotated(load_task(spec), folder, min_confidence=0.99)


def test_soft_targets_are_the_cross_entropy_of_the_expanded_rows():
    """LinearHead with soft targets = logistic regression on each row once per label, weighted by
    its target probability: one-hot targets give the hard-label model."""
    import numpy as np

    from classifine.methods.linear import LinearHead

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = [["a", "b", "c"][i % 3] for i in range(60)]
    X[np.arange(60), np.arange(60) % 3] += 2.0
    onehot = np.eye(3)[[["a", "b", "c"].index(v) for v in y]]
    hard = LinearHead(class_weight="none").fit(X, y, ["a", "b", "c"])
    soft = LinearHead(class_weight="none").fit(X, y, ["a", "b", "c"], targets=onehot)
    assert np.allclose(hard.predict_proba(X), soft.predict_proba(X), atol=1e-4)
    blurred = LinearHead(class_weight="none").fit(X, y, ["a", "b", "c"], targets=0.5 * onehot + 0.5 / 3)
    assert blurred.predict_proba(X).max(1).mean() < hard.predict_proba(X).max(1).mean()


def test_examples_in_the_prompt_fixed_diverse_similar(tmp_path):
    spec = write_task(tmp_path, "single_label", n_train=30, n_test=5)
    task = load_task(spec)
    pool = load_examples(task, tmp_path / "train.csv")
    diverse = ExamplePicker(pool, 3, "diverse").shots(["x", "y"])
    assert diverse[0] == diverse[1] and {lab for _, lab in diverse[0]} == set(task.label_names)
    fixed = ExamplePicker(pool, 2, "fixed").shots(["x"])[0]
    assert [t for t, _ in fixed] == pool.texts[:2]
    query = pool.texts[5]
    near = ExamplePicker(pool, 2, "similar").shots([query])[0]
    assert query not in [t for t, _ in near] and near[-1][1] == pool.labels[5]
    prompt = with_examples(task, near).instruction
    assert "Examples:" in prompt and near[-1][0] in prompt
    with pytest.raises(ConfigError, match="unknown example choice"):
        ExamplePicker(pool, 2, "random")


@pytest.mark.parametrize("kind", ["single_label", "multi_label", "ordinal", "extraction"])
def test_local_annotator_gives_every_row_a_valid_answer(kind, small_tasks, gemma_path, tmp_path):
    spec = small_tasks[kind]
    data = spec.parent / "test.csv"
    out = tmp_path / "ann"
    plan = classifine.annotate(spec, data, out, model=gemma_path, plan=True, progress=False)
    assert plan["requests"] == 8 and plan["to_make"] == 8 and not out.exists()
    summary = classifine.annotate(spec, data, out, model=gemma_path, examples=spec.parent / "train.csv", shots=2,
                                  progress=False)
    assert summary["counts"]["rows"] == 8 and summary["counts"]["invalid"] == 0
    rows = AnnotationFolder(out).read()
    task = load_task(spec)
    for r in rows:
        assert r["annotator"].endswith("(local, label scoring)") and r["valid"]
        if kind in ("single_label", "ordinal"):
            assert r["label"] in task.labels and sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        elif kind == "multi_label":
            assert set(r["probabilities"]) == set(task.labels)
        else:
            assert isinstance(r["label"], list)
    assert json.loads((out / "annotation.json").read_text())["finished"] is True
    assert classifine.annotate(spec, data, out, model=gemma_path, examples=spec.parent / "train.csv", shots=2,
                               plan=True, progress=False)["to_make"] == 0


def test_cli_annotate_review_and_errors(annotated, tmp_path, gemma_path, small_tasks):
    spec, folder, _ = annotated
    runner = CliRunner()
    r = runner.invoke(app, ["review", str(folder), "--gold", str(tmp_path / "data" / "train.csv")])
    assert r.exit_code == 0, r.output
    assert "vs human labels on 90 rows" in r.output and "review queue" in r.output
    r = runner.invoke(app, ["review", str(tmp_path)])
    assert r.exit_code == 2 and "not an annotation folder" in r.output
    r = runner.invoke(app, ["annotate", str(spec), "--input", str(tmp_path / "data" / "train.csv"), "--out",
                            str(tmp_path / "srv"), "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--retries", "0"])
    assert r.exit_code == 4 and "cannot be reached" in r.output and "Traceback" not in r.output
    s = small_tasks["single_label"]
    r = runner.invoke(app, ["annotate", str(s), "--input", str(s.parent / "test.csv"), "--out", str(tmp_path / "p"),
                            "--model", gemma_path, "--plan"])
    assert r.exit_code == 0 and "8 requests" in r.output
