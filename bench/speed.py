"""Inference speed, side by side in one process (results: bench/results/speed.json; tables in
BENCHMARKS.md, "Inference speed").

    python bench/speed.py pipeline RUN --input TEST.csv        # classifine vs transformers.pipeline (head or embed run)
    python bench/speed.py scoring RUN --json-run RUN2 --input TEST.csv --rows 200
                                                               # label scoring vs the JSON recipe's generation
    python bench/speed.py server RUN --input TEST.csv          # the server at 1/8/64 clients (aiohttp) vs offline batches
    python bench/speed.py memory RUN --rows 10000 1000000      # peak RSS of `classifine predict` by file size

Contenders run alternately (round 1: all, round 2: all again; the better rate counts), on the same
rows. The load average is recorded before and after each phase; when the machine is busy before a
phase starts (other processes use more than --max-busy % of the CPUs over 2 s while this one
idles) the ratios are not reported, only the raw rates, marked busy.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "bench" / "results" / "speed.json"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def others_busy(threshold: float) -> tuple[bool, float]:
    """Whether something else uses the CPUs now: total CPU use over 2 s while this process idles
    (the 1-minute load average still counts the previous phase for a minute after it ends)."""
    import psutil

    used = psutil.cpu_percent(interval=2)
    return used > threshold, used


def record(key: str, value: dict) -> None:
    value = {**value, "when": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count()}
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = value
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, ensure_ascii=False, indent=1))
    print(json.dumps({key: value}, ensure_ascii=False, indent=1), flush=True)


def texts_of(predictor, path: str, rows: int | None) -> list[str]:
    from classifine.core.data import records_to_texts

    df = pd.read_csv(path, nrows=rows)
    return records_to_texts(predictor.task, df.to_dict("records"))


def timed(fn, n: int) -> tuple[object, float]:
    t = time.perf_counter()
    out = fn()
    return out, n / (time.perf_counter() - t)


def ratios(rates: dict, base: str, busy: bool) -> dict:
    """How many times faster ``base`` ran than each other contender; none on a busy machine."""
    return {} if busy else {k: round(rates[base] / v, 2) for k, v in rates.items() if k != base}


# --- classifine vs transformers.pipeline ------------------------------------------------------

def _pipeline_fn(run, texts: list[str]):
    """The same saved model through the field's own loader: text-classification for head runs;
    feature-extraction + the run's pooling and linear head for embed runs."""
    import torch
    from transformers import pipeline

    if run.method == "head":
        pipe = pipeline("text-classification", model=str(run.model_dir), top_k=None, device=-1,
                        truncation=True, max_length=run.config["config"]["max_length"])
        names = run.task.label_names

        def predict(bs):
            out = pipe(texts, batch_size=bs)
            return np.array([[{d["label"]: d["score"] for d in row}[n] for n in names] for row in out])
        return predict
    from classifine.methods.embed import Scorer

    scorer = Scorer.load(run.model_dir, engine="torch")
    enc = scorer.encoder
    pipe = pipeline("feature-extraction", model=enc.model, tokenizer=enc.tokenizer, device=-1,
                    tokenize_kwargs={"truncation": True, "max_length": enc.max_length}, return_tensors=True)

    def predict(bs):
        vecs = []
        for h in pipe([enc.prefix + t for t in texts], batch_size=bs):
            v = h[0].mean(0) if enc.pooling == "mean" else h[0][-1] if enc.pooling == "last" else h[0][0]
            vecs.append(torch.nn.functional.normalize(v, dim=-1) if enc.normalize else v)
        return scorer.head.predict_proba(torch.stack(vecs).numpy())
    return predict


def cmd_pipeline(args) -> None:
    from classifine.core.runs import Run
    from classifine.predict.predictor import Predictor

    run = Run.load(args.run)
    ours = Predictor.load(run, engine=args.engine)
    texts = texts_of(ours, args.input, args.rows)
    start = load()
    args._busy = others_busy(args.max_busy)
    pipe = _pipeline_fn(run, texts)
    rates: dict[str, float] = {}
    outputs = {}
    for rnd in range(2):
        probs, r = timed(lambda: ours.predict_proba(texts), len(texts))
        rates["classifine"] = max(rates.get("classifine", 0), r)
        outputs["classifine"] = probs
        sizes = args.pipeline_batch if rnd == 0 else [best]
        for bs in sizes:
            p, r = timed(lambda: pipe(bs), len(texts))
            rates[f"pipeline bs {bs}"] = max(rates.get(f"pipeline bs {bs}", 0), r)
            outputs[f"pipeline bs {bs}"] = p
        best = max(args.pipeline_batch, key=lambda b: rates[f"pipeline bs {b}"])
    best_key = f"pipeline bs {best}"
    ours_labels = ours.format(outputs["classifine"])
    key = "label" if run.task.kind != "multi_label" else "labels"
    theirs = outputs[best_key].argmax(1)
    agree = float(np.mean([o[key] == run.task.label_names[i] for o, i in zip(ours_labels, theirs)])) if key == "label" else None
    busy, used = args._busy
    engine = "onnx-int8-checked" if ours.check else getattr(ours.scorer, "engine", "torch")
    check = {"rows_rerun_in_fp32": round(ours.check.rows_checked / ours.check.rows_seen, 4)} if ours.check else {}
    record(f"pipeline:{Path(args.run).name}:{engine}", {
        "run": args.run, "method": run.method, "model": run.config.get("model"), "rows": len(texts),
        "engine": engine, **check,
        "docs_per_second": {k: round(v, 2) for k, v in rates.items()}, "pipeline_best_batch": best,
        "speedup_vs_best_pipeline": None if busy else round(rates["classifine"] / rates[best_key], 2),
        "label_agreement_vs_pipeline": agree, "busy": busy, "other_cpu_percent": used, "load_start": start, "load_end": load()})


