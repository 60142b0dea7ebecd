"""The model card: Hugging Face metadata that the Hub's own parser accepts, numbers equal to
metrics.json, the comparison with a base run, and a usage example that really runs."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import classifine
from classifine.evaluation.card import write_card
from classifine.cli import app
from classifine.errors import RunError

ROOT = Path(__file__).resolve().parents[1]
NEWS = ROOT / "examples" / "news_category" / "task.yaml"
SMALL = {"ngram_min": 2, "ngram_max": 3, "max_features": 5000, "C": 2.0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("card")
    return {name: classifine.train(NEWS, method="tfidf", out=base / name, config=cfg, progress=False).dir
            for name, cfg in {"base": {"analyzer": "word", "ngram_max": 1}, "tuned": SMALL}.items()}


@pytest.fixture(scope="module")
def card(runs) -> str:
    return write_card(runs["tuned"], base=runs["base"], license="apache-2.0").read_text(encoding="utf-8")


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def split(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    head, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def cell(c: int, n: int) -> str:
    return f"{100 * c / n:.2f}% ({c}/{n})"


def test_front_matter_is_valid_hub_metadata(card, runs):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    meta, _ = split(card)
    m = metrics(runs["tuned"])
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-classification"
    assert meta["language"] == sorted(m["slices"]["lang"]) == ["en", "ko"]
    assert meta["library_name"] == "classifine" and "base_model" not in meta  # tfidf has no base model
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "tuned"
    values = {(r.metric_type, r.metric_name): r.metric_value for r in results}
    assert values[("accuracy", "accuracy")] == round(m["accuracy"], 4)
    assert values[("f1", "macro F1")] == round(m["macro_f1"], 4)
    assert values[("f1", "weighted F1")] == round(m["weighted_f1"], 4)
    assert all(r.task_type == "text-classification" and r.dataset_type == "news-category" for r in results)
    parsed = ModelCard(card)  # the Hub library reads it back
    assert parsed.data.license == "apache-2.0"


def test_body_numbers_equal_metrics_json(card, runs):
    _, body = split(card)
    m = metrics(runs["tuned"])
    assert f"**accuracy {100 * m['accuracy']:.2f}% ({m['correct']}/{m['n']})**" in body
    assert f"| accuracy | {cell(m['correct'], m['n'])} |" in body
    assert f"| macro F1 | {100 * m['macro_f1']:.2f}% |" in body
    for col, values in m["slices"].items():
        for value, s in values.items():
            assert f"| {value} | {s['n']} | {cell(s['correct'], s['n'])} |" in body, (col, value)
    sub = m["subsets"]["economic"]
    assert cell(sub["found"], sub["relevant"]) in body
    for lab, pc in m["per_class"].items():
        assert f"| {lab} | {100 * pc['precision']:.2f}% | {100 * pc['recall']:.2f}% | {100 * pc['f1']:.2f}% | {pc['support']} |" in body
    for lab, row in zip(m["confusion_matrix"]["labels"], m["confusion_matrix"]["matrix"]):
        assert f"| {lab} | " + " | ".join(map(str, row)) + " |" in body
    config = classifine.core.runs.Run.load(runs["tuned"]).config
    assert f"{config['data']['train_rows']} training rows" in body and f"training time: {config['train_seconds']} s" in body
    assert "| ngram_max | 3 |" in body and "| max_features | 5000 |" in body
    assert "Most confident mistakes" not in body  # test rows are not published in a card


def test_comparison_with_the_base_run(card, runs):
    _, body = split(card)
    a, b = metrics(runs["base"]), metrics(runs["tuned"])
    assert "## Comparison with the base run" in body
    line = (f"| accuracy | {cell(a['correct'], a['n'])} | {cell(b['correct'], b['n'])} | "
            f"{100 * (b['accuracy'] - a['accuracy']):+.2f} pp |")
    assert line in body
    for value, sa in a["slices"]["lang"].items():
        sb = b["slices"]["lang"][value]
        assert f"| lang = {value} | {cell(sa['correct'], sa['n'])} | {cell(sb['correct'], sb['n'])} |" in body


def test_limitations_name_the_weakest_label_and_validity(card, runs):
    _, body = split(card)
    m = metrics(runs["tuned"])
    worst = min(m["per_class"], key=lambda k: m["per_class"][k]["f1"])
    limits = body.split("## Limitations", 1)[1].split("## Usage", 1)[0]
    assert f"Weakest label: `{worst}`" in limits
    weakest_lang = min(m["slices"]["lang"], key=lambda v: m["slices"]["lang"][v]["accuracy"])
    assert f"Weakest lang: `{weakest_lang}`" in limits
    assert "Weakest month" not in limits  # 20 rows per month: too few to rank
    assert "every output is a valid label" in limits and "Evaluated only on: en, ko" in limits
    assert f"expected calibration error {m['calibration']['ece']:.3f}" in limits


def test_usage_example_runs_and_prints_the_recorded_prediction(card, runs, tmp_path):
    _, body = split(card)
    code = re.search(r"```python\n(.*?)```", body, re.S).group(1)
    assert f'classifine.load("{runs["tuned"]}")' in code
    expected = re.search(r"# (\S+) ([0-9.]+)\n", code)
    script = tmp_path / "usage.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    label, confidence = done.stdout.split()
    assert label == expected.group(1)
    assert float(confidence) == pytest.approx(float(expected.group(2)), abs=1e-3)
    labels = list(classifine.load_task(NEWS).labels)
    assert label in labels


def test_card_for_an_imbalanced_run_warns(toy_tasks, tmp_path):
    with (toy_tasks["single_label"].parent / "train.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rare = [r for r in rows if r["label"] != "weather"] + [r for r in rows if r["label"] == "weather"][:4]
    with (tmp_path / "train.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rare)
    run = classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "run", train=tmp_path / "train.csv",
                           progress=False)
    text = write_card(run.dir, output=tmp_path / "CARD.md", languages=["en"]).read_text()
    meta, body = split(text)
    assert meta["language"] == ["en"] and meta["license"] == "other"
    stats = run.config["label_stats"]["train"]
    assert f"largest label has {stats['imbalance_ratio']:.1f}×" in body and "rarest: weather" in body


def test_card_cli_and_unevaluated_run(runs, tmp_path):
    r = CliRunner().invoke(app, ["card", str(runs["base"]), "--license", "mit", "--language", "ko", "--name", "nsmc-x",
                                 "--usage-path", "./model-folder", "-o", str(tmp_path / "C.md")])
    assert r.exit_code == 0, r.output
    meta, body = split((tmp_path / "C.md").read_text())
    assert (meta["license"], meta["language"], meta["model-index"][0]["name"]) == ("mit", ["ko"], "nsmc-x")
    assert 'classifine.load("./model-folder")' in body and "# nsmc-x" in body
    bare = tmp_path / "bare"
    shutil.copytree(runs["base"], bare)
    (bare / "metrics.json").unlink()
    with pytest.raises(RunError, match="no evaluation"):
        write_card(bare)
    r = CliRunner().invoke(app, ["card", str(bare)])
    assert r.exit_code == 2 and "classifine eval" in r.output and "Traceback" not in r.output


def test_usage_example_of_a_multi_label_run(toy_tasks, tmp_path):
    run = classifine.train(toy_tasks["multi_label"], method="tfidf", out=tmp_path / "run", progress=False)
    meta, body = split(write_card(run.dir).read_text(encoding="utf-8"))
    code = re.search(r"```python\n(.*?)```", body, re.S).group(1)
    expected = code.rstrip().rsplit("# ", 1)[1]
    script = tmp_path / "usage.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected and expected.startswith("[")
    assert {m["type"] for m in meta["model-index"][0]["results"][0]["metrics"]} >= {"accuracy", "exact_match", "f1"}


def test_card_of_an_extraction_run(toy_tasks, tmp_path):
    """No extraction method trains yet: a run folder is assembled around a stub evaluation, the way
    an sft run will look, so the card's extraction path is exercised before that lands."""
    from types import SimpleNamespace

    from classifine.core.data import load_examples
    from classifine.evaluation.report import evaluate
    from classifine.core.task import parse_task

    spec = parse_task({"name": "orgs", "kind": "extraction", "text": ["title", "body"], "label_column": "label",
                       "entity": "company", "min_confidence": 0.5, "normalize": ["casefold"], "slices": ["lang"]})
    examples = load_examples(spec, toy_tasks["extraction"].parent / "test.csv")
    gold = dict(zip(examples.texts, examples.labels))

    def predict_texts(texts):
        return [{"entities": [{"name": g.lower(), "confidence": 0.9} for g in gold[t]][: 1 + i % 2]}
                for i, t in enumerate(texts)]

    run_dir = tmp_path / "sft-run"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "task.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({
        "method": "sft", "model": "gemma-3-270m", "model_info": {"languages": ["multilingual"]},
        "config": {"max_length": 512, "lora": True}, "seed": 13, "train_seconds": 12.5, "versions": {"python": "3"},
        "data": {"train_rows": 90, "validation_rows": 10, "validation": "held out from train"},
        "label_stats": {"train": {"rows": 90, "entities": 80}}}), encoding="utf-8")
    stub = SimpleNamespace(task=spec, decision={}, predict_texts=predict_texts,
                           run=SimpleNamespace(method="sft", config={"model": "gemma-3-270m"}, dir=run_dir))
    m = evaluate(stub, examples, run_dir, progress=False)
    meta, body = split(write_card(run_dir).read_text(encoding="utf-8"))
    assert meta["pipeline_tag"] == "text-generation" and meta["base_model"] == "google/gemma-3-270m"
    values = {r["name"]: r["value"] for r in meta["model-index"][0]["results"][0]["metrics"]}
    assert values["entity-set exact match"] == round(m["exact_match"], 4) and values["entity F1"] == round(m["f1"], 4)
    assert f"| entity-set exact match | {cell(m['correct'], m['n'])} |" in body
    assert "truncated to 512 tokens" in body and "entity: `company`" in body
    assert 'print(result["company"])' in body and "invalid-output flags" in body
