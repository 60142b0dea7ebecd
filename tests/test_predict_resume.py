"""Resumable `classifine predict`: an interrupted run (exception, Ctrl-C or SIGKILL) keeps its
finished rows, a re-run continues and ends byte-identical to an uninterrupted run, and a partial
output of another input or run is refused unless --overwrite."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import classifine
from classifine.errors import DataError
from classifine.predict.predictor import Predictor, predict_file
from classifine.predict.resumable import sidecar_paths

from toy import rows


@pytest.fixture(scope="module")
def run(toy_tasks, tmp_path_factory) -> Path:
    return classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path_factory.mktemp("r") / "run",
                            progress=False).dir


def write_jsonl(path: Path, n: int, seed: int = 5) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(rows("single_label", n, seed)):
            f.write(json.dumps({"id": i, "title": r["title"], "body": r["body"]}, ensure_ascii=False) + "\n")
    return path


class Interrupting:
    """A predictor that raises after ``after`` batches, like Ctrl-C in the middle of a file."""

    def __init__(self, inner: Predictor, after: int, exc=KeyboardInterrupt):
        self.inner, self.after, self.exc, self.calls = inner, after, exc, 0
        self.run, self.task = inner.run, inner.task

    def predict(self, records):
        self.calls += 1
        if self.calls > self.after:
            raise self.exc()
        return self.inner.predict(records)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_interrupted_run_resumes_to_identical_output(run, tmp_path, suffix):
    data = write_jsonl(tmp_path / "in.jsonl", 230)
    reference = tmp_path / f"ref{suffix}"
    predict_file(run, data, reference, batch_size=20, progress=False)
    out = tmp_path / f"out{suffix}"
    partial, progress = sidecar_paths(out)
    with pytest.raises(KeyboardInterrupt):
        predict_file(run, data, out, batch_size=20, progress=False, sync_seconds=0,
                     predictor=Interrupting(Predictor.load(run), after=4))
    assert not out.exists(), "the output appears only when complete"
    state = json.loads(progress.read_text())
    assert state["rows_done"] == 80 and partial.stat().st_size == state["bytes_done"]
    info = predict_file(run, data, out, batch_size=20, progress=False)
    assert info["resumed_from"] == 80 and info["new_records"] == 150 and info["records"] == 230
    assert out.read_bytes() == reference.read_bytes()
    assert not partial.exists() and not progress.exists()


def test_torn_tail_and_other_batch_size(run, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", 150)
    reference = tmp_path / "ref.jsonl"
    predict_file(run, data, reference, batch_size=16, progress=False)
    out = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        predict_file(run, data, out, batch_size=16, progress=False, sync_seconds=0,
                     predictor=Interrupting(Predictor.load(run), after=3, exc=RuntimeError))
    partial, _ = sidecar_paths(out)
    with open(partial, "ab") as f:  # a crash in the middle of a write leaves half a row behind
        f.write(b'{"id": 48, "title": "half a ro')
    info = predict_file(run, data, out, batch_size=50, progress=False)  # the first attempt's batch size wins
    assert info["resumed_from"] == 48
    assert out.read_bytes() == reference.read_bytes()


def test_other_input_or_run_is_refused_unless_overwrite(run, toy_tasks, tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", 100)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        predict_file(run, data, out, batch_size=10, progress=False, sync_seconds=0,
                     predictor=Interrupting(Predictor.load(run), after=2))
    write_jsonl(data, 100, seed=6)  # same name, other content
    with pytest.raises(DataError) as e:
        predict_file(run, data, out, batch_size=10, progress=False)
    assert "input_sha256" in " ".join(e.value.problems) and "--overwrite" in " ".join(e.value.problems)
    other_run = classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "other", progress=False,
                                 config={"C": 1.0}).dir
    with pytest.raises(DataError) as e:
        predict_file(other_run, data, out, batch_size=10, progress=False)
    assert "run" in " ".join(e.value.problems)
    info = predict_file(run, data, out, batch_size=10, progress=False, overwrite=True)
    assert info["resumed_from"] == 0 and info["records"] == 100
    fresh = tmp_path / "fresh.jsonl"
    predict_file(run, data, fresh, batch_size=10, progress=False)
    assert out.read_bytes() == fresh.read_bytes()


def test_cli_refusal_is_exit_code_2(run, tmp_path):
    from typer.testing import CliRunner

    from classifine.cli import app

    data = write_jsonl(tmp_path / "in.jsonl", 60)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        predict_file(run, data, out, batch_size=10, progress=False, sync_seconds=0,
                     predictor=Interrupting(Predictor.load(run), after=2))
    write_jsonl(data, 61)
    r = CliRunner().invoke(app, ["predict", str(run), "--input", str(data), "--output", str(out), "--quiet"])
    assert r.exit_code == 2 and "--overwrite" in r.output, r.output
    r = CliRunner().invoke(app, ["predict", str(run), "--input", str(data), "--output", str(out), "--quiet", "--overwrite"])
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 61


def test_sigkill_mid_file_then_rerun_is_identical(run, tmp_path):
    data = write_jsonl(tmp_path / "big.jsonl", 8_000)
    reference = tmp_path / "ref.jsonl"
    predict_file(run, data, reference, batch_size=25, progress=False)
    out = tmp_path / "out.jsonl"
    _, progress = sidecar_paths(out)
    cmd = [sys.executable, "-m", "classifine.cli", "predict", str(run), "--input", str(data), "--output", str(out),
           "--batch-size", "25", "--sync-seconds", "0", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if progress.is_file() and json.loads(progress.read_text() or "{}").get("rows_done", 0) >= 500:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed: make the input larger"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = json.loads(progress.read_text())["rows_done"]
    assert 500 <= done < 8_000 and not out.exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "resumed after" in r.stdout
    assert out.read_bytes() == reference.read_bytes()