# --- label scoring vs generation ----------------------------------------------------------------

def _matmul_gflops() -> float:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    return 2 * 2048 ** 3 / ((time.perf_counter() - t) / 10) / 1e9


def cmd_scoring(args) -> None:
    from classifine.core.runs import Run
    from classifine.generative.decoding import generate_answers, parse_answer
    from classifine.generative.prompts import PromptFormat
    from classifine.predict.predictor import Predictor

    start = load()
    args._busy = others_busy(args.max_busy)
    scoring = Predictor.load(Run.load(args.run))
    texts = texts_of(scoring, args.input, args.rows)
    gen_run = Run.load(args.json_run)
    gen = Predictor.load(gen_run)
    model, tok, task = gen.scorer.model, gen.scorer.tokenizer, gen_run.task
    fmt = PromptFormat.for_tokenizer(tok)
    prompts = [fmt.prompt_ids(task, t) for t in texts]
    stop = fmt.ids(fmt.end_text)[-1:]  # the end-of-turn token the recipe stops at
    rates, invalid = {}, {}
    rates_seen = [_matmul_gflops()]
    for _ in range(2):
        _, r = timed(lambda: scoring.predict_proba(texts), len(texts))
        rates["label scoring"] = max(rates.get("label scoring", 0), r)
        for name, bs in (("JSON recipe, one at a time", 1), ("JSON recipe, batch 8", 8)):
            answers, r = timed(lambda: generate_answers(model, tok, prompts, max_new_tokens=512, batch_size=bs, stop=stop), len(texts))
            rates[name] = max(rates.get(name, 0), r)
            invalid[name] = round(float(np.mean([parse_answer(task, a) is None for a in answers])), 4)
    # the floor of any method that runs each document's own tokens through the transformer body
    body = sum(p.numel() for n, p in scoring.scorer.model.named_parameters() if "embed" not in n and "lm_head" not in n)
    doc_tokens = float(np.mean([len(tok(t, add_special_tokens=False).input_ids) for t in texts]))
    # the machine's matmul rate drifts (102-320 GFLOP/s on different days here): the bound takes the
    # best of a reading before and after the contenders, so the share is never flattered by a slow one
    rates_seen.append(_matmul_gflops())
    gflops = max(rates_seen)
    bound = gflops * 1e9 / (2 * body * doc_tokens)
    busy, used = args._busy
    record(f"scoring:{Path(args.run).name}", {
        "rows": len(texts), "docs_per_second": {k: round(v, 2) for k, v in rates.items()}, "invalid": invalid,
        "body_parameters": body, "mean_text_tokens": round(doc_tokens, 1), "matmul_gflops": round(gflops, 1),
        "matmul_gflops_readings": [round(g, 1) for g in rates_seen],
        "flop_bound_docs_per_second": round(bound, 2),
        "share_of_flop_bound": None if busy else round(rates["label scoring"] / bound, 3),
        "vs_generation": ratios(rates, "label scoring", busy),
        "busy": busy, "other_cpu_percent": used, "load_start": start, "load_end": load()})


