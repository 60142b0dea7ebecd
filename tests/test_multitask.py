"""One model, several tasks: a multi-task sft run and its zero-shot base on a tiny Gemma, evaluated,
compared, carded, predicted and served per task; the combined table's arithmetic on hand-made
rows; and every bad input the multi-task path refuses."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import classifine
from classifine.cli import app
from classifine.core.runs import Run
from classifine.core.task import check_task_set, load_task, parse_task
from classifine.errors import ConfigError, DataError, RunError, TaskError
from classifine.evaluation.multitask import combine
from classifine.predict.predictor import Predictor

from toy import QUICK, write_multitask

CONFIG = {**QUICK, "max_length": 256}  # byte-level toy tokens are many; the JSON answers need room


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    return write_multitask(tmp_path_factory.mktemp("mt"))


@pytest.fixture(scope="module")
def runs(specs, gemma_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("mt-runs")
    order = [specs["topic"], specs["topics"], specs["companies"]]
    tuned = classifine.train(order, method="sft", model=gemma_path, out=root / "tuned", config=CONFIG, progress=False)
    classifine.zero_shot(order, gemma_path, root / "base", progress=False)
    return root / "base", tuned.dir


def _combined(run_dir):
    return json.loads((run_dir / "combined.json").read_text())


def test_training_keeps_every_task_and_evaluates_each(runs, specs):
    _, tuned = runs
    run = Run.load(tuned)
    assert list(run.tasks) == ["topic", "topics", "companies"]
    for name in ("topics", "companies"):
        assert (tuned / "tasks" / f"{name}.yaml").is_file()
        assert (tuned / "tasks" / name / "metrics.json").is_file() and (tuned / "tasks" / name / "report.md").is_file()
    meta = json.loads((tuned / "model" / "generative.json").read_text())
    assert set(meta["tasks"]) == {"topics", "companies"} and meta["tasks"]["companies"]["kind"] == "extraction"
    assert meta["tasks"]["companies"]["answer_budget"] > meta["answer_budget"]  # a JSON list of names is longer
    assert (tuned / "model" / "tasks" / "topics" / "decision.json").is_file()  # tuned on its own validation rows
    info = yaml.safe_load((tuned / "config.yaml").read_text())["info"]
    assert set(info["train_examples_per_task"]) == {"topic", "topics", "companies"}


def test_combined_table_counts_every_task_level_example_once(runs):
    _, tuned = runs
    c = _combined(tuned)
    per_task = {n: json.loads(((tuned if n == "topic" else tuned / "tasks" / n) / "metrics.json").read_text())
                for n in ("topic", "topics", "companies")}
    cells = {line["label"]: line for line in c["table"]}
    assert cells["total"]["den"] == sum(m["n"] for m in per_task.values()) == 36
    assert cells["task = topic"]["num"] == per_task["topic"]["correct"]
    assert cells["task = companies"]["num"] == per_task["companies"]["correct"]  # entity-set exact match
    top1 = per_task["topics"]["top1_exact_match"] * per_task["topics"]["n"]
    assert cells["task = topics"]["num"] == round(top1)
    assert cells["total"]["num"] == sum(cells[f"task = {n}"]["num"] for n in per_task)
    for col in ("lang", "month"):  # every slice value over all tasks adds up to the total
        assert sum(v["den"] for k, v in cells.items() if k.startswith(f"{col} = ")) == 36
        assert sum(v["num"] for k, v in cells.items() if k.startswith(f"{col} = ")) == cells["total"]["num"]
    assert {line["task"] for line in c["subsets"]["business"]} == {"topic", "topics", "companies"}
    report = (tuned / "report.md").read_text()
    assert "## All tasks" in report and "## Subset business" in report and "multi-task run: 3 tasks" in report
    assert "All tasks" in (tuned / "report.html").read_text()


def test_compare_base_and_tuned_prints_the_combined_table_with_deltas(runs):
    base, tuned = runs
    result = classifine.compare([base, tuned])
    titles = [s["title"] for s in result["sections"]]
    assert titles[:2] == ["All tasks", "Subset business"] and "Overall: companies" in titles and "Overall: topic" in titles
    table = result["sections"][0]
    first = dict(zip(table["headers"], table["rows"][0]))
    b, t = _combined(base)["table"][0], _combined(tuned)["table"][0]
    assert first[""] == "total" and first["Δ"] == f"{100 * (t['rate'] - b['rate']):+.2f} pp"
    assert f"({t['num']}/{t['den']})" in first["tuned"]
    runner = CliRunner()
    res = runner.invoke(app, ["compare", str(base), str(tuned)])
    assert res.exit_code == 0 and "## All tasks" in res.output and "task = companies" in res.output


def test_eval_of_a_multitask_run_on_one_file_and_its_errors(runs, specs, tmp_path):
    _, tuned = runs
    test = specs["topic"].parent / "test.csv"
    res = CliRunner().invoke(app, ["eval", str(tuned), "--data", str(test), "--out", str(tmp_path / "ev"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["combined"]["total"]["rows"] == 36
    assert (tmp_path / "ev" / "tasks" / "companies" / "predictions.jsonl").is_file()
    # a file that lacks two tasks' label columns: both said at once, no traceback
    rows = list(csv.DictReader(test.open(encoding="utf-8")))
    bad = tmp_path / "bad.csv"
    with bad.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["title", "body", "topic", "lang", "month"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError) as e:
        classifine.evaluate(tuned, bad, out_dir=tmp_path / "ev2", progress=False)
    text = str(e.value)
    assert "task topics" in text and "task companies" in text and "topics" in text and "company" in text


def test_card_has_a_model_index_result_per_task(runs):
    base, tuned = runs
    path = classifine.card(tuned, base=base)
    text = path.read_text()
    meta = yaml.safe_load(text.split("---")[1])
    results = meta["model-index"][0]["results"]
    assert [r["task"]["name"].split(":")[0] for r in results] == ["topic", "topics", "companies"]
    assert "multi-task" in meta["tags"] and "extraction" in meta["tags"]
    assert "### Task `companies`" in text and "### All tasks" in text and "## Comparison with the base run" in text


def test_predict_and_load_per_task(runs, specs, tmp_path):
    _, tuned = runs
    rec = {"title": "market shares", "body": "Acme Corp and Globex profit bank"}
    assert "label" in Predictor.load(tuned).predict([rec])[0]
    topics = Predictor.load(tuned, task="topics")
    out = topics.predict([rec])[0]
    assert set(out["probabilities"]) == {"sports", "business", "weather"} and isinstance(out["labels"], list)
    shared = topics.for_task("companies")
    assert shared.scorer.model is topics.scorer.model  # one model in memory for every task
    assert isinstance(shared.predict([rec])[0]["company"], list)
    with pytest.raises(RunError) as e:
        Predictor.load(tuned, task="nope")
    assert "topic, topics, companies" in str(e.value)
    runner = CliRunner()
    res = runner.invoke(app, ["predict", str(tuned), "--task", "companies", "--input", str(specs["topic"].parent / "test.csv"),
                              "--output", str(tmp_path / "c.jsonl"), "--quiet"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and all("entities" in x for x in lines)
    res = runner.invoke(app, ["predict", str(tuned), "--task", "nope", "--input", str(specs["topic"].parent / "test.csv"),
                              "--output", str(tmp_path / "d.jsonl")])
    assert res.exit_code == 2 and "its tasks: topic, topics, companies" in res.output and "Traceback" not in res.output


def test_serve_answers_every_task_on_its_own_route(runs):
    from fastapi.testclient import TestClient

    from classifine.serve.app import create_app

    _, tuned = runs
    rec = {"title": "storm rain", "body": "Acme Corp market"}
    with TestClient(create_app(Predictor.load(tuned))) as client:
        outs = {n: client.post(f"/v1/tasks/{n}/classify", json={"inputs": [rec, rec]}) for n in ("topic", "topics", "companies")}
        assert all(r.status_code == 200 for r in outs.values())
        assert "label" in outs["topic"].json()["outputs"][0] and "labels" in outs["topics"].json()["outputs"][0]
        assert "entities" in outs["companies"].json()["outputs"][0]
        assert client.post("/v1/classify", json={"inputs": [rec]}).json()["outputs"][0] == outs["topic"].json()["outputs"][0]
        missing = client.post("/v1/tasks/nope/classify", json={"inputs": [rec]})
        assert missing.status_code == 404 and "topics" in missing.json()["error"]["message"]
        wrong = client.post("/v1/tasks/companies/classify", json={"inputs": [{**rec, "topic": "sports"}]})
        assert wrong.status_code == 422 and "text fields are ['title', 'body']" in wrong.json()["error"]["problems"][0]
        schema = client.get("/openapi.json").json()
        body = schema["paths"]["/v1/tasks/companies/classify"]["post"]["responses"]["200"]["content"]["application/json"]
        assert body["schema"]["$ref"].endswith("CompaniesClassifyResponse")
        assert "TopicsOutput" in schema["components"]["schemas"]
        assert set(client.get("/v1/tasks").json()["tasks"]) == {"topic", "topics", "companies"}
        assert client.get("/healthz").json()["tasks"] == ["topic", "topics", "companies"]


def test_requests_of_different_tasks_share_one_batch():
    from classifine.serve.tasks import predict_items as _predict_items

    class Fake:
        def __init__(self, tag):
            self.tag, self.calls = tag, []

        def predict_texts(self, texts):
            self.calls.append(list(texts))
            return [f"{self.tag}:{t}" for t in texts]

    a, b = Fake("a"), Fake("b")
    out = _predict_items({"a": a, "b": b}, [("a", "x"), ("b", "y"), ("a", "z")])
    assert out == ["a:x", "b:y", "a:z"] and a.calls == [["x", "z"]] and b.calls == [["y"]]


# --- the combined table on hand-made rows ---------------------------------------------------------

def _task(kind, **extra):
    base = {"name": f"t-{kind}", "kind": kind, "text": ["text"], "label_column": "y", "slices": ["lang"]}
    if kind != "extraction":
        base["labels"] = ["a", "b", "c"]
    return parse_task({**base, **extra})


def test_combine_counts_rows_by_each_kinds_rule():
    single = _task("single_label", subsets={"g": {"label_in": ["a", "b"]}})
    multi = _task("multi_label", subsets={"g": {"label_in": ["a"]}})
    ext = _task("extraction", min_confidence=0.7, normalize=["casefold"], subsets={"g": {"column": "topic", "values": ["a"]}})
    probs = lambda a, b, c: {"a": a, "b": b, "c": c}  # noqa: E731
    rows = {
        "t-single_label": [{"text": "1", "gold": "a", "pred": "a", "lang": "en"},
                           {"text": "2", "gold": "b", "pred": "a", "lang": "ko"},
                           {"text": "3", "gold": "c", "pred": "c", "lang": "ko", "invalid": True}],
        # top-1 comes from the probabilities, not from the order of the predicted set
        "t-multi_label": [{"text": "1", "gold": ["b", "a"], "pred": ["a", "b"], "probabilities": probs(0.6, 0.9, 0.1), "lang": "en"},
                          {"text": "2", "gold": ["a"], "pred": ["a", "c"], "probabilities": probs(0.5, 0.1, 0.8), "lang": "ko"}],
        "t-extraction": [{"text": "1", "gold": ["Acme"], "lang": "en", "topic": "a",
                          "pred": [{"name": "ACME", "confidence": 0.9}, {"name": "Foo", "confidence": 0.3}]},
                         {"text": "2", "gold": [], "lang": "ko", "topic": "b", "pred": [{"name": "Bar", "confidence": 0.8}]}],
    }
    tasks = {t.name: t for t in (single, multi, ext)}
    c = combine(tasks, rows)
    cells = {line["label"]: (line["num"], line["den"]) for line in c["table"]}
    # single: row 1 right, row 2 wrong, row 3 right label but invalid → wrong; multi: row 1 top-1 b == b,
    # row 2 top-1 c != a; extraction: row 1 {acme} after the 0.7 cut and casefold, row 2 a spurious entity
    assert cells["task = t-single_label"] == (1, 3) and cells["task = t-multi_label"] == (1, 2)
    assert cells["task = t-extraction"] == (1, 2) and cells["total"] == (3, 7)
    assert cells["lang = en"] == (3, 3) and cells["lang = ko"] == (0, 4)
    sub = {(s["task"], s["label"]): s for s in c["subsets"]["g"]}
    assert (sub[("t-single_label", "all")]["num"], sub[("t-single_label", "all")]["den"]) == (2, 2)  # both in the group
    assert (sub[("t-multi_label", "all")]["num"], sub[("t-multi_label", "all")]["den"]) == (2, 2)    # a predicted twice
    assert (sub[("t-extraction", "all")]["num"], sub[("t-extraction", "all")]["den"]) == (1, 1)      # topic a only
    assert sub[("t-extraction", "lang = ko")]["den"] == 0
    assert c["metrics"] == {"t-single_label": "accuracy", "t-multi_label": "top1_exact_match", "t-extraction": "exact_match"}


# --- bad input --------------------------------------------------------------------------------------

def test_specs_that_disagree_are_refused_with_every_problem(specs, tmp_path):
    topic = load_task(specs["topic"])
    other = topic.model_copy(update={"name": "topic", "text": ["body"], "slices": ["lang"]})
    with pytest.raises(TaskError) as e:
        check_task_set([topic, other])
    msg = str(e.value)
    assert "appear more than once" in msg and "text fields ['body']" in msg and "slices ['lang']" in msg


def test_cli_train_with_disagreeing_specs_or_a_single_task_method(specs, tmp_path, gemma_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(specs["topics"].read_text().replace("text: [title, body]", "text: [body]")
                   .replace("data: {train: train.csv, test: test.csv}",
                            f"data: {{train: {specs['topic'].parent / 'train.csv'}}}"), encoding="utf-8")
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(specs["topic"]), str(bad), "--method", "sft", "--model", gemma_path,
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "use the same 'text'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()
    res = runner.invoke(app, ["train", str(specs["topic"]), str(specs["topics"]), "--method", "tfidf", "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and "trains one task per run" in res.output and not (tmp_path / "t").exists()
    res = runner.invoke(app, ["train", str(specs["topic"]), str(specs["topics"]), "--method", "auto", "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "auto trains one task per run" in res.output and not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="trains one task per run"):
        classifine.train([specs["topic"], specs["topics"]], method="embed", model=gemma_path, out=tmp_path / "e")


def test_subset_specs_are_checked():
    base = {"name": "x", "kind": "single_label", "text": "t", "label_column": "y", "labels": ["a", "b"]}
    with pytest.raises(TaskError) as e:
        parse_task({**base, "subsets": {"both": {"label_in": ["a"], "column": "c", "values": ["v"]},
                                        "neither": {}, "half": {"column": "c"}, "unknown": {"label_in": ["z"]}}})
    msg = str(e.value)
    assert "'both' needs either" in msg and "'neither' needs either" in msg and "'half' needs both" in msg
    assert "unknown labels ['z']" in msg
    with pytest.raises(TaskError, match="select its rows by a data column"):
        parse_task({"name": "e", "kind": "extraction", "text": "t", "label_column": "y",
                    "subsets": {"g": {"label_in": ["a"]}}})
    spec = parse_task({**base, "subsets": {"g": {"column": "c", "values": [1, "v"]}}})
    assert spec.subsets["g"].values == ["1", "v"] and parse_task(yaml.safe_load(spec.to_yaml())) == spec


def test_column_subset_in_a_single_task_report(toy_tasks, tmp_path):
    spec = yaml.safe_load(toy_tasks["single_label"].read_text())
    spec["subsets"] = {"english": {"column": "lang", "values": ["en"]}}
    path = toy_tasks["single_label"].parent / "with_subset.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    run = classifine.train(path, method="tfidf", out=tmp_path / "r", progress=False)
    m = json.loads((run.dir / "metrics.json").read_text())
    rows = [json.loads(x) for x in (run.dir / "predictions.jsonl").read_text().splitlines()]
    en = [r for r in rows if r["lang"] == "en"]
    s = m["subsets"]["english"]
    assert s["n"] == len(en) and s["correct"] == sum(r["gold"] == r["pred"] for r in en)
    assert np.isclose(s["rate"], s["correct"] / s["n"]) and "lang in en" in (run.dir / "report.md").read_text()


def test_the_manifest_covers_the_other_tasks_specs(runs, tmp_path):
    import shutil

    _, tuned = runs
    copy = tmp_path / "copy"
    shutil.copytree(tuned, copy)
    spec = copy / "tasks" / "topics.yaml"
    spec.write_text(spec.read_text().replace("business", "finance"), encoding="utf-8")
    with pytest.raises(RunError, match="tasks/topics.yaml: changed since training"):
        Run.load(copy)
    # a multi-task run whose manifest predates the specs' entries still loads (nothing to check them by)
    manifest = json.loads((tuned / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("tasks/")}
    old = tmp_path / "old"
    shutil.copytree(tuned, old)
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert list(Run.load(old).tasks) == ["topic", "topics", "companies"]
