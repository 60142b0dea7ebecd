"""Load, soak, fuzz and kill tests of `classifine serve` on loopback (127.0.0.1 only).

    python bench/serve_load.py load RUN [--seconds 15]     # 1/8/64 clients, with and without micro-batching
    python bench/serve_load.py soak RUN [--seconds 60]     # 64 clients: errors and server RSS growth
    python bench/serve_load.py fuzz RUN [--max-time 120]   # schemathesis from the app's own OpenAPI: no 5xx
    python bench/serve_load.py kill RUN                    # SIGKILL mid-load + restart; SIGTERM mid-load drains

Every client loop is bounded in requests and in time, and the server is a subprocess that is always
stopped. Each request carries one record (the real-time case) drawn from the English rows of the
bundled example. Results: bench/results/serve_<command>.json and a markdown table on stdout.
The client runs on the same 2 cores as the server, so absolute numbers include its cost; the load
average at start and end is recorded next to every result.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"  # never anything else: load tests target loopback only
MAX_REQUESTS_PER_CLIENT = 100_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def records(n: int = 200) -> list[dict]:
    frame = pd.read_csv(ROOT / "examples/news_category/test.csv", dtype=str, keep_default_na=False)
    frame = frame[frame["lang"] == "en"]
    rows = [{"title": r.title, "body": r.body} for r in frame.itertuples()]
    rng = random.Random(13)
    return [rng.choice(rows) for _ in range(n)]


class Server:
    """`classifine serve` in a subprocess; stop() always ends it (SIGTERM, then SIGKILL)."""

    threads: int | None = None  # set from --threads for every server of a command

    def __init__(self, run: str, port: int, *extra: str, token: str | None = None):
        self.run, self.port, self.extra, self.token = run, port, extra, token
        if Server.threads:
            self.extra = (*extra, "--threads", str(Server.threads))
        self.proc: subprocess.Popen | None = None
        self.url = f"http://{HOST}:{port}"

    def start(self, timeout: float = 180) -> "Server":
        cmd = [sys.executable, "-m", "classifine.cli", "serve", self.run, "--host", HOST, "--port", str(self.port),
               "--log-level", "warning", *self.extra]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        if self.token:
            env["CLASSIFINE_TOKEN"] = self.token
        self.log = open(Path(tempfile.gettempdir()) / f"classifine-serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: see {self.log.name}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {timeout} s")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


async def drive(url: str, clients: int, seconds: float, payloads: list[dict], token: str | None = None,
                max_requests: int = MAX_REQUESTS_PER_CLIENT, client: str = "httpx") -> dict:
    """``clients`` concurrent loops, each sending one request at a time until ``seconds`` pass.

    ``client="aiohttp"`` is the lighter load generator: on this machine httpx spent 5.5 ms of CPU per
    request against aiohttp's 0.2 ms, on the same two cores the server uses (bench/speed.py server)."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if client == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=clients), headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=30))
        failures: tuple = (aiohttp.ClientError, asyncio.TimeoutError)

        async def post(body: dict) -> str:
            async with session.post("/v1/classify", json=body) as r:
                await r.read()
                return str(r.status)
    elif client == "httpx":
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        session = httpx.AsyncClient(base_url=url, limits=limits, timeout=30, headers=headers)
        failures = (httpx.HTTPError,)

        async def post(body: dict) -> str:
            return str((await session.post("/v1/classify", json=body)).status_code)
    else:
        raise ValueError(f"client must be httpx or aiohttp, not {client!r}")
    async with session:
        t_end = time.perf_counter() + seconds

        async def one(k: int) -> None:
            for i in range(max_requests):
                if time.perf_counter() >= t_end:
                    return
                body = {"inputs": [payloads[(k * 7919 + i) % len(payloads)]]}
                t0 = time.perf_counter()
                try:
                    key = await post(body)
                except failures as e:
                    key = type(e).__name__
                statuses[key] = statuses.get(key, 0) + 1
                if key == "200":
                    latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(k) for k in range(clients)))
        elapsed = time.perf_counter() - t0
    lat = sorted(latencies)
    pct = lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1) if lat else None  # noqa: E731
    return {"clients": clients, "seconds": round(elapsed, 2), "ok": len(lat), "statuses": statuses,
            "errors": sum(v for k, v in statuses.items() if k != "200"),
            "throughput_rps": round(len(lat) / elapsed, 1), "p50_ms": pct(0.50), "p99_ms": pct(0.99)}


