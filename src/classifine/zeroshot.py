"""Zero-shot runs: any causal LM evaluated on a task without training (``classifine eval --model
NAME --task T``). The result is an ordinary run directory (method ``sft``, no adapter), so report,
compare and card treat the base model like any fine-tuned run: the "base" row of a comparison."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .data import load_examples
from .errors import DataError
from .generative import META
from .models import describe, resolve
from .predictor import Predictor
from .report import evaluate
from .runs import Run, atomic_write_text, atomic_write_yaml, library_versions, prepare_run_dir
from .task import TaskSpec, as_task


def zero_shot(task: TaskSpec | str | Path, model: str, out: str | Path, data: str | Path | None = None,
              decoding: str = "score", max_length: int = 512, overwrite: bool = False, progress: bool = True) -> dict:
    # --- setup ---
    task = as_task(task)
    resolve(model)  # an unknown or missing model fails before anything is written
    path = Path(data) if data is not None else task.data_path("test")
    if path is None:
        raise DataError("no evaluation data", ["pass --data FILE or set data.test in the task spec"])
    examples = load_examples(task, path)
    run_dir = prepare_run_dir(out, overwrite=overwrite)
    frozen = task.model_copy(update={"data": task.data.model_copy(update={"test": str(path.resolve())})})
    atomic_write_text(run_dir / "task.yaml", frozen.to_yaml())
    meta = {"kind": task.kind, "labels": task.label_names, "base_model": model, "zero_shot": True,
            "max_length": max_length, "decoding": decoding, "max_new_tokens": 24, "score_batch_size": 8, "temperature": 1.0}
    atomic_write_text(run_dir / "model" / META, json.dumps(meta, ensure_ascii=False, indent=1))
    atomic_write_yaml(run_dir / "config.yaml", {
        "method": "sft", "model": model, "model_info": describe(model), "config": {"zero_shot": True, "decoding": decoding},
        "seed": 0, "data": {"test": str(path), "test_rows": len(examples)}, "train_seconds": 0.0,
        "info": {"zero_shot": True}, "versions": library_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    # --- evaluate ---
    return evaluate(Predictor.load(Run.load(run_dir)), examples, run_dir, progress=progress)
