"""Embeddings from any OpenAI-compatible ``/v1/embeddings`` server (config ``type: openai``).

OpenAI itself (``text-embedding-3-small``, the paper's encoder), ``vllm serve`` with a pooling model,
Hugging Face TEI, Ollama: one POST per ``batch_size`` texts (body ``{"model", "input": [...],
"encoding_format": "float"[, "dimensions"]}``), up to ``concurrency`` requests in flight. The
returned vectors are re-normalised to unit length in float32 (servers differ: OpenAI's are unit,
a pooling model's may not be). Retries follow ``trsllava.http_api`` (429, 5xx, connection errors,
exponential backoff); after the last try, or at once for another status (401 wrong key, 404 unknown
model), a TrsllavaError names the server, the status and the server's message.

The key is read from the environment variable ``api_key_env`` (default OPENAI_API_KEY), sent as a
bearer token and never logged or put in an error message; the fingerprint holds the server's host,
never the key. Token usage (the response's ``usage.prompt_tokens``) is summed and logged with an
estimated cost when ``price_per_million_tokens`` is given (USD per million input tokens; e.g. 0.02
for text-embedding-3-small, OpenAI's price list of 2025).

The per-text cache (encoders.cache) is keyed by ``fingerprint``: type, model, host, dimensions and the
role's prompt (encoders.prompts, prepended to each text), so a rerun or a resumed shard never sends
a cached text again. Uses ``httpx`` (a dependency); the ``openai`` package is not needed.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from urllib.parse import urlsplit

import numpy as np

from ..errors import TrsllavaError
from ..http_api import backoff_delay, public_url, retry_after, retryable_status
from .base import Role, VectorEncoder
from .prompts import role_prompts, with_prompt

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULTS = {"batch_size": 128, "concurrency": 4, "retries": 5, "backoff": 1.0, "timeout": 120.0}


class _Retryable(Exception):
    def __init__(self, message: str, wait_s: float | None = None):
        super().__init__(message)
        self.wait_s = wait_s


class OpenAIEmbeddingEncoder(VectorEncoder):
    """A ``VectorEncoder`` over an OpenAI-compatible embeddings API (see the module docstring).

    Config keys: ``model`` (the served model name; required), ``base_url`` (the API root with
    ``/v1``; default OpenAI's), ``api_key_env``, ``dimensions`` (sent as the API's ``dimensions``:
    text-embedding-3 models shorten their vectors; None: the model's own), ``batch_size`` (texts per
    request, 128), ``concurrency`` (requests in flight, 4), ``retries`` (5), ``backoff`` (seconds
    before the first retry, doubled each time, 1.0), ``timeout`` (seconds per request, 120),
    ``price_per_million_tokens`` (for the cost estimate in the log), ``extra_body`` (more JSON fields
    of every request, e.g. ``{truncate_prompt_tokens: 256}`` for vLLM; part of the fingerprint),
    ``query_prompt`` / ``document_prompt`` or ``prompts`` (encoders.prompts)."""

    kind = "openai"

    def __init__(self, name: str, entry: dict):
        super().__init__(name, entry)
        where = f"config: encoders.{name}"
        if not entry.get("model"):
            raise TrsllavaError(f"{where}.model is required: the model name the server serves")
        self.model = str(entry["model"])
        self.base_url = str(entry.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        if urlsplit(self.base_url).scheme not in ("http", "https") or not urlsplit(self.base_url).hostname:
            raise TrsllavaError(f"{where}.base_url is {public_url(self.base_url)!r}: expected http(s)://host[:port]/v1")
        self.api_key_env = entry.get("api_key_env", "OPENAI_API_KEY")
        settings = {key: entry.get(key, default) for key, default in DEFAULTS.items()}
        for key, minimum in (("batch_size", 1), ("concurrency", 1), ("retries", 0)):
            if not isinstance(settings[key], int) or settings[key] < minimum:
                raise TrsllavaError(f"{where}.{key} is {settings[key]!r}: expected an integer >= {minimum}")
        self.batch_size, self.concurrency, self.retries = settings["batch_size"], settings["concurrency"], settings["retries"]
        self.backoff, self.timeout = float(settings["backoff"]), float(settings["timeout"])
        self.dimensions = entry.get("dimensions")
        self.price = entry.get("price_per_million_tokens")
        self.extra_body = dict(entry.get("extra_body") or {})
        self.prompts = role_prompts(name, entry)  # no model to read prompts from: explicit ones only
        self._client = None
        self._lock = threading.Lock()
        self.usage = {"requests": 0, "texts": 0, "prompt_tokens": 0, "retries": 0}

    def __repr__(self) -> str:
        return f"OpenAIEmbeddingEncoder(name={self.name!r}, model={self.model!r}, base_url={public_url(self.base_url)!r}, api_key=***)"

    def describe(self) -> dict:
        """The config entry with ``base_url`` stripped of any user:password or query (written beside
        the representation and into reports)."""
        return {**super().describe(), "base_url": public_url(self.base_url)}

    @property
    def url(self) -> str:
        """The embeddings endpoint as shown in logs and errors (no credential)."""
        return public_url(self.base_url + "/embeddings")

    def prompt(self, role: Role) -> str | None:
        return self.prompts[role]

    def fingerprint(self, role: Role) -> dict:
        # the host, not the URL: the same server reached by another port or path serves the same
        # model; a local server should give each model its own --served-model-name
        return {
            "type": self.kind,
            "model": self.model,
            "host": (urlsplit(self.base_url).hostname or "").lower(),
            "dimensions": self.dimensions,
            "normalized": True,
            "prompt": self.prompt(role),
            "extra_body": self.extra_body,
        }

    # ------------------------------------------------------------------------------ transport

    def _api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _redact(self, text: str) -> str:
        key = self._api_key()
        return str(text).replace(key, "***") if key else str(text)

    def _http(self):
        with self._lock:
            if self._client is None:
                import httpx

                key = self._api_key()
                log.info("encoder %s: %s at %s (key from $%s: %s)", self.name, self.model, self.url, self.api_key_env,
                         "set" if key else "not set")
                # "EMPTY" is what `vllm serve` without --api-key accepts; a real API answers 401
                self._client = httpx.Client(base_url=self.base_url, timeout=self.timeout,
                                            headers={"Authorization": f"Bearer {key or 'EMPTY'}"})
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _post(self, inputs: list[str]) -> dict:
        """One embeddings request; raises _Retryable or TrsllavaError (final)."""
        import httpx

        body = {"model": self.model, "input": inputs, "encoding_format": "float", **self.extra_body}
        if self.dimensions is not None:
            body["dimensions"] = int(self.dimensions)
        try:
            response = self._http().post("/embeddings", json=body)
        except httpx.TransportError as error:  # connection refused or reset, timeouts
            raise _Retryable(f"{type(error).__name__}: {error}") from None
        if retryable_status(response.status_code):
            raise _Retryable(f"HTTP {response.status_code}: {response.text[:300]}", retry_after(response.headers))
        if response.status_code != 200:
            hint = ""
            if response.status_code in (401, 403):
                hint = (f" (the key comes from ${self.api_key_env}, which is "
                        f"{'set' if self._api_key() else 'not set'})")
            elif response.status_code == 404:
                hint = f" (is '{self.model}' the name the server serves, and {public_url(self.base_url)} its /v1 root?)"
            raise TrsllavaError(f"encoder '{self.name}': {self.url} answered HTTP {response.status_code}{hint}: "
                                f"{self._redact(response.text[:500])}")
        try:
            return response.json()
        except ValueError as error:
            raise _Retryable(f"response is not JSON: {error}") from None

    def _request(self, texts: list[str], role: Role, stop: threading.Event | None = None) -> np.ndarray:
        """Vectors of one request's ``texts``: float32 (len(texts), d), unit rows, with retries;
        ``stop`` set (another request failed for good): give up before the next attempt."""
        inputs = with_prompt(self.prompt(role), texts)
        for attempt in range(self.retries + 1):
            if stop is not None and stop.is_set():
                raise TrsllavaError(f"encoder '{self.name}': request abandoned (another request failed)")
            try:
                body = self._post(inputs)
                break
            except _Retryable as error:
                if attempt >= self.retries:
                    raise TrsllavaError(f"encoder '{self.name}': {self.url}: {self._redact(error)} "
                                        f"(gave up after {attempt + 1} attempts)") from None
                delay = backoff_delay(attempt, self.backoff, error.wait_s)
                log.warning("encoder %s: %s: %s; retry %d/%d in %.1f s", self.name, self.url, self._redact(error),
                            attempt + 1, self.retries, delay)
                with self._lock:
                    self.usage["retries"] += 1
                if stop is not None:
                    stop.wait(delay)  # wakes at once when the run is given up
                else:
                    time.sleep(delay)
        vectors = self._vectors(body, len(texts))
        with self._lock:
            self.usage["requests"] += 1
            self.usage["texts"] += len(texts)
            self.usage["prompt_tokens"] += int((body.get("usage") or {}).get("prompt_tokens") or 0)
        return vectors

    def _vectors(self, body: dict, n: int) -> np.ndarray:
        data = sorted(body.get("data") or [], key=lambda item: item.get("index", 0))
        if len(data) != n:
            raise TrsllavaError(f"encoder '{self.name}': {self.url} returned {len(data)} embeddings for {n} texts")
        try:
            vectors = np.asarray([item["embedding"] for item in data], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as error:
            raise TrsllavaError(f"encoder '{self.name}': {self.url} returned embeddings that are not float lists "
                                f"({type(error).__name__}; base64 encoding is not read)") from None
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)

    # -------------------------------------------------------------------------------- public

    def embed(self, texts: list[str], role: Role) -> np.ndarray:
        for _, vectors in self.embed_batches([texts], role):
            return vectors
        raise AssertionError("embed_batches yielded nothing for one batch")

    def embed_batches(self, batches: list[list[str]], role: Role) -> Iterator[tuple[int, np.ndarray]]:
        """Each batch is cut into requests of ``batch_size`` texts; up to ``concurrency`` requests run
        at once (submitted in order, a new one as each finishes), and a batch is yielded as soon as
        its last request is back: in completion order, so a crash loses only batches in flight."""
        requests = [(number, start) for number, texts in enumerate(batches) for start in range(0, len(texts), self.batch_size)]
        left = [math.ceil(len(texts) / self.batch_size) for texts in batches]
        parts: list[dict[int, np.ndarray]] = [{} for _ in batches]
        before = dict(self.usage)
        for number, texts in enumerate(batches):
            if not texts:
                yield number, np.zeros((0, int(self.dimensions or 0)), dtype=np.float32)
        pending: dict[Future, tuple[int, int]] = {}
        queue = iter(requests)
        stop = threading.Event()  # set on the way out: requests still retrying give up instead of sleeping on
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix=f"embed-{self.name}") as pool:

            def submit_next() -> None:
                job = next(queue, None)
                if job is not None:
                    number, start = job
                    pending[pool.submit(self._request, batches[number][start:start + self.batch_size], role, stop)] = job

            try:
                for _ in range(self.concurrency):
                    submit_next()
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        number, start = pending.pop(future)
                        parts[number][start] = future.result()  # a final error ends the whole run here
                        submit_next()
                        left[number] -= 1
                        if left[number] == 0:
                            vectors = np.concatenate([parts[number][key] for key in sorted(parts[number])])
                            parts[number] = {}
                            yield number, vectors
            finally:
                stop.set()
                for future in pending:
                    future.cancel()
                self._log_usage(before)

    def _log_usage(self, before: dict) -> None:
        spent = {key: self.usage[key] - before[key] for key in self.usage}
        if not spent["requests"] and not spent["retries"]:
            return
        cost = ""
        if self.price is not None:
            cost = f", estimated cost ${spent['prompt_tokens'] * float(self.price) / 1e6:.6f} " \
                   f"at ${float(self.price):g} per million tokens"
        log.info("encoder %s: %d texts in %d requests (%d retries), %d prompt tokens (server usage)%s; "
                 "this process so far: %d prompt tokens", self.name, spent["texts"], spent["requests"], spent["retries"],
                 spent["prompt_tokens"], cost, self.usage["prompt_tokens"])
