"""``classifine annotate``: label an unlabelled file with an annotator, resumably.

Reads top to bottom: setup (task, input columns, examples, annotator, folder identity; every check
before anything is written) → plan → annotate in batches (cache first, then the annotator; rows
appended in input order) → counts in ``annotation.json``.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from pathlib import Path

from ..core.annotations import AnnotationFolder, record
from ..core.data import iter_records, load_examples, records_to_texts
from ..core.runs import file_sha256
from ..core.task import DataPaths, TaskSpec, load_task
from ..errors import ConfigError, DataError
from ..generative.prompts import prompt_body
from .annotators import ExamplePicker, LocalAnnotator, ServerAnnotator, with_examples
from .cache import AnswerCache

log = logging.getLogger("classifine")
CHARS_PER_TOKEN = 3.5  # for --plan only: a rough, script-independent estimate, labelled as such


def _input_rows(task: TaskSpec, path: Path) -> int:
    """Count rows and check the text fields once, before any call is made."""
    if not path.is_file():
        raise DataError(f"input file {path} does not exist", ["pass the unlabelled file with --input"])
    n = 0
    for batch in iter_records(path, 1024):
        records_to_texts(task, batch, source=str(path))  # raises with the missing fields
        n += len(batch)
    if n == 0:
        raise DataError(f"{path} has no rows", ["add rows to annotate"])
    return n


def _identity(task: TaskSpec, input_path: Path, annotator, picker: ExamplePicker | None, examples_sha: str | None) -> dict:
    frame = prompt_body(task, "{text}")
    return {"task": hashlib.sha256(task.to_yaml().encode()).hexdigest()[:16],
            "input": file_sha256(input_path)[:16], "annotator": annotator.identity(),
            "prompt": hashlib.sha256(frame.encode()).hexdigest()[:16],
            "examples": None if picker is None else {**picker.describe(), "file": examples_sha}}


def annotate(task: TaskSpec | str | Path, input_path: str | Path, out: str | Path, annotator: ServerAnnotator | LocalAnnotator,
             examples: str | Path | None = None, shots: int = 4, shot_mode: str = "diverse", overwrite: bool = False,
             plan: bool = False, batch_size: int = 32, progress: bool = True) -> dict:
    """Annotate ``input_path`` into ``out`` and return the summary (``annotation.json``); with
    ``plan`` return what the run would do, calling and writing nothing."""
    # -- setup
    task = task if isinstance(task, TaskSpec) else load_task(task)
    input_path, folder = Path(input_path), AnnotationFolder(out)
    n_rows = _input_rows(task, input_path)
    picker, examples_sha = None, None
    if examples is not None:
        if shots < 1:
            raise ConfigError(f"--shots {shots} with --examples: ask for at least one example", ["use --shots 1 or more"])
        pool = load_examples(task, examples)
        picker, examples_sha = ExamplePicker(pool, shots, shot_mode), file_sha256(Path(examples))[:16]
    identity = _identity(task, input_path, annotator, picker, examples_sha)
    if plan:
        return _plan(task, input_path, folder, annotator, picker, n_rows, identity, batch_size)
    done = folder.open(identity, overwrite)
    folder.write_task(task.model_copy(update={"data": DataPaths()}))
    cache = AnswerCache(folder.cache_path)
    meta = {"task": {"name": task.name, "kind": task.kind, "labels": task.label_names}, "identity": identity,
            "annotator": annotator.name(), "input": str(input_path), "finished": False,
            "scoring": _scoring(task, annotator)}
    previous = folder.meta() if folder.holds(folder.path) else {}
    folder.write_meta({**previous, **meta})
    # -- annotate
    t0 = time.time()
    result = asyncio.run(_annotate_rows(task, input_path, folder, annotator, picker, cache, done, n_rows,
                                        batch_size, progress))
    # -- summary
    rows = folder.read()
    counts = _counts(task, rows)
    summary = {**meta, "finished": True, "counts": counts, "seconds": round(time.time() - t0, 2),
               "rows_this_run": n_rows - done, "calls_this_run": result["calls"],
               "cache_hits_this_run": cache.hits, "retries_this_run": result["retried"],
               "usage_this_run": result["usage"]}
    summary["usage_total"] = {k: previous.get("usage_total", {}).get(k, 0) + v for k, v in result["usage"].items()}
    summary["calls_total"] = previous.get("calls_total", 0) + summary["calls_this_run"]
    folder.write_meta(summary)
    cache.close()
    return summary


async def _annotate_rows(task, input_path, folder, annotator, picker, cache, done, n_rows, batch_size, progress) -> dict:
    from tqdm.auto import tqdm

    client = None
    if isinstance(annotator, ServerAnnotator):
        from .client import ChatClient

        client = ChatClient(annotator.base_url, annotator.model, annotator.api_key_env, annotator.timeout,
                            annotator.retries, annotator.concurrency, annotator.backoff)
        await client.__aenter__()
        annotator.client = client
    try:
        if client is not None:
            await client.check()
        bar = tqdm(total=n_rows, initial=done, unit="row", desc="annotating", disable=not progress, dynamic_ncols=True)
        row = 0
        for batch in iter_records(input_path, batch_size):
            if row + len(batch) <= done:
                row += len(batch)
                continue
            skip = max(0, done - row)
            batch, start = batch[skip:], row + skip
            texts = records_to_texts(task, batch, source=str(input_path))
            filled = [i for i, t in enumerate(texts) if t.strip()]
            shots = picker.shots([texts[i] for i in filled]) if picker else [[] for _ in filled]
            found = await annotator.annotate(task, [texts[i] for i in filled], shots, cache)
            results: list[dict] = [{"label": None, "probabilities": None, "confidence": None, "valid": False,
                                    "raw": "", "error": "empty text"} for _ in texts]
            for i, res in zip(filled, found):
                results[i] = res
            folder.append([record(rec, row=start + i, **res, annotator=annotator.name())
                           for i, (rec, res) in enumerate(zip(batch, results))])
            row = start + len(batch)
            bar.update(len(batch))
        bar.close()
    finally:
        if client is not None:
            await client.__aexit__(None, None, None)
    return {"calls": client.calls if client else cache.misses, "retried": client.retried if client else 0,
            "usage": dict(client.usage) if client else {}}


def _scoring(task: TaskSpec, annotator) -> str:
    if isinstance(annotator, LocalAnnotator) and task.kind == "extraction":
        return "local constrained JSON decoding; entity confidence = product of the probabilities of its tokens"
    if isinstance(annotator, LocalAnnotator):
        return "local label scoring: the log-probability of each label's answer after the prompt, softmax over labels"
    if task.kind == "multi_label":
        return "one yes/no question per label; P(yes) from the first answer token's top log-probabilities"
    if task.kind == "extraction":
        return "JSON answer parsed; entity confidence = product of the probabilities of its tokens"
    return ("the answer decides the label; each label's probability from the answer tokens' top log-probabilities "
            "where its text leaves the generated path, normalised over labels (annotate/answers.py)")


def _counts(task: TaskSpec, rows: list[dict]) -> dict:
    valid = [r for r in rows if r.get("valid")]
    by_label: Counter = Counter()
    for r in valid:
        lab = r.get("label")
        if task.kind in ("multi_label",):
            by_label.update(lab or [])
        elif task.kind != "extraction":
            by_label[lab] += 1
    confs = [r["confidence"] for r in valid if r.get("confidence") is not None]
    return {"rows": len(rows), "valid": len(valid), "invalid": len(rows) - len(valid),
            "invalid_rate": round((len(rows) - len(valid)) / max(len(rows), 1), 4),
            "by_label": dict(by_label.most_common()), "mean_confidence": round(sum(confs) / len(confs), 4) if confs else None,
            "invalid_examples": [r.get("raw", "")[:200] for r in rows if not r.get("valid")][:5]}


def _plan(task, input_path, folder, annotator, picker, n_rows, identity, batch_size) -> dict:
    """Calls and prompt tokens the run would spend; reads the cache, calls and writes nothing."""
    cache = AnswerCache.read_only(folder.cache_path)
    done = 0
    if folder.holds(folder.path) and folder.meta().get("identity") == identity and folder.rows_path.exists():
        done = folder.rows_path.read_bytes().count(b"\n")
    calls = cached = chars = 0
    row = 0
    for batch in iter_records(input_path, batch_size):
        texts = records_to_texts(task, batch, source=str(input_path))
        keep = [t for i, t in enumerate(texts) if t.strip() and row + i >= done]
        row += len(batch)
        shots = picker.shots(keep) if picker else [[] for _ in keep]
        for text, s in zip(keep, shots):
            if isinstance(annotator, ServerAnnotator):
                for p in annotator.payloads(task, text, s):
                    calls += 1
                    if cache.has(annotator.key(p)):
                        cached += 1
                    else:
                        chars += sum(len(m["content"]) for m in p["messages"])
            else:
                t = with_examples(task, s)
                calls += 1
                if cache.has(annotator.key(t, text)):
                    cached += 1
                else:
                    chars += len(prompt_body(t, text))
    cache.close()
    return {"rows": n_rows, "rows_done": done, "requests": calls, "cached": cached, "to_make": calls - cached,
            "prompt_tokens_estimate": int(chars / CHARS_PER_TOKEN), "annotator": annotator.name(),
            "scoring": _scoring(task, annotator), "note": f"tokens estimated at {CHARS_PER_TOKEN} characters per token"}
