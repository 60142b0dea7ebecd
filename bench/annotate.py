"""Annotation benchmark (BENCHMARKS.md, "Annotation"): agreement with people, throughput, cache,
resume after SIGKILL, and a classifier trained on LLM labels vs on people's labels.

    python bench/annotate.py en_ag_news ko_hate_speech_kocohub --local-rows 500 --server-rows 100

Per dataset: N rows of its train.csv, labels dropped, are annotated by Gemma 3 270M twice over (the
local label scorer, and llama.cpp's OpenAI-compatible server on the same model's GGUF), zero-shot
and few-shot (examples: other train rows, one per label in turn); `review --gold` gives the
agreement. Then: throughput of the server at concurrency 1/4/16, the calls of a second identical
run, a SIGKILL in the middle and the resume (compared byte for byte with an uninterrupted run), and
TF-IDF trained on the local few-shot labels vs on the people's labels of the same rows, both
evaluated on the dataset's test set. Results: bench/results/annotate.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
TASKS = {"en_ag_news": "en_ag_news.yaml", "ko_hate_speech_kocohub": "ko_hate_speech_kocohub.yaml"}
RESULTS = ROOT / "bench" / "results" / "annotate.json"


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, ensure_ascii=False))


def inputs(name: str, task, rows: int, work: Path) -> tuple[Path, Path, Path]:
    """(unlabelled rows, the same rows with labels, few-shot pool from other train rows)."""
    from classifine.core.data import load_examples, sample_rows

    train = load_examples(task, task.data_path("train"))
    picked = sample_rows(task, train, rows, seed=7)
    frame = picked.frame.copy()
    work.mkdir(parents=True, exist_ok=True)
    gold = work / f"gold-{rows}.csv"
    frame.to_csv(gold, index=False)
    frame.drop(columns=[task.label_column]).to_csv(work / f"unlabeled-{rows}.csv", index=False)
    taken = set(picked.texts)
    rest = [i for i, t in enumerate(train.texts) if t not in taken]
    pool = train.subset(rest[:2000])
    pool.frame.to_csv(work / "pool.csv", index=False)
    return work / f"unlabeled-{rows}.csv", gold, work / "pool.csv"


def agreement(folder: Path, gold: Path, seconds: float) -> dict:
    import classifine

    r = classifine.review(folder, gold=gold)
    m = r["gold"]["metrics"]
    meta = json.loads((folder / "annotation.json").read_text())
    return {"rows": r["gold"]["rows"], "accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4),
            "cohen_kappa": round(r["gold"]["cohen_kappa"], 4), "invalid_rate": meta["counts"]["invalid_rate"],
            "seconds": round(seconds, 1), "rows_per_second": round(r["gold"]["rows"] / seconds, 3),
            "calls": meta["calls_this_run"], "prompt_tokens": meta.get("usage_total", {}).get("prompt_tokens")}


def run_annotate(task_path, data, out, **kw) -> float:
    import classifine

    t0 = time.time()
    classifine.annotate(task_path, data, out, overwrite=True, progress=False, **kw)
    return time.time() - t0


def kill_and_resume(task_path: Path, data: Path, pool: Path, url: str, work: Path) -> dict:
    cmd = [sys.executable, "-m", "classifine", "annotate", str(task_path), "--input", str(data), "--model", "gemma-3-270m",
           "--base-url", url, "--concurrency", "1", "--batch-size", "4", "--examples", str(pool), "--shots", "4", "--quiet"]
    whole = work / "kill-whole"
    subprocess.run(cmd + ["--out", str(whole), "--overwrite"], check=True)
    killed = work / "kill-killed"
    subprocess.run(["rm", "-rf", str(killed)])
    proc = subprocess.Popen(cmd + ["--out", str(killed)])
    rows = killed / "annotations.jsonl"
    total = sum(1 for _ in open(data)) - 1
    while not (rows.exists() and rows.read_bytes().count(b"\n") >= total // 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = rows.read_bytes().count(b"\n")
    out = subprocess.run(cmd + ["--out", str(killed), "--json"], check=True, capture_output=True, text=True)
    info = json.loads(out.stdout)
    return {"rows": total, "rows_at_kill": at_kill, "calls_after_resume": info["calls_this_run"],
            "identical_to_uninterrupted": rows.read_bytes() == (whole / "annotations.jsonl").read_bytes()}


def train_gap(task_path: Path, task, folder: Path, gold: Path, work: Path) -> dict:
    import classifine

    llm = classifine.train(task_path, method="tfidf", out=work / "tfidf-llm", train=folder, overwrite=True, progress=False)
    people = classifine.train(task_path, method="tfidf", out=work / "tfidf-gold", train=gold, overwrite=True, progress=False)
    f1 = {k: json.loads((r.dir / "metrics.json").read_text())["macro_f1"] for k, r in (("llm", llm), ("gold", people))}
    return {"train_rows": llm.config["data"]["train_rows"] + llm.config["data"]["validation_rows"],
            "macro_f1_llm_labels": round(f1["llm"], 4), "macro_f1_gold_labels": round(f1["gold"], 4),
            "gap_points": round(100 * (f1["llm"] - f1["gold"]), 2), "test_rows": llm.config["data"]["test_rows"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="+", choices=list(TASKS))
    ap.add_argument("--local-rows", type=int, default=500)
    ap.add_argument("--server-rows", type=int, default=100)
    ap.add_argument("--speed-rows", type=int, default=32)
    ap.add_argument("--work", default="/tmp/classifine-bench-annotate")
    ap.add_argument("--agreement-only", action="store_true", help="skip throughput, cache and SIGKILL (measured once)")
    args = ap.parse_args()
    from classifine.core.task import load_task
    from servers import llama_server

    results = load(RESULTS)
    results["machine"] = f"{os.cpu_count()} CPU cores; load average before: {os.getloadavg()[0]:.2f}"
    for name in args.datasets:
        task_path = ROOT / "bench" / "tasks" / TASKS[name]
        task = load_task(task_path)
        work = Path(args.work) / name
        res = results.setdefault(name, {})
        data, gold, pool = inputs(name, task, args.local_rows, work)
        few = {"examples": pool, "shots": 4, "choose": "diverse"}
        for shots, kw in (("zero-shot", {}), ("few-shot", few)):
            s = run_annotate(task_path, data, work / f"local-{shots}", model="gemma-3-270m", **kw)
            res[f"local {shots}"] = agreement(work / f"local-{shots}", gold, s)
            print(name, "local", shots, res[f"local {shots}"], flush=True)
            save(results)
        from classifine.errors import ClassifineError

        try:
            res["classifier"] = train_gap(task_path, task, work / "local-few-shot", gold, work)
        except ClassifineError as e:  # e.g. the annotator gave every row one label: nothing to train
            res["classifier"] = {"error": e.summary, "problems": e.problems}
        print(name, "classifier", res["classifier"], flush=True)
        save(results)
        sdata, sgold, _ = inputs(name, task, args.server_rows, work)
        with llama_server(log=work / "server.log") as url:
            for shots, kw in (("zero-shot", {}), ("few-shot", few)):
                s = run_annotate(task_path, sdata, work / f"server-{shots}", model="gemma-3-270m", base_url=url, **kw)
                res[f"server {shots}"] = agreement(work / f"server-{shots}", sgold, s)
                print(name, "server", shots, res[f"server {shots}"], flush=True)
                save(results)
            if args.agreement_only:
                res["command"] = (f"python bench/annotate.py {name} --local-rows {args.local_rows} "
                                  f"--server-rows {args.server_rows} --agreement-only")
                save(results)
                continue
            import classifine

            again = classifine.annotate(task_path, sdata, work / "server-few-shot", model="gemma-3-270m", base_url=url,
                                        progress=False, **few)
            res["second identical run calls"] = again["calls_this_run"]
            speed_data, _, _ = inputs(name, task, args.speed_rows, work / "speed")
            res["server throughput"] = {}
            for c in (1, 4, 16):
                s = run_annotate(task_path, speed_data, work / f"speed-{c}", model="gemma-3-270m", base_url=url,
                                 concurrency=c, **few)
                res["server throughput"][str(c)] = round(args.speed_rows / s, 3)
                print(name, "concurrency", c, res["server throughput"][str(c)], "rows/s", flush=True)
                save(results)
            kdata, _, _ = inputs(name, task, 24, work / "kill")
            res["sigkill"] = kill_and_resume(task_path, kdata, pool, url, work)
            print(name, "sigkill", res["sigkill"], flush=True)
        res["command"] = (f"python bench/annotate.py {name} --local-rows {args.local_rows} --server-rows {args.server_rows} "
                          f"--speed-rows {args.speed_rows}")
        save(results)


if __name__ == "__main__":
    main()