def batch_stats(url: str, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    text = httpx.get(url + "/metrics", headers=headers, timeout=10).text
    values = {}
    for line in text.splitlines():
        for key in ("classifine_batch_records_sum", "classifine_batch_records_count"):
            if line.startswith(key + " "):
                values[key] = float(line.split()[1])
    n = values.get("classifine_batch_records_count", 0)
    return {"model_calls": int(n), "mean_batch": round(values.get("classifine_batch_records_sum", 0) / n, 2) if n else None}


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": [round(x, 2) for x in os.getloadavg()]}


def cmd_load(args) -> dict:
    payloads, rows = records(), []
    for mode, extra in (("batching", ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]),
                        ("no batching", ["--no-batching"])):
        server = Server(args.run, free_port(), *extra).start()
        try:
            asyncio.run(drive(server.url, 8, args.warmup, payloads))  # warm-up: allocator, tokenizer caches
            for clients in args.clients:
                before = batch_stats(server.url)
                load0 = os.getloadavg()[0]
                res = asyncio.run(drive(server.url, clients, args.seconds, payloads))
                after = batch_stats(server.url)
                calls = after["model_calls"] - before["model_calls"]
                res.update(mode=mode, model_calls=calls, mean_batch=round(res["ok"] / calls, 2) if calls else None,
                           loadavg_start=round(load0, 2), loadavg_end=round(os.getloadavg()[0], 2))
                rows.append(res)
                print(json.dumps(res), flush=True)
        finally:
            server.stop()
    by = {(r["mode"], r["clients"]): r for r in rows}
    speedup = {c: round(by[("batching", c)]["throughput_rps"] / max(by[("no batching", c)]["throughput_rps"], 1e-9), 2)
               for c in args.clients}
    print("\n| mode | clients | req/s | p50 ms | p99 ms | mean batch | errors | load avg (start→end) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['mode']} | {r['clients']} | {r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['mean_batch']} | {r['errors']} | {r['loadavg_start']}→{r['loadavg_end']} |")
    print(f"\nthroughput with / without micro-batching: {speedup}")
    return {"rows": rows, "speedup": speedup}


def cmd_soak(args) -> dict:
    payloads = records()
    server = Server(args.run, free_port(), "--max-batch-size", str(args.max_batch_size)).start()
    samples: list[tuple[float, float]] = []
    try:
        asyncio.run(drive(server.url, 64, args.warmup, payloads))
        rss0 = server.rss_mb()

        async def soak() -> dict:
            task = asyncio.create_task(drive(server.url, 64, args.seconds, payloads))
            t0 = time.perf_counter()
            while not task.done():
                samples.append((round(time.perf_counter() - t0, 1), round(server.rss_mb(), 1)))
                await asyncio.sleep(1)
            return task.result()
        load0 = os.getloadavg()[0]
        res = asyncio.run(soak())
        rss1 = server.rss_mb()
        res.update(rss_start_mb=round(rss0, 1), rss_end_mb=round(rss1, 1), rss_max_mb=max(s[1] for s in samples),
                   rss_growth_mb=round(rss1 - rss0, 1), rss_growth_pct=round(100 * (rss1 - rss0) / rss0, 2),
                   rss_samples=samples, loadavg_start=round(load0, 2), loadavg_end=round(os.getloadavg()[0], 2),
                   **batch_stats(server.url))
    finally:
        code = server.stop()
    res["exit_code_after_sigterm"] = code
    print(json.dumps({k: v for k, v in res.items() if k != "rss_samples"}, indent=1))
    return res


