"""Bad input is a clear error at the boundary, never a traceback or a half-written run: training
data that breaks a method's preconditions, two trainings on one folder, blank records at predict
time, and the CLI's last-resort guard for anything unexpected."""
from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

import classifine
from classifine.cli import app
from classifine.errors import DataError, RunError

SPEC = "name: bad\nkind: single_label\ntext: [title, body]\nlabel_column: label\nlabels: [a, b, c]\n"


def _task(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["title", "body", "label"])
        w.writeheader()
        w.writerows(rows)
    (folder / "task.yaml").write_text(SPEC + "data: {train: train.csv}\n")
    return folder / "task.yaml"


@pytest.mark.parametrize("case,rows,fragment", [
    ("one class", [{"title": f"t{i}", "body": f"b {i}", "label": "a"} for i in range(30)], "at least two labels"),
    ("a label once", [{"title": f"t{i}", "body": f"b {i}", "label": "ab"[i % 2]} for i in range(30)]
     + [{"title": "x", "body": "y", "label": "c"}], "single training row"),
    ("a blank field", [{"title": f"t{i}", "body": "", "label": "ab"[i % 2]} for i in range(30)], "blank in every row"),
])
def test_training_data_that_cannot_train_is_refused_before_anything_is_written(case, rows, fragment, tmp_path):
    spec = _task(tmp_path / "data", rows)
    with pytest.raises(DataError, match=fragment):
        classifine.train(spec, method="tfidf", out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists(), case
    r = CliRunner().invoke(app, ["train", str(spec), "--method", "tfidf", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and fragment in r.output and "Traceback" not in r.output


def test_a_second_train_on_the_same_folder_is_refused(toy_tasks, tmp_path):
    from classifine.core.runs import run_lock

    out = tmp_path / "run"
    with run_lock(out):  # what a running `classifine train` holds until its run is complete
        with pytest.raises(RunError, match="another classifine train is writing"):
            classifine.train(toy_tasks["single_label"], method="tfidf", out=out, progress=False)
    assert not any(out.iterdir()), "the refused train wrote nothing"
    classifine.train(toy_tasks["single_label"], method="tfidf", out=out, progress=False)  # free again


def test_blank_records_are_errors_of_those_records(toy_tasks, tmp_path):
    run = classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "run", progress=False)
    records = [{"title": "goal", "body": "match"}, {"title": " ", "body": ""}, {"title": "rain", "body": "storm"}]
    out = classifine.load(run.dir).predict(records)
    assert "error" in out[1] and "label" not in out[1] and "blank" in out[1]["error"]
    assert out[0]["label"] == "sports" and out[2]["label"] == "weather"
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    for suffix in (".jsonl", ".csv"):
        target = tmp_path / f"out{suffix}"
        r = CliRunner().invoke(app, ["predict", str(run.dir), "--input", str(data), "--output", str(target), "--quiet"])
        assert r.exit_code == 0, r.output
        if suffix == ".jsonl":
            rows = [json.loads(line) for line in target.read_text().splitlines()]
            assert [("error" in x, x.get("label")) for x in rows] == [(False, "sports"), (True, None), (False, "weather")]
        else:
            rows = list(csv.DictReader(target.open()))
            assert [(x["prediction"], bool(x["error"])) for x in rows] == [("sports", False), ("", True), ("weather", False)]
            assert {"p_sports", "confidence", "error"} <= set(rows[1])


def test_an_unexpected_error_is_one_line_and_a_log_file(monkeypatch, tmp_path):
    from classifine.core import models

    class Broken(dict):
        def values(self):
            raise RuntimeError("boom in the model table")

    monkeypatch.setenv("CLASSIFINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CLASSIFINE_DEBUG", "0")  # recorded, so the --debug run below does not leak into other tests
    monkeypatch.setattr(models, "PACKAGED", Broken())
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 1 and "unexpected RuntimeError: boom in the model table" in r.output
    assert "Traceback" not in r.output and "please report it" in r.output
    logs = list((tmp_path / "cache" / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and "Traceback" in logs[0].read_text() and "boom in the model table" in logs[0].read_text()
    debug = CliRunner().invoke(app, ["--debug", "models"])
    assert isinstance(debug.exception, RuntimeError), "--debug lets the traceback through"


def test_a_run_checks_itself_against_its_manifest(toy_tasks, tmp_path):
    from classifine.core.runs import MANIFEST

    run = classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "run", progress=False)
    listed = json.loads((run.dir / MANIFEST).read_text())["files"]
    assert {"task.yaml", "config.yaml", "model/head.safetensors", "model/decision.json"} <= set(listed)
    assert "metrics.json" not in listed, "reports are outputs that eval and card rewrite"
    CliRunner().invoke(app, ["card", str(run.dir)])  # writing outputs leaves the run intact
    classifine.load(run.dir)
    weights = run.dir / "model" / "head.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-8] + b"\x00" * 8)
    commands = [["predict", str(run.dir), "--input", str(toy_tasks["single_label"].parent / "test.csv"),
                 "--output", str(tmp_path / "p.jsonl")], ["eval", str(run.dir)], ["card", str(run.dir)],
                ["compare", str(run.dir), str(run.dir)], ["serve", str(run.dir), "--port", "1"]]
    for args in commands:
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "model/head.safetensors: changed since training" in r.output, (args, r.output)
        assert "train it again" in r.output and "Traceback" not in r.output
    weights.unlink()
    with pytest.raises(RunError, match="damaged") as e:
        classifine.load(run.dir)
    assert "model/head.safetensors: missing" in e.value.problems
    weights.write_bytes(original)
    (run.dir / "model" / "stray.bin").write_bytes(b"x")
    with pytest.raises(RunError, match="stray.bin: not part of the run"):
        classifine.load(run.dir)
    (run.dir / "model" / "stray.bin").unlink()
    (run.dir / "config.yaml").write_text("method: [unclosed")
    with pytest.raises(RunError):
        classifine.load(run.dir)


def test_runs_without_a_manifest_still_load(toy_tasks, tmp_path):
    from classifine.core.runs import MANIFEST

    run = classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "run", progress=False)
    expected = classifine.load(run.dir).predict([{"title": "goal", "body": "match"}])
    (run.dir / MANIFEST).unlink()  # a run made before manifests existed
    assert classifine.load(run.dir).predict([{"title": "goal", "body": "match"}]) == expected
