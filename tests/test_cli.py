"""The command line: commands work end to end, and bad input gives a message and an exit code,
never a traceback."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from classifine.cli import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def test_train_eval_predict(toy_tasks, tmp_path):
    out = tmp_path / "run"
    r = invoke("train", toy_tasks["single_label"], "--method", "tfidf", "--out", out, "--quiet", "--set", "C=5")
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and (out / "report.md").is_file()
    assert json.loads((out / "metrics.json").read_text())["accuracy"] > 0.8
    assert "C: 5" in (out / "config.yaml").read_text()

    r = invoke("eval", out, "--data", toy_tasks["single_label"].parent / "train.csv", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((out / "metrics.json").read_text())["n"] == 90

    for suffix in ("jsonl", "csv"):
        pred = tmp_path / f"pred.{suffix}"
        r = invoke("predict", out, "--input", toy_tasks["single_label"].parent / "test.csv", "--output", pred,
                   "--batch-size", "7", "--quiet")
        assert r.exit_code == 0, r.output
        lines = pred.read_text().strip().splitlines()
        assert len(lines) == 30 + (suffix == "csv")
    rec = json.loads((tmp_path / "pred.jsonl").read_text().splitlines()[0])
    assert rec["label"] in ("sports", "business", "weather") and set(rec["probabilities"]) == {"sports", "business", "weather"}
    assert "title" in rec, "input fields are kept next to the prediction"


@pytest.mark.parametrize("args,code,needle", [
    (["--method", "tfdif"], 2, "did you mean 'tfidf'"),
    (["--method", "head", "--model", "gema-3-270m"], 3, "did you mean 'gemma-3-270m'"),
    (["--method", "tfidf", "--model", "minilm-l6"], 2, "drop --model"),
    (["--method", "embed"], 2, "needs a model"),
    (["--method", "tfidf", "--set", "nonsense"], 2, "KEY=VALUE"),
    (["--method", "tfidf", "--set", "C=-1"], 2, "C"),
])
def test_bad_arguments_exit_with_message(toy_tasks, tmp_path, args, code, needle):
    r = invoke("train", toy_tasks["single_label"], "--out", tmp_path / "r", *args)
    assert r.exit_code == code, r.output
    assert needle in r.output


def test_bad_data_names_file_and_fix(toy_tasks, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("title,body,label\na,b,sports\nc,d,cooking\n,,weather\n")
    r = invoke("train", toy_tasks["single_label"], "--method", "tfidf", "--train", bad, "--out", tmp_path / "r")
    assert r.exit_code == 2
    assert "bad.csv" in r.output and "'cooking' (1)" in r.output and "row(s) 3" in r.output


def test_bad_task_spec_lists_all_problems(tmp_path):
    spec = tmp_path / "t.yaml"
    spec.write_text("name: x\nkind: single_lable\ntext: t\nlabel_column: y\nlabels: [a, a]\nlables: 1\n")
    r = invoke("train", spec, "--method", "tfidf", "--out", tmp_path / "r")
    assert r.exit_code == 2
    assert "single_lable" in r.output and "duplicate" in r.output and "did you mean 'labels'" in r.output


def test_missing_run_and_missing_input(tmp_path, toy_tasks):
    assert invoke("eval", tmp_path / "nope").exit_code == 2
    out = tmp_path / "run"
    invoke("train", toy_tasks["single_label"], "--method", "tfidf", "--out", out, "--quiet")
    r = invoke("predict", out, "--input", tmp_path / "missing.jsonl", "--output", tmp_path / "o.jsonl")
    assert r.exit_code == 2 and "not found" in r.output
    lacking = tmp_path / "in.jsonl"
    lacking.write_text('{"headline": "x"}\n')
    r = invoke("predict", out, "--input", lacking, "--output", tmp_path / "o.jsonl")
    assert r.exit_code == 2 and "title" in r.output and "headline" in r.output
    assert not (tmp_path / "o.jsonl").exists(), "no output is left behind by a failed run"


def test_listing_commands():
    assert "gemma-3-270m" in invoke("models").output
    assert "tfidf" in invoke("methods").output
