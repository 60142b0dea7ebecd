"""A small client for OpenAI-compatible chat servers (vLLM, llama.cpp's server, Ollama, hosted APIs).

We talk HTTP with httpx rather than the ``openai`` package: the requests are a handful of fields,
the retries must follow our own rules (which status codes, ``Retry-After``, a typed error that
names the fix), and a dependency that changes often buys nothing here.

Retried: timeouts, dropped connections, 429 and 5xx, with exponential backoff and jitter (a
``Retry-After`` header wins). Not retried: 401/403 (key), 404 (URL or model), other 4xx: they
raise ``AnnotatorError`` at once with the fix.
"""
from __future__ import annotations

import asyncio
import os
import random

import httpx

from ..errors import AnnotatorError

RETRIED = {408, 409, 425, 429, 500, 502, 503, 504}


class ChatClient:
    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 retries: int = 5, concurrency: int = 4, backoff: float = 0.5):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"  # users give the server root as often as the /v1 prefix
        self.model, self.timeout, self.retries, self.backoff = model, timeout, retries, backoff
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env, "")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.concurrency = concurrency
        self.calls = 0          # HTTP requests made (retries included)
        self.retried = 0
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self._client: httpx.AsyncClient | None = None
        self._gate: asyncio.Semaphore | None = None

    async def __aenter__(self) -> "ChatClient":
        self._client = httpx.AsyncClient(timeout=self.timeout, headers=self.headers,
                                         limits=httpx.Limits(max_connections=self.concurrency))
        self._gate = asyncio.Semaphore(self.concurrency)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._client.aclose()

    def _fail(self, what: str, fixes: list[str]) -> AnnotatorError:
        return AnnotatorError(f"the annotator server at {self.base_url} {what}", fixes)

    async def check(self) -> list[str]:
        """Fail early and clearly: unreachable server, wrong key, wrong model name. Returns the
        server's model ids (empty where the server does not list them)."""
        try:
            r = await self._client.get(f"{self.base_url}/models")
        except httpx.HTTPError as e:
            raise self._fail(f"cannot be reached ({type(e).__name__}: {e})",
                             ["check --base-url (e.g. http://127.0.0.1:8080/v1) and that the server is running"]) from None
        if r.status_code in (401, 403):
            raise self._fail(f"refused the API key ({r.status_code})",
                             [f"set the key in the environment variable {self.api_key_env} (or name another with --api-key-env)"])
        if r.status_code == 404:
            return []  # some servers do not list models; a wrong model shows at the first request
        if r.status_code >= 400:
            raise self._fail(f"answered {r.status_code} to GET /models", [r.text[:300]])
        try:
            ids = [m.get("id") for m in r.json().get("data", [])]
        except ValueError:
            raise self._fail("did not answer JSON to GET /models",
                             ["check that --base-url points to an OpenAI-compatible API"]) from None
        if ids and self.model not in ids:
            raise self._fail(f"does not serve model {self.model!r}", [f"models it serves: {ids}; pass one with --model"])
        return ids

    async def chat(self, payload: dict) -> dict:
        """POST /chat/completions with retries; returns the response JSON."""
        body = {"model": self.model, **payload}
        async with self._gate:
            for attempt in range(self.retries + 1):
                self.calls += 1
                wait = None
                try:
                    r = await self._client.post(f"{self.base_url}/chat/completions", json=body)
                except (httpx.TimeoutException, httpx.TransportError) as e:
                    problem = f"{type(e).__name__}: {e}"
                else:
                    if r.status_code == 200:
                        try:
                            data = r.json()
                            data["choices"][0]["message"]
                        except (ValueError, KeyError, IndexError, TypeError):
                            problem = f"a malformed response: {r.text[:200]!r}"
                        else:
                            usage = data.get("usage") or {}
                            for k in self.usage:
                                self.usage[k] += int(usage.get(k) or 0)
                            return data
                    elif r.status_code in (401, 403):
                        raise self._fail(f"refused the API key ({r.status_code})",
                                         [f"set the key in {self.api_key_env}"])
                    elif r.status_code == 404:
                        raise self._fail(f"answered 404 for model {self.model!r}: {r.text[:200]}",
                                         ["check --model and --base-url"])
                    elif r.status_code not in RETRIED:
                        raise self._fail(f"rejected a request ({r.status_code}): {r.text[:300]}",
                                         ["the server may not support a field we send (logprobs, top_logprobs); "
                                          "see the README's annotation section"])
                    else:
                        problem = f"HTTP {r.status_code}"
                        wait = _retry_after(r)
                if attempt == self.retries:
                    raise self._fail(f"kept failing ({problem}) after {self.retries} retries",
                                     ["check the server's health, lower --concurrency, or raise --timeout/--retries; "
                                      "answers so far are saved and a re-run resumes"])
                self.retried += 1
                await asyncio.sleep(wait if wait is not None else self.backoff * 2 ** attempt * (0.5 + random.random()))
        raise AssertionError("unreachable")


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return min(60.0, float(r.headers["retry-after"]))
    except (KeyError, ValueError):
        return None
