"""Batch prediction on Ray Data, for corpora beyond one machine.

``predict_ray(run_dir, input, output)`` reads the input with Ray Data, runs ``map_batches`` with a
callable class that loads the run's ``Predictor`` once per actor, and writes the predictions. The
same call runs in local mode on a laptop (Ray starts itself) and on a cluster (``ray.init(address=...)``
or ``RAY_ADDRESS``): scaling out is Ray's job, not ours. From the shell (cli.py):

    classifine predict-ray runs/news-head corpus/ preds/ --concurrency 8
    RAY_ADDRESS=auto classifine predict-ray runs/news-head s3://bucket/in/ s3://bucket/out/

Output: a folder of Parquet shards (scales; any Ray-supported path), or one ``.jsonl``/``.csv`` file
in input order, gathered on the driver (convenient up to what one machine can write). Each row keeps
the input columns and adds ``prediction`` (multi-label: labels joined by "|"), ``confidence`` and
``p_<label>`` per label, the columns of ``classifine predict``'s CSV output.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from ..core.runs import Run
from ..errors import ConfigError, DataError
from .predictor import Predictor

SINGLE_FILE = (".jsonl", ".csv")


class RayPredictor:
    """The ``map_batches`` callable: one Predictor per Ray actor, loaded from safetensors/JSON."""

    def __init__(self, run_dir: str):
        self.predictor = Predictor.load(run_dir)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        results = self.predictor.predict(batch.to_dict("records"))
        return add_predictions(batch, results, self.predictor.labels)


def add_predictions(batch: pd.DataFrame, results: list[dict], labels: list[str]) -> pd.DataFrame:
    out = batch.copy()
    good = [r for r in results if "error" not in r]
    if good and "labels" in good[0]:
        out["prediction"] = ["|".join(r["labels"]) if "error" not in r else "" for r in results]
    else:
        out["prediction"] = [r.get("label", "") for r in results]
        out["confidence"] = [r.get("confidence") for r in results]
    for lab in labels:
        out[f"p_{lab}"] = [r["probabilities"][lab] if "error" not in r else None for r in results]
    out["error"] = [r.get("error", "") for r in results]  # a blank record is an error of that row (strings: one
    # column type in every Parquet shard)
    return out


def _read(path: str, text_fields: list[str]):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import ray.data

    lower = path.lower().rstrip("/")
    if lower.endswith((".csv", ".tsv")):
        # text must stay text: a title "2024" would otherwise be read as a number
        convert = pacsv.ConvertOptions(column_types={f: pa.string() for f in text_fields}, strings_can_be_null=False)
        parse = pacsv.ParseOptions(delimiter="\t" if lower.endswith(".tsv") else ",")
        return ray.data.read_csv(path, convert_options=convert, parse_options=parse)
    if lower.endswith((".jsonl", ".json")):
        return ray.data.read_json(path, lines=True)
    if lower.endswith((".parquet", ".pq")) or not Path(path).suffix:
        return ray.data.read_parquet(path)  # a folder of shards, or one file
    raise DataError(f"{path}: unsupported input type", ["use .csv, .tsv, .jsonl, .parquet or a folder of Parquet files"])


def predict_ray(run_dir: str | Path, input_path: str | Path, output: str | Path, batch_size: int = 256,
                concurrency: int = 1, num_cpus: float = 1.0, address: str | None = None) -> dict:
    """Predict ``input_path`` with ``concurrency`` Ray actors of ``num_cpus`` each; see the module doc."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError("Ray Data is not installed", ["pip install 'ray[data]' (or classifine[dist])"]) from None

    run = Run.load(run_dir)  # fail on the driver, before any worker starts
    problems = []
    if batch_size < 1:
        problems.append(f"batch_size must be at least 1 (got {batch_size})")
    if concurrency < 1:
        problems.append(f"concurrency must be at least 1 (got {concurrency})")
    if problems:
        raise ConfigError("invalid Ray settings:", problems)
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    cpus = ray.cluster_resources().get("CPU", 0)
    if concurrency * num_cpus > cpus - 0.5:
        # actors holding every CPU leave none for the read tasks that feed them: Ray Data then waits forever
        raise ConfigError(f"{concurrency} actor(s) × {num_cpus} CPU leave no CPU of the Ray cluster ({cpus:g}) to read the input",
                          [f"lower concurrency or num_cpus (fractions work, e.g. num_cpus=0.5), or add nodes "
                           f"(at most {max(cpus - 1, 0):g} CPUs for actors)"])
    output = str(output)
    single = output.lower().endswith(SINGLE_FILE)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = single  # one file is written in input order
    t0 = time.time()
    ds = _read(str(input_path), list(run.task.text)).map_batches(
        RayPredictor, fn_constructor_kwargs={"run_dir": str(Path(run.dir).resolve())}, batch_size=batch_size,
        batch_format="pandas", concurrency=concurrency, num_cpus=num_cpus)
    n = _write_single(ds, Path(output)) if single else _write_shards(ds, output)
    seconds = time.time() - t0
    return {"records": n, "seconds": round(seconds, 2), "records_per_second": round(n / seconds, 1) if seconds else None,
            "output": output}


def _write_shards(ds, output: str) -> int:
    ds = ds.materialize()  # counted once, written once
    ds.write_parquet(output)
    return ds.count()


def _write_single(ds, output: Path) -> int:
    """Stream the batches to the driver and write one file atomically (temp file, then rename)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial")
    n, csv = 0, output.suffix.lower() == ".csv"
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            for batch in ds.iter_batches(batch_format="pandas"):
                if csv:
                    batch.to_csv(f, header=n == 0, index=False)
                else:
                    for rec in batch.to_dict("records"):
                        f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
                n += len(batch)
        tmp.replace(output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return n
