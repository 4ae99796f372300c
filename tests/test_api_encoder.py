"""The OpenAI-compatible embeddings encoder (``type: openai``) against a fake ``/v1/embeddings``
server (stdlib http.server in a thread): retries and backoff, a wrong key, batching and bounded
concurrency, completion-order batches, the per-text cache, prompts, usage and cost in the log.
The same encoder against a real server (``vllm serve``): tests/test_api_encoder_vllm.py."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from trsllava.encoders import build_encoder
from trsllava.encoders.api import OpenAIEmbeddingEncoder
from trsllava.encoders.dense import DenseRepresentation
from trsllava.encoders.store import fill_cache
from trsllava.errors import TrsllavaError

DIM = 8
KEY_ENV = "TRSLLAVA_FAKE_EMBEDDINGS_KEY"


def fake_vector(text: str) -> list[float]:
    """A deterministic, deliberately non-unit vector per input text."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return (3.0 * np.random.default_rng(seed).standard_normal(DIM)).tolist()


class FakeServer:
    """``POST /v1/embeddings``. ``statuses``: the statuses to answer before the normal 200s (one per
    request, in order); ``delay``: seconds each request takes (``slow_delay`` for inputs containing
    "slow"). Records every request's body and Authorization header, and the most requests in flight."""

    def __init__(self, statuses=(), delay=0.0, slow_delay=0.0, error_body=None):
        self.statuses = list(statuses)
        self.delay, self.slow_delay, self.error_body = delay, slow_delay, error_body
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.auth.append(self.headers.get("Authorization"))
                    status = server.statuses.pop(0) if server.statuses else 200
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    slow = any("slow" in text for text in body["input"])
                    time.sleep(server.slow_delay if slow else server.delay)
                    if self.path != "/v1/embeddings":
                        status = 404
                    if status != 200:
                        payload = server.error_body or {"error": {"message": f"fake status {status}"}}
                        return self._send(status, payload, {"Retry-After": "0"} if status == 429 else {})
                    data = [{"object": "embedding", "index": i, "embedding": fake_vector(text)} for i, text in enumerate(body["input"])]
                    tokens = sum(len(text.split()) for text in body["input"])
                    self._send(200, {"object": "list", "model": body["model"], "data": data[::-1],  # any order: index counts
                                     "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, status, payload, headers=None):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def inputs(self) -> list[list[str]]:
        return [body["input"] for body in self.requests]


@pytest.fixture(autouse=True)
def loopback_without_proxy(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def encoder(server: FakeServer, **entry) -> OpenAIEmbeddingEncoder:
    settings = {"type": "openai", "model": "fake-embed", "base_url": server.url, "api_key_env": KEY_ENV, "backoff": 0.01, **entry}
    built = build_encoder("api", settings)
    assert isinstance(built, OpenAIEmbeddingEncoder)
    return built


def unit(texts):
    vectors = np.array([fake_vector(text) for text in texts], dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_vectors_are_the_servers_unit_normalised_in_input_order():
    texts = ["a plane on the runway", "two tennis courts", "a river bend"]
    with FakeServer() as server:
        vectors = encoder(server).embed(texts, "query")
    assert vectors.dtype == np.float32 and vectors.shape == (3, DIM)
    np.testing.assert_allclose(vectors, unit(texts), rtol=1e-6)
    assert server.requests[0] == {"model": "fake-embed", "input": texts, "encoding_format": "float"}


def test_429_is_retried_with_backoff_then_succeeds(caplog):
    with FakeServer(statuses=[429, 503]) as server, caplog.at_level(logging.WARNING, "trsllava.encoders.api"):
        enc = encoder(server, backoff=0.05)
        started = time.monotonic()
        vectors = enc.embed(["a harbour"], "document")
        elapsed = time.monotonic() - started
    assert len(server.requests) == 3  # 429, 503, then 200
    np.testing.assert_allclose(vectors, unit(["a harbour"]), rtol=1e-6)
    assert elapsed >= 0.05 + 0.10  # backoff 0.05 s, then doubled
    assert enc.usage["retries"] == 2 and enc.usage["requests"] == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "HTTP 429" in warnings[0] and "retry 1/5" in warnings[0] and "HTTP 503" in warnings[1]


def test_retries_exhausted_name_the_server_and_status():
    with FakeServer(statuses=[503] * 10) as server:
        with pytest.raises(TrsllavaError) as error:
            encoder(server, retries=2).embed(["a harbour"], "query")
    assert len(server.requests) == 3
    message = str(error.value)
    assert server.url + "/embeddings" in message and "HTTP 503" in message and "gave up after 3 attempts" in message


def test_connection_refused_is_retried_then_reported():
    with FakeServer() as server:
        url = server.url
    enc = build_encoder("api", {"type": "openai", "model": "m", "base_url": url, "retries": 1, "backoff": 0.01})
    with pytest.raises(TrsllavaError, match=r"ConnectError.*gave up after 2 attempts"):
        enc.embed(["x"], "query")


def test_wrong_key_is_one_clear_error_without_the_key(monkeypatch, caplog):
    key = "sk-secret-" + "7" * 24
    monkeypatch.setenv(KEY_ENV, key)
    # OpenAI echoes the key it refused in the message: the encoder must not pass that on
    body = {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error"}}
    with FakeServer(statuses=[401] * 5, error_body=body) as server, caplog.at_level(logging.DEBUG):
        enc = encoder(server)
        with pytest.raises(TrsllavaError) as error:
            enc.embed(["a harbour"], "query")
    assert len(server.requests) == 1  # a wrong key is not retried
    assert server.auth == [f"Bearer {key}"]
    message = str(error.value)
    assert "HTTP 401" in message and f"${KEY_ENV}" in message and server.url in message
    assert key not in message and "***" in message
    assert key not in caplog.text and key not in repr(enc) and key not in json.dumps(enc.describe())
    assert all(key not in json.dumps(enc.fingerprint(role)) for role in ("query", "document"))


def test_a_final_error_does_not_wait_for_requests_in_backoff():
    with FakeServer(statuses=[429, 401]) as server:
        enc = encoder(server, batch_size=1, concurrency=2, backoff=5.0)
        started = time.monotonic()
        with pytest.raises(TrsllavaError, match="HTTP 401"):
            list(enc.embed_batches([["one"], ["two"]], "query"))
        elapsed = time.monotonic() - started
    assert elapsed < 3.0  # the request that got 429 gave up instead of sleeping its 5 s backoff
    assert len(server.requests) == 2


def test_batching_and_bounded_concurrency():
    texts = [f"text number {i}" for i in range(10)]
    with FakeServer(delay=0.2) as server:
        enc = encoder(server, batch_size=3, concurrency=2)
        vectors = enc.embed(texts, "query")
    assert sorted(len(inputs) for inputs in server.inputs) == [1, 3, 3, 3]  # concurrent: arrival order varies
    assert sorted(text for inputs in server.inputs for text in inputs) == sorted(texts)
    assert server.max_in_flight == 2  # never more than `concurrency`, and it was used
    np.testing.assert_allclose(vectors, unit(texts), rtol=1e-6)
    assert enc.usage == {"requests": 4, "texts": 10, "prompt_tokens": 30, "retries": 0}


def test_batches_are_yielded_as_they_finish():
    with FakeServer(slow_delay=0.6) as server:
        enc = encoder(server, concurrency=2)
        order = [number for number, _ in enc.embed_batches([["slow one"], ["fast one"], ["fast two"]], "document")]
    assert order[0] != 0 and sorted(order) == [0, 1, 2]  # the slow first batch did not hold the others back


def test_cache_a_rerun_sends_no_request(tmp_path):
    texts = ["a plane", "a ship", "a plane", "a stadium"]
    with FakeServer() as server:
        enc = encoder(server, batch_size=2)
        enc.represent(texts, tmp_path / "rep1", cache_root=tmp_path / "cache")
        first = len(server.requests)
        report = fill_cache(encoder(server), texts, tmp_path / "cache", progress=False)
        encoder(server, batch_size=2).represent(texts, tmp_path / "rep2", cache_root=tmp_path / "cache")
        assert len(server.requests) == first == 2  # 3 distinct texts in requests of 2; then nothing
        # a new text costs one request of that text only
        fill_cache(encoder(server), texts + ["a bridge"], tmp_path / "cache", progress=False)
        assert server.inputs[first:] == [["a bridge"]]
    assert list(report["caches"].values())[0]["encoded"] == 0
    rep = DenseRepresentation.load(tmp_path / "rep2")
    assert rep.texts == ["a plane", "a ship", "a stadium"] and rep.symmetric
    np.testing.assert_allclose(np.asarray(rep.vectors), unit(rep.texts), rtol=1e-6)


def test_fingerprint_names_model_host_dimensions_prompt_not_key_or_port(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-fingerprint-secret")
    base = {"type": "openai", "model": "text-embedding-3-small", "api_key_env": KEY_ENV}
    enc = build_encoder("api", {**base, "base_url": "http://User:Pw@Example.org:8000/v1", "dimensions": 256})
    assert enc.fingerprint("query") == {"type": "openai", "model": "text-embedding-3-small", "host": "example.org",
                                        "dimensions": 256, "normalized": True, "prompt": None, "extra_body": {}}
    assert enc.symmetric
    moved = build_encoder("api", {**base, "base_url": "http://example.org:9000/other/v1", "dimensions": 256, "batch_size": 7})
    assert moved.fingerprint("query") == enc.fingerprint("query")  # port, path, batch size: same vectors
    for change in ({"dimensions": 512}, {"model": "text-embedding-3-large"}, {"base_url": "http://other.org/v1"},
                   {"query_prompt": "query: "}):
        assert build_encoder("api", {**base, "base_url": "http://example.org/v1", "dimensions": 256, **change}).fingerprint("query") \
            != enc.fingerprint("query"), change
    assert "Pw" not in repr(enc) + json.dumps(enc.describe()) and "sk-fingerprint-secret" not in repr(enc)
    assert enc.describe()["base_url"] == "http://example.org:8000/v1"


def test_dimensions_and_prompts_reach_the_request(tmp_path):
    with FakeServer() as server:
        enc = encoder(server, dimensions=4, query_prompt="query: ", document_prompt="passage: ")
        assert not enc.symmetric
        report = fill_cache(enc, ["a port", "a farm"], tmp_path / "cache", batch_size=10, progress=False)
    assert all(body["dimensions"] == 4 for body in server.requests)
    assert sorted(server.inputs) == [["passage: a port", "passage: a farm"], ["query: a port", "query: a farm"]]
    assert len(report["caches"]) == 2  # one cache per role


def test_usage_and_cost_are_logged(caplog):
    with FakeServer() as server, caplog.at_level(logging.INFO, "trsllava.encoders.api"):
        enc = encoder(server, batch_size=2, price_per_million_tokens=0.02)
        enc.embed(["one two three", "four five", "six"], "query")
    lines = [r.getMessage() for r in caplog.records if "prompt tokens" in r.getMessage()]
    assert len(lines) == 1
    # 6 words = 6 tokens on the fake server; 6 * 0.02 / 1e6 USD
    assert "3 texts in 2 requests (0 retries), 6 prompt tokens (server usage)" in lines[0]
    assert "estimated cost $0.000000 at $0.02 per million tokens" in lines[0]
    enc.price = 1e5  # the estimate's arithmetic, with a price that shows in six decimals
    with FakeServer() as server, caplog.at_level(logging.INFO, "trsllava.encoders.api"):
        enc.base_url, enc._client = server.url, None
        caplog.clear()
        enc.embed(["one two three"], "query")
    assert "3 prompt tokens (server usage), estimated cost $0.300000 at $100000 per million tokens" in caplog.text
    assert "this process so far: 9 prompt tokens" in caplog.text


@pytest.mark.parametrize("entry, complaint", [
    ({}, "encoders.api.model is required"),
    ({"model": "m", "base_url": "localhost:8000"}, "encoders.api.base_url"),
    ({"model": "m", "concurrency": 0}, "encoders.api.concurrency"),
    ({"model": "m", "prompts": "model"}, "encoders.api.prompts"),
    ({"model": "m", "prompts": {"query": "q: "}, "query_prompt": "q: "}, "either prompts or query_prompt"),
])
def test_bad_entries_are_clear_errors(entry, complaint):
    with pytest.raises(TrsllavaError, match=complaint.replace(".", r"\.")):
        build_encoder("api", {"type": "openai", **entry})