# --- server vs offline ----------------------------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cmd_server(args) -> None:
    """The server at 1/8/64 clients (64: the better of two rounds, like offline) against offline
    batches of 32 of the same rows. The client shares the cores, so the CPU each side spent per
    request at 64 clients is recorded with the rates: that is where the share of offline goes."""
    import asyncio

    sys.path.insert(0, str(ROOT / "bench"))
    from serve_load import Server, drive, free_port

    from classifine.predict.predictor import Predictor

    predictor = Predictor.load(args.run)
    df = pd.read_csv(args.input, nrows=args.rows)
    fields = predictor.task.text
    payloads = [{f: str(r[f]) for f in fields} for r in df.to_dict("records")]  # drive() sends one record per request
    start = load()
    args._busy = others_busy(args.max_busy)
    texts = texts_of(predictor, args.input, args.rows)
    predictor.predict_texts(texts[:64])  # warm-up, as the server gets one
    offline, offline_cpu = 0.0, None
    for _ in range(2):
        c0 = _own_cpu_seconds()
        rate = timed(lambda: [predictor.predict_texts(texts[i:i + 32]) for i in range(0, len(texts), 32)], len(texts))[1]
        if rate > offline:
            offline, offline_cpu = rate, 1000 * (_own_cpu_seconds() - c0) / len(texts)
    del predictor  # the server gets the cores to itself
    server = Server(args.run, free_port(), "--max-batch-size", "32").start()
    rows = []

    def measure(clients: int, client: str) -> dict:
        s0, c0 = _cpu_seconds(server.proc.pid), _own_cpu_seconds()
        res = asyncio.run(drive(server.url, clients, args.seconds, payloads, client=client))
        n = max(res["ok"], 1)
        return {"clients": clients, "client": client, "req_per_second": res["throughput_rps"], "p50_ms": res["p50_ms"],
                "p99_ms": res["p99_ms"], "errors": res["errors"], "statuses": res["statuses"],
                "server_cpu_ms_per_request": round(1000 * (_cpu_seconds(server.proc.pid) - s0) / n, 2),
                "client_cpu_ms_per_request": round(1000 * (_own_cpu_seconds() - c0) / n, 2)}

    try:
        asyncio.run(drive(server.url, 8, 3, payloads, client=args.client))
        for clients in (1, 8, 64):
            rows.append(measure(clients, args.client))
        rows.append(measure(64, args.client))
        if args.client != "httpx":  # what the heavier client costs on the same cores, for the record
            rows.append(measure(64, "httpx"))
    finally:
        server.stop()
    best64 = max((r for r in rows if r["clients"] == 64 and r["client"] == args.client), key=lambda r: r["req_per_second"])
    busy, used = args._busy
    record(f"server:{Path(args.run).name}", {
        "offline_docs_per_second": round(offline, 2), "offline_cpu_ms_per_doc": round(offline_cpu, 2), "client": args.client,
        "clients": rows, "share_of_offline_at_64": None if busy else round(best64["req_per_second"] / offline, 3),
        "busy": busy, "other_cpu_percent": used, "load_start": start, "load_end": load()})


# --- memory at scale --------------------------------------------------------------------------

def _write_rows(path: Path, n: int, fields: list[str]) -> None:
    rng = np.random.default_rng(0)
    words = np.array("the market rose as shares of the company fell after a storm hit the city council vote".split())
    with path.open("w") as f:
        f.write(",".join(fields) + "\n")
        for s in range(0, n, 100_000):
            k = min(100_000, n - s)
            lens = rng.integers(4, 24, size=(k, len(fields)))
            f.writelines(",".join(" ".join(rng.choice(words, size=l)) for l in row) + "\n" for row in lens)


def cmd_memory(args) -> None:
    from classifine.core.runs import Run

    run = Run.load(args.run)
    out = {}
    for n in args.rows:
        data = Path(args.tmp) / f"rows_{n}.csv"
        if not data.exists():
            _write_rows(data, n, run.task.text)
        pred = Path(args.tmp) / f"pred_{n}.jsonl"
        pred.unlink(missing_ok=True)
        code = ("import resource, sys, time; from classifine.predict.predictor import predict_file; t = time.time(); "
                f"predict_file({args.run!r}, {str(data)!r}, {str(pred)!r}, progress=False, overwrite=True); "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.time() - t)")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rss_kib, sec = res.stdout.split()[-2:]
        out[str(n)] = {"peak_rss_mib": round(int(rss_kib) / 1024), "seconds": round(float(sec), 1),
                       "docs_per_second": round(n / float(sec), 1)}
        pred.unlink(missing_ok=True)
        print(n, out[str(n)], flush=True)
    small, large = out[str(min(args.rows))], out[str(max(args.rows))]
    record(f"memory:{Path(args.run).name}", {"method": run.method, "rows": out,
                                             "rss_growth": round(large["peak_rss_mib"] / small["peak_rss_mib"] - 1, 3)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-busy", type=float, default=25.0, help="CPU use %% of other processes above which the machine counts as busy")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("pipeline")
    s.add_argument("run"), s.add_argument("--input", required=True), s.add_argument("--rows", type=int)
    s.add_argument("--engine", default=None, help="override the run's engine (torch, onnx, onnx-int8, onnx-int8-checked)")
    s.add_argument("--pipeline-batch", type=int, nargs="+", default=[1, 8, 32, 64])
    s = sub.add_parser("scoring")
    s.add_argument("run"), s.add_argument("--json-run", required=True), s.add_argument("--input", required=True)
    s.add_argument("--rows", type=int, default=200)
    s = sub.add_parser("server")
    s.add_argument("run"), s.add_argument("--input", required=True), s.add_argument("--rows", type=int, default=500)
    s.add_argument("--seconds", type=float, default=15)
    s.add_argument("--client", choices=["aiohttp", "httpx"], default="aiohttp",
                   help="load generator (on the server's cores); with aiohttp, one 64-client httpx round is added for the record")
    s = sub.add_parser("memory")
    s.add_argument("run"), s.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    s.add_argument("--tmp", default="/tmp")
    args = p.parse_args()
    {"pipeline": cmd_pipeline, "scoring": cmd_scoring, "server": cmd_server, "memory": cmd_memory}[args.cmd](args)


if __name__ == "__main__":
    main()
