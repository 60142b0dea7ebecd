"""Quality benchmark (issue 13): the TF-IDF baseline on the whole training set vs
``classifine train --method auto --budget B`` on the real datasets in ../shared/datasets, both
evaluated on the full test set. Results: bench/results/quality.json (one entry per dataset and
budget; the auto run's leaderboard is copied in) and a markdown table on stdout.

    python bench/quality.py ko_nsmc_sentiment --budget 30m
    python bench/quality.py --table                      # the table of what is recorded

Run it alone on the machine: the budget is wall-clock, so other work on the same cores leaves
fewer rows to the language models (the load average before and after is recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TASKS = {name: ROOT / "bench/tasks" / f"{file}.yaml" for name, file in {
    "ko_nsmc_sentiment": "ko_nsmc_sentiment", "ko_hate_speech_kocohub": "ko_hate_speech_kocohub",
    "id_multilabel_hate_abusive": "id_hate_3class", "id_smsa_sentiment": "id_smsa_sentiment",
    "en_ag_news": "en_ag_news", "ko_nsmc_rating": "ko_nsmc_rating", "ko_kote_emotion": "ko_kote_emotion"}.items()}
RESULTS = ROOT / "bench/results/quality.json"
WORK = Path(os.environ.get("CLASSIFINE_BENCH_WORK", "/tmp/classifine-quality"))


def _metrics(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    keys = ("accuracy", "macro_f1", "micro_f1", "mae", "subset_accuracy", "docs_per_second", "n")
    return {k: m[k] for k in keys if k in m}


def run(name: str, budget: str) -> dict:
    import classifine

    spec = TASKS[name]
    load0 = os.getloadavg()[0]
    t0 = time.time()
    classifine.train(spec, method="tfidf", out=WORK / name / "tfidf", overwrite=True, progress=False)
    tfidf_wall = time.time() - t0
    t1 = time.time()
    run = classifine.train(spec, method="auto", budget=budget, out=WORK / name / f"auto-{budget}", overwrite=True, progress=True)
    auto_wall = time.time() - t1
    board = json.loads((run.dir / "leaderboard.json").read_text())
    tfidf_record = yaml.safe_load((WORK / name / "tfidf" / "config.yaml").read_text())
    return {"dataset": name, "budget": budget, "kind": run.task.kind,
            "tfidf": {**_metrics(WORK / name / "tfidf"), "train_rows": tfidf_record["data"]["train_rows"],
                      "train_seconds": tfidf_record["train_seconds"], "wall_seconds": round(tfidf_wall, 1)},
            "auto": {**_metrics(run.dir), "chosen": board["chosen"], "elapsed_seconds": run.config["auto"]["elapsed_seconds"],
                     "wall_seconds_with_test": round(auto_wall, 1), "budget_seconds": board["budget_seconds"],
                     "leaderboard": board["tries"]},
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "load_average_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "finished": time.strftime("%Y-%m-%d %H:%M")}


def table(results: list[dict]) -> str:
    lines = ["| dataset | kind | tfidf (rows) | auto budget | chosen | auto | Δ points | auto wall s (budget s) | tries: validation macro-F1, rows |",
             "| --- | --- | --- | --- | --- | --- | ---: | --- | --- |"]
    for r in results:
        key = "macro_f1"
        a, b = r["auto"][key], r["tfidf"][key]
        tries = "; ".join(f"{t['name']} {100 * t['validation']['macro_f1']:.1f}% ({t['rows']})" if t["status"] == "done"
                          else f"{t['name']} {t['status']}" for t in r["auto"]["leaderboard"])
        extra = f", MAE {r['tfidf']['mae']:.3f} → {r['auto']['mae']:.3f}" if "mae" in r["auto"] else ""
        extra += f", micro-F1 {100 * r['tfidf']['micro_f1']:.2f}% → {100 * r['auto']['micro_f1']:.2f}%" if r["kind"] == "multi_label" else ""
        lines.append(f"| {r['dataset']} | {r['kind']} | {100 * b:.2f}% ({r['tfidf']['train_rows']}) | {r['budget']} | "
                     f"{r['auto']['chosen']} | {100 * a:.2f}% | {100 * (a - b):+.2f}{extra} | "
                     f"{r['auto']['elapsed_seconds']:.0f} ({r['auto']['budget_seconds']:.0f}) | {tries} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("datasets", nargs="*", help=f"any of: {', '.join(TASKS)}")
    ap.add_argument("--budget", default="30m")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    unknown = [d for d in args.datasets if d not in TASKS]  # argparse's choices refuse an empty list
    if unknown:
        ap.error(f"unknown datasets {unknown}; choose from {', '.join(TASKS)}")
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    for name in args.datasets:
        r = run(name, args.budget)
        print(json.dumps({k: v for k, v in r.items() if k != "auto"} | {"auto": {k: v for k, v in r["auto"].items() if k != "leaderboard"}},
                         ensure_ascii=False), flush=True)
        results = [x for x in results if (x["dataset"], x["budget"]) != (name, args.budget)] + [r]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, ensure_ascii=False, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
