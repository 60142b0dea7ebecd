"""Resumable file prediction (``classifine predict``): a crash or Ctrl-C loses no finished rows.

Rows go to ``.NAME.partial`` beside the output as they are predicted. Every ``sync_seconds`` the
partial file is fsynced and a small sidecar ``.NAME.progress.json`` records how many rows and bytes
are durable, together with fingerprints of the input and the run. A re-run with the same input and
run cuts the partial file back to the recorded byte count (dropping a half-written tail) and
continues after the recorded rows, with the batch size of the first attempt so that every batch,
and therefore every number, is the same as in an uninterrupted run. A finished run renames the
partial file onto the output (atomic) and removes the sidecar.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import os
import time
from pathlib import Path

from ..core.data import iter_records
from ..core.runs import atomic_write_json, file_sha256
from ..errors import DataError

log = logging.getLogger("classifine")
FORMAT_VERSION = 1


def sidecar_paths(output_path: Path) -> tuple[Path, Path]:
    return (output_path.with_name(f".{output_path.name}.partial"),
            output_path.with_name(f".{output_path.name}.progress.json"))


def run_fingerprint(run) -> str:
    """Changes when the run is retrained or its decisions change; cheap even for multi-GB weights
    (model files count by name, size and modification time, the small spec files by content)."""
    h = hashlib.sha256()
    for name in ("task.yaml", "config.yaml"):
        p = run.dir / name
        h.update(name.encode() + b"\0" + (p.read_bytes() if p.is_file() else b""))
    for p in sorted(run.model_dir.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(run.model_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _rows_jsonl(batch: list[dict], results: list[dict]) -> bytes:
    return "".join(json.dumps({**rec, **res}, ensure_ascii=False) + "\n" for rec, res in zip(batch, results)).encode("utf-8")


def _csv_row(rec: dict, res: dict) -> dict:
    if "error" in res:  # a record that could not be classified (blank): its columns stay empty
        return {**rec, "prediction": "", "error": res["error"]}
    if "entities" in res:  # extraction: the kept entity names, as a JSON list
        prediction = json.dumps([e["name"] for e in res["entities"]], ensure_ascii=False)
    else:
        prediction = res.get("label", "|".join(res.get("labels", [])))
    row = {**rec, "prediction": prediction}
    if "confidence" in res:
        row["confidence"] = res["confidence"]
    row.update({f"p_{lab}": p for lab, p in res.get("probabilities", {}).items()})
    return {**row, "error": ""}


def _csv_fieldnames(rec: dict, task) -> list[str]:
    """Input columns, then what every row may hold: the columns do not depend on the first row."""
    scores = [] if task.kind == "extraction" else (["confidence"] if task.kind != "multi_label" else []) + \
        [f"p_{lab}" for lab in task.label_names]
    return list(rec) + ["prediction"] + scores + ["error"]


def _rows_csv(rows: list[dict], fieldnames: list[str], header: bool) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=fieldnames)
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _resume_state(progress: Path, partial: Path, identity: dict, overwrite: bool, output: Path) -> dict | None:
    """The recorded progress to continue from, None to start afresh; refuses a foreign partial file."""
    if overwrite or not progress.is_file() or not partial.is_file():
        return None
    try:
        state = json.loads(progress.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        state = None  # written atomically, so this is not ours: start afresh, nothing durable is lost
    if not isinstance(state, dict) or state.get("version") != FORMAT_VERSION:
        return None
    problems = [f"{key}: the interrupted run used {state.get(key)!r}, this one {value!r}"
                for key, value in identity.items() if state.get(key) != value]
    if partial.stat().st_size < state.get("bytes_done", 0):
        problems.append(f"{partial} is shorter than its progress record says ({partial.stat().st_size} < {state['bytes_done']} bytes)")
    if problems:
        raise DataError(f"{output} has an interrupted prediction that this command cannot continue",
                        problems + ["pass --overwrite to start over (its finished rows are discarded), or choose another --output"])
    return state


def predict_file(predictor, input_path: str | Path, output_path: str | Path, batch_size: int = 256,
                 progress: bool = True, overwrite: bool = False, sync_seconds: float = 2.0) -> dict:
    from tqdm.auto import tqdm

    input_path, output_path = Path(input_path), Path(output_path)
    fmt = output_path.suffix.lower()
    if fmt not in (".jsonl", ".csv"):
        raise DataError(f"unsupported output type {fmt!r}", ["write predictions to a .jsonl or .csv file"])
    batches = iter_records(input_path, batch_size)
    first = next(batches, [])  # fail on a missing or unreadable input before any output exists
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial, progress_path = sidecar_paths(output_path)
    identity = {"input": str(input_path.resolve()), "input_sha256": file_sha256(input_path),
                "run": str(Path(predictor.run.dir).resolve()), "run_fingerprint": run_fingerprint(predictor.run), "format": fmt,
                **({"task": predictor.task.name} if predictor.task.name != predictor.run.task.name else {})}
    state = _resume_state(progress_path, partial, identity, overwrite, output_path)
    if state is None:
        partial.unlink(missing_ok=True)
        progress_path.unlink(missing_ok=True)
        state = {"version": FORMAT_VERSION, **identity, "batch_size": batch_size, "rows_done": 0, "bytes_done": 0,
                 "fieldnames": None, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    elif state["batch_size"] != batch_size:
        # other batches could change the last digit of a probability; the first attempt's keep it identical
        log.warning("resuming with the interrupted run's batch size %d (not %d)", state["batch_size"], batch_size)
        batches = iter_records(input_path, state["batch_size"])
        first = next(batches, [])
    resumed_from = state["rows_done"]
    t0 = time.time()
    bar = tqdm(desc="predict", unit="rec", disable=not progress, initial=resumed_from)
    with open(partial, "ab") as f:
        f.truncate(state["bytes_done"])  # a tail written after the last sync may be half a row

        def commit() -> None:
            f.flush()
            os.fsync(f.fileno())
            state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            atomic_write_json(progress_path, state)

        last_sync, skip = time.monotonic(), resumed_from
        try:
            for batch in itertools.chain([first], batches):
                if skip >= len(batch):
                    skip -= len(batch)
                    continue
                batch, skip = batch[skip:], 0
                results = predictor.predict(batch)
                if fmt == ".jsonl":
                    data = _rows_jsonl(batch, results)
                else:
                    rows = [_csv_row(rec, res) for rec, res in zip(batch, results)]
                    header = state["fieldnames"] is None
                    if header:
                        state["fieldnames"] = _csv_fieldnames(batch[0], predictor.task)
                    data = _rows_csv(rows, state["fieldnames"], header)
                f.write(data)
                state["rows_done"] += len(batch)
                state["bytes_done"] += len(data)
                bar.update(len(batch))
                if time.monotonic() - last_sync >= sync_seconds:
                    commit()
                    last_sync = time.monotonic()
        except BaseException:
            f.truncate(state["bytes_done"])  # only whole batches are recorded as done
            commit()
            log.warning("prediction stopped after %d rows; they are kept in %s: re-run the same command to continue",
                        state["rows_done"], partial)
            raise
        finally:
            bar.close()
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, output_path)
    progress_path.unlink(missing_ok=True)
    seconds = time.time() - t0
    new = state["rows_done"] - resumed_from
    return {"records": state["rows_done"], "new_records": new, "resumed_from": resumed_from, "seconds": round(seconds, 3),
            "records_per_second": round(new / seconds, 2) if seconds else None, "output": str(output_path)}
