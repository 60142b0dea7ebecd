"""The command line behaves like its peers: --version, python -m classifine, shell completion,
--json on train/eval/predict/models/methods, --quiet that leaves only warnings and errors, and
result files readable by others (as the umask says, not mkstemp's 0600)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from typer.testing import CliRunner

import classifine
from classifine.cli import app


def test_version_module_entry_and_completion():
    from importlib.metadata import version

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"classifine {version('classifine')}"
    m = subprocess.run([sys.executable, "-m", "classifine", "--version"], capture_output=True, text=True, timeout=120)
    assert m.returncode == 0 and m.stdout.strip() == r.output.strip()
    assert "--install-completion" in CliRunner().invoke(app, ["--help"]).output


def test_json_output_of_every_listing_and_run_command(toy_tasks, tmp_path):
    runner = CliRunner()
    methods = json.loads(runner.invoke(app, ["methods", "--json"]).output)
    assert {m["name"] for m in methods} >= {"tfidf", "sft", "zeroshot"} and all("kinds" in m for m in methods)
    models = json.loads(runner.invoke(app, ["models", "--json"]).output)
    assert "gemma-3-270m" in {m["name"] for m in models}
    spec = toy_tasks["single_label"]
    trained = runner.invoke(app, ["train", str(spec), "--method", "tfidf", "--out", str(tmp_path / "run"), "--json"])
    assert trained.exit_code == 0, trained.output
    t = json.loads(trained.stdout)
    assert t["run"] == str(tmp_path / "run") and 0 <= t["metrics"]["accuracy"] <= 1 and "beats_baseline" in t["metrics"]
    e = json.loads(runner.invoke(app, ["eval", str(tmp_path / "run"), "--json"]).stdout)
    assert e["accuracy"] == t["metrics"]["accuracy"] and e["n"] == 30
    p = runner.invoke(app, ["predict", str(tmp_path / "run"), "--input", str(spec.parent / "test.csv"),
                            "--output", str(tmp_path / "p.jsonl"), "--json"])
    assert json.loads(p.stdout)["records"] == 30


def test_quiet_training_prints_no_logs_or_bars(toy_tasks, bert_path, tmp_path):
    cmd = [sys.executable, "-m", "classifine", "train", str(toy_tasks["single_label"]), "--method", "head", "--model",
           bert_path, "--out", str(tmp_path / "run"), "--set", "epochs=1", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "'loss'" not in r.stdout and "'eval_" not in r.stdout and "train_runtime" not in r.stdout, r.stdout
    assert "it/s]" not in r.stderr and "Loading weights" not in r.stderr and "Map" not in r.stderr, r.stderr
    # the transformers/safetensors files of the run (checkpoints included) are readable by others too
    private = [str(p) for p in (tmp_path / "run").rglob("*") if p.is_file() and not p.name.startswith(".")
               and stat.S_IMODE(p.stat().st_mode) & 0o044 != 0o044]
    assert not private, private


def test_result_files_are_readable_by_others(toy_tasks, tmp_path):
    old = os.umask(0o022)
    try:
        run = classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "run", progress=False)
        CliRunner().invoke(app, ["card", str(run.dir)])
    finally:
        os.umask(old)
    private = [str(p.relative_to(run.dir)) for p in run.dir.rglob("*")
               if p.is_file() and not p.name.startswith(".") and stat.S_IMODE(p.stat().st_mode) & 0o044 != 0o044]
    assert not private, f"written 0600: {private}"
