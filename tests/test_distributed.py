"""Scaling out on existing engines: Ray Data batch prediction in local mode, and DDP training with
`accelerate launch` on 2 CPU processes (gloo), where only the main process writes the run."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import classifine
from classifine.predict.predictor import Predictor


@pytest.fixture(scope="module")
def run(toy_tasks, tmp_path_factory) -> Path:
    return classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path_factory.mktemp("r") / "run",
                            progress=False).dir


def test_ray_data_predictions_match_the_predictor(run, toy_tasks, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[dist]'")
    pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'ray[data]'")
    from classifine.predict.distributed import predict_ray

    source = toy_tasks["single_label"].parent / "test.csv"
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    frame.insert(0, "id", range(len(frame)))
    frame.loc[0, "title"] = "2024"  # a numeric-looking title must reach the model as text
    data = tmp_path / "in.csv"
    frame.to_csv(data, index=False)
    expected = Predictor.load(run).predict(frame.to_dict("records"))

    from concurrent.futures import ThreadPoolExecutor

    from typer.testing import CliRunner

    from classifine.cli import app
    from classifine.errors import ConfigError

    # local mode on loopback; a bounded wait, so a scheduling deadlock fails instead of hanging
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    try:
        with pytest.raises(ConfigError, match="leave no CPU"):
            predict_ray(run, data, tmp_path / "never.jsonl", concurrency=2, num_cpus=1)
        # the same refusal from the command line: a message with the fix and exit code 2, no traceback
        refused = CliRunner().invoke(app, ["predict-ray", str(run), str(data), str(tmp_path / "never.csv"),
                                           "--concurrency", "2", "--num-cpus", "1"])
        assert refused.exit_code == 2 and "leave no CPU" in refused.output and "Traceback" not in refused.output
        with ThreadPoolExecutor(1) as pool:
            single = pool.submit(predict_ray, run, data, tmp_path / "out.jsonl", 8, 2, 0.5).result(timeout=300)
            shards = pool.submit(predict_ray, run, data, tmp_path / "shards", 8).result(timeout=300)
            cli = pool.submit(CliRunner().invoke, app, ["predict-ray", str(run), str(data), str(tmp_path / "cli.jsonl"),
                                                         "--batch-size", "8", "--num-cpus", "0.5", "--json"]).result(timeout=300)
    finally:
        ray.shutdown()
    assert cli.exit_code == 0 and json.loads(cli.output.strip().splitlines()[-1])["records"] == len(frame), cli.output
    assert (tmp_path / "cli.jsonl").read_text() == (tmp_path / "out.jsonl").read_text()
    assert single["records"] == shards["records"] == len(frame)
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(len(frame))), "a single output file keeps the input order"
    got = pd.read_parquet(tmp_path / "shards").sort_values("id").to_dict("records")
    for out in (rows, got):
        assert [r["prediction"] for r in out] == [e["label"] for e in expected]
        for r, e in zip(out, expected):
            assert r["title"] == frame.loc[r["id"], "title"]
            assert r["confidence"] == pytest.approx(e["confidence"])
            assert {lab: r[f"p_{lab}"] for lab in e["probabilities"]} == pytest.approx(e["probabilities"])


WRAPPER = '''
import os, sys
from pathlib import Path
# record which process writes which file: the run directory must be written by rank 0 only
log = Path(os.environ["WRITE_LOG"])
def note(path):
    with open(log, "a") as f:
        f.write(f"{os.environ.get('RANK', '0')}\\t{Path(path).resolve()}\\n")
from classifine.core import runs
_atomic = runs.atomic_write_bytes
def atomic(path, data):
    note(path)
    return _atomic(path, data)
runs.atomic_write_bytes = atomic
_write_text = Path.write_text
def write_text(self, *a, **k):
    note(self)
    return _write_text(self, *a, **k)
Path.write_text = write_text
import transformers
for cls in (transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase):
    def wrap(original):
        def save_pretrained(self, directory, *a, **k):
            note(Path(directory) / "SAVE_PRETRAINED")
            return original(self, directory, *a, **k)
        return save_pretrained
    cls.save_pretrained = wrap(cls.save_pretrained)
from classifine.cli import main
sys.argv = ["classifine", *sys.argv[1:]]
main()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_ddp_on_two_cpu_processes(toy_tasks, bert_path, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate's launcher is not installed")
    wrapper, log, out = tmp_path / "wrapper.py", tmp_path / "writes.log", tmp_path / "run"
    wrapper.write_text(WRAPPER)
    # --multi_gpu is accelerate's name for "torchrun N local processes"; without CUDA they use gloo on CPU
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()), str(wrapper),
           "train", str(toy_tasks["single_label"]), "--method", "head", "--model", bert_path, "--out", str(out),
           "--set", "epochs=2", "--set", "batch_size=8", "--quiet"]
    env = {**os.environ, "WRITE_LOG": str(log), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    for name in ("task.yaml", "config.yaml", "metrics.json", "predictions.jsonl", "report.md", "model/model.safetensors",
                 "model/config.json", "model/classifine_head.json"):
        assert (out / name).is_file(), name
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and all((c / "rng_state_0.pth").is_file() and (c / "rng_state_1.pth").is_file() for c in checkpoints), \
        "both processes took part in training"
    config = classifine.load(out).run.config
    # 81 training rows (90 less 10 % held out), 8 per process and step, 2 processes: 6 steps per epoch
    assert config["info"]["steps"] == 12
    writes = [line.split("\t") for line in log.read_text().splitlines()]
    run_root = str(out.resolve())
    by_rank1 = [p for rank, p in writes if rank != "0" and p.startswith(run_root)]
    assert by_rank1 == [], f"rank 1 wrote into the run directory: {by_rank1}"
    by_rank0 = [p for rank, p in writes if rank == "0" and p.startswith(run_root)]
    assert by_rank0.count(str(out / "config.yaml")) == 1 and by_rank0.count(str(out / "task.yaml")) == 1
    assert any(p.endswith("model/SAVE_PRETRAINED") for p in by_rank0)
    assert Predictor.load(out).predict([{"title": "goal", "body": "league match"}])[0]["label"] in ("sports", "business", "weather")
