"""Benchmark of the foundation methods (tfidf, embed, head) on the bundled example and two Korean
datasets from ../shared/datasets, on this machine's CPU. Results: bench/results/foundation.json
and a markdown table on stdout (copied into BENCHMARKS.md).

    python bench/foundation.py                       # everything (about an hour on 2 cores)
    python bench/foundation.py --only example        # one dataset
    python bench/foundation.py --methods tfidf embed

Large training sets are subsampled (stratified, seed 13) for the model-based methods, because
embedding 20,000 reviews with Gemma 3 270M takes longer than a benchmark should on 2 cores; the
sizes used are recorded next to every number.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import classifine  # noqa: E402
from classifine.core.task import load_task  # noqa: E402

DATASETS = {
    "example": ROOT / "examples/news_category/task.yaml",
    "ko_nsmc_sentiment": ROOT / "bench/tasks/ko_nsmc_sentiment.yaml",
    "ko_hate_speech_kocohub": ROOT / "bench/tasks/ko_hate_speech_kocohub.yaml",
    "id_multilabel_hate_abusive": ROOT / "bench/tasks/id_hate_3class.yaml",
}
# (method, model, settings, max train rows, max test rows); None = all rows
RUNS = {
    "tfidf": ("tfidf", None, {}, None, None),
    "embed": ("embed", "gemma-3-270m", {"batch_size": 16, "max_length": 128}, 3000, 1500),
    "head": ("head", "gemma-3-270m", {"lora": True, "epochs": 1, "batch_size": 8, "max_length": 128,
                                       "learning_rate": 2e-4, "eval_steps": 40, "logging_steps": 20}, 600, 500),
}


def sample(frame: pd.DataFrame, n: int | None, label: str, seed: int = 13) -> pd.DataFrame:
    if n is None or len(frame) <= n:
        return frame
    from sklearn.model_selection import train_test_split

    part, _ = train_test_split(frame, train_size=n, stratify=frame[label], random_state=seed)
    return part


def run_one(name: str, spec_path: Path, method_key: str, work: Path) -> dict:
    method, model, settings, n_train, n_test = RUNS[method_key]
    task = load_task(spec_path)
    train = pd.read_csv(task.data_path("train"), dtype=str, keep_default_na=False)
    test = pd.read_csv(task.data_path("test"), dtype=str, keep_default_na=False)
    train, test = sample(train, n_train, task.label_column), sample(test, n_test, task.label_column)
    train.to_csv(work / "train.csv", index=False)
    test.to_csv(work / "test.csv", index=False)
    out = work / f"run-{name}-{method_key}"
    load_before = os.getloadavg()[0]  # other processes on a 2-core machine change every timing
    t0 = time.time()
    run = classifine.train(task, method=method, model=model, out=out, train=work / "train.csv", test=work / "test.csv",
                           config=settings, overwrite=True, progress=False)
    wall = time.time() - t0
    m = json.loads((out / "metrics.json").read_text())
    return {"dataset": name, "method": method, "model": model, "settings": settings,
            "train_rows": len(train), "test_rows": len(test), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "per_class_f1": {k: v["f1"] for k, v in m["per_class"].items()},
            "train_seconds": run.config["train_seconds"], "total_seconds": round(wall, 1),
            "predict_docs_per_second": m["docs_per_second"],
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=list(DATASETS))
    ap.add_argument("--methods", nargs="*", default=list(RUNS))
    ap.add_argument("--out", default=str(ROOT / "bench/results/foundation.json"))
    args = ap.parse_args()
    results_path = Path(args.out)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": []}
    results["machine"] = {"cpu_count": os.cpu_count(), "python": platform.python_version()}
    for name in args.only:
        for key in args.methods:
            with tempfile.TemporaryDirectory() as tmp:
                r = run_one(name, DATASETS[name], key, Path(tmp))
            print(json.dumps(r, ensure_ascii=False), flush=True)
            results["runs"] = [x for x in results["runs"] if (x["dataset"], x["method"]) != (name, r["method"])] + [r]
            results_path.write_text(json.dumps(results, ensure_ascii=False, indent=1))
    print("\n| dataset | method | model | train/test rows | accuracy | macro-F1 | train s | predict docs/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results["runs"]:
        print(f"| {r['dataset']} | {r['method']} | {r['model'] or '-'} | {r['train_rows']}/{r['test_rows']} | "
              f"{100 * r['accuracy']:.2f}% | {100 * r['macro_f1']:.2f}% | {r['train_seconds']:.0f} | {r['predict_docs_per_second']} |")


if __name__ == "__main__":
    main()
