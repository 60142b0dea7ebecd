"""A real OpenAI-compatible server for the annotation tests: llama.cpp's server (llama-cpp-python)
serving the packaged Gemma 3 270M GGUF on 127.0.0.1, and a fault-injecting proxy in front of it
for the failures a real server rarely shows on demand (timeouts, 429, 500, malformed JSON, dropped
connections)."""
from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(model_alias: str = "gemma-3-270m", log: Path | None = None):
    """Start llama.cpp's OpenAI-compatible server on the packaged Gemma; yield its /v1 URL."""
    from classifine.core.models import gguf_file

    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_file("gemma-3-270m")),
           "--model_alias", model_alias, "--chat_format", "gemma", "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "1024", "--logits_all", "true", "--n_threads", str(min(2, os.cpu_count() or 1)), "--verbose", "false"]
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"llama.cpp server did not start (exit {proc.poll()}); see {log}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()


class FaultProxy:
    """Forwards to ``upstream``; ``faults`` is a list consumed one per chat request (None = pass
    through): 'status:500', 'status:429', 'hang' (no answer within the client's timeout),
    'drop' (close the connection), 'garbage' (200 with a body that is not JSON), 'key' (401).
    ``delay`` slows every forwarded request (to kill a run in the middle)."""

    def __init__(self, upstream: str, faults: list[str | None] | None = None, delay: float = 0.0):
        self.upstream, self.faults, self.delay = upstream.rstrip("/"), list(faults or []), delay
        self.chat_requests = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, code: int, body: bytes, headers: dict | None = None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, method: str, body: bytes | None):
                req = urllib.request.Request(proxy.upstream + self.path.removeprefix("/v1"), data=body, method=method,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=120) as r:
                        self._send(r.status, r.read(), {"Content-Type": "application/json"})
                except urllib.error.HTTPError as e:
                    self._send(e.code, e.read(), {"Content-Type": "application/json"})

            def do_GET(self):
                self._forward("GET", None)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    proxy.chat_requests += 1
                    fault = proxy.faults.pop(0) if proxy.faults else None
                if fault == "hang":
                    time.sleep(25.0)  # past the test client's 20 s timeout, which real requests under load stay within
                    self.close_connection = True
                    return
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "garbage":
                    return self._send(200, b"<html>not json", {"Content-Type": "text/html"})
                if fault == "key":
                    return self._send(401, json.dumps({"error": "invalid api key"}).encode())
                if fault and fault.startswith("status:"):
                    code = int(fault.split(":")[1])
                    return self._send(code, json.dumps({"error": "injected"}).encode(),
                                      {"Retry-After": "0.1"} if code == 429 else {})
                if proxy.delay:
                    time.sleep(proxy.delay)
                self._forward("POST", body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        # a client that gave up on a hung request leaves a broken pipe behind: expected here
        self.server.handle_error = lambda request, client_address: None
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