def cmd_fuzz(args) -> dict:
    token = "fuzz-token"
    server = Server(args.run, free_port(), "--max-records", "16", "--max-chars", "2000", token=token).start()
    try:
        cmd = [str(Path(sys.executable).with_name("schemathesis")), "run", server.url + "/openapi.json",
               "--checks", "not_a_server_error", "--max-time", str(args.max_time), "--workers", "1",
               "-H", f"Authorization: Bearer {token}", "--phases", "examples,coverage,fuzzing",
               "--suppress-health-check", "all", "--max-examples", str(args.max_examples)]
        t0 = time.time()
        # schemathesis keeps a .schemathesis/ folder in its working directory: not in the checkout
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.max_time + 300, cwd=tempfile.gettempdir())
        seconds = time.time() - t0
        metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {token}"}).text
    finally:
        server.stop()
    status = {}
    for line in metrics.splitlines():
        if line.startswith("classifine_http_requests_total{"):
            code = line.split('status="')[1].split('"')[0]
            status[code] = status.get(code, 0) + int(float(line.split()[-1]))
    tail = proc.stdout.strip().splitlines()[-25:]
    print("\n".join(tail))
    res = {"exit_code": proc.returncode, "seconds": round(seconds, 1), "responses_by_status": status,
           "server_5xx": sum(v for k, v in status.items() if k.startswith("5")), "summary": tail, **machine()}
    print(json.dumps({k: v for k, v in res.items() if k != "summary"}))
    return res


def _probe(url: str, payloads: list[dict]) -> str:
    r = httpx.post(url + "/v1/classify", json={"inputs": payloads[:16]}, timeout=60)
    r.raise_for_status()
    return json.dumps(r.json(), sort_keys=True)


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def cmd_kill(args) -> dict:
    payloads, run_dir, port = records(), Path(args.run), free_port()
    digest0 = _tree_digest(run_dir)
    server = Server(args.run, port).start()
    try:
        probe0 = _probe(server.url, payloads)

        async def load_then(sig: int, after: float) -> dict:
            task = asyncio.create_task(drive(server.url, 64, after + 5, payloads))
            await asyncio.sleep(after)
            server.proc.send_signal(sig)
            return await task
        killed = asyncio.run(load_then(signal.SIGKILL, 3.0))
        server.proc.wait(30)
        server = Server(args.run, port).start()  # same port: a restart in place
        probe1 = _probe(server.url, payloads)
        after_restart = asyncio.run(drive(server.url, 64, 5, payloads))
        drained = asyncio.run(load_then(signal.SIGTERM, 3.0))
        term_code = server.proc.wait(60)
    finally:
        server.stop()
    res = {"sigkill_mid_load": killed, "restart_same_predictions": probe0 == probe1,
           "run_dir_unchanged": _tree_digest(run_dir) == digest0, "load_after_restart": after_restart,
           "sigterm_mid_load": drained, "sigterm_exit_code": term_code,
           "sigterm_5xx": sum(v for k, v in drained["statuses"].items() if k.startswith("5")), **machine()}
    print(json.dumps(res, indent=1))
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("load", "soak", "fuzz", "kill"):
        s = sub.add_parser(name)
        s.add_argument("run", help="run directory to serve")
        s.add_argument("--max-batch-size", type=int, default=32)
        s.add_argument("--max-wait-ms", type=float, default=5.0)
        s.add_argument("--warmup", type=float, default=5.0)
        s.add_argument("--threads", type=int, default=None, help="torch threads in the server (serve --threads)")
    sub.choices["load"].add_argument("--seconds", type=float, default=15.0)
    sub.choices["load"].add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    sub.choices["soak"].add_argument("--seconds", type=float, default=60.0)
    sub.choices["fuzz"].add_argument("--max-time", type=int, default=120)
    sub.choices["fuzz"].add_argument("--max-examples", type=int, default=100)
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    Server.threads = args.threads
    started = machine()
    res = {"load": cmd_load, "soak": cmd_soak, "fuzz": cmd_fuzz, "kill": cmd_kill}[args.command](args)
    out = {"command": " ".join(sys.argv[1:]), "run": args.run, "machine_start": started, "machine_end": machine(),
           "date": time.strftime("%Y-%m-%d %H:%M"), "result": res}
    (RESULTS / f"serve_{args.command}.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
