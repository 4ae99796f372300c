"""Captioning through any OpenAI-compatible chat-completions server (``vllm serve``, OpenAI, ...).

Each request is one ``chat.completions`` call: a user turn holding the image (a base64 PNG data
URL of the pixels ``trsllava.images.load_rgb`` made, never the raw file: the server sees what the
other backends see, whatever the file's bit depth, mode or orientation) and the prompt text, ``n`` samples, and, when the request has a ``json_schema``, the OpenAI
``response_format`` ``{"type": "json_schema", ...}`` (``vllm serve`` turns it into structured
decoding). Requests run concurrently on a thread pool; connection errors, timeouts, HTTP 429
and 5xx are retried with exponential backoff.

The API key is read from an environment variable (``api_key_env``), sent as a bearer token and
never logged: ``describe()`` does not contain it and error messages have it replaced by ``***``.
Uses the ``openai`` client when installed (vllm depends on it), else plain ``httpx``; both are
imported when a backend is built.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import TrsllavaError
from ..http_api import RETRY_STATUS as _RETRY_STATUS
from ..http_api import backoff_delay
from ..http_api import public_url as _public_url
from ..http_api import retry_after as _retry_after
from ..images import DEFAULT_OPTIONS, ImageLoader, ImageOptions, encode_png
from .types import GenerationRequest, GenerationResult, check_requests, check_settings, sampling_temperature
from .vllm_backend import request_seed

log = logging.getLogger(__name__)


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    pass


class OpenAIBackend:
    """Generate texts for (image, prompt) requests with an OpenAI-compatible server.

    ``base_url``: the API root including ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``); ``model``:
    the served model name. ``api_key_env``: the environment variable holding the key, read at
    construction; when unset, the placeholder "EMPTY" is sent (what ``vllm serve`` without
    ``--api-key`` accepts).

    Sampling mirrors the other backends: greedy (temperature 0) when ``temperature == 0`` and
    ``n == 1``, otherwise ``temperature`` (1.0 when 0 and ``n > 1``) with top-p 1. Each request
    carries ``seed = request_seed(self.seed, index)`` (servers may ignore it: vLLM honours it).

    ``structured``: how a request's ``json_schema`` is sent: ``"json_schema"`` (OpenAI
    ``response_format``, accepted by ``vllm serve`` 0.32 and OpenAI), ``"vllm"`` (vLLM's own
    ``structured_outputs: {"json": schema}`` body field) or ``"none"`` (not sent; the caller
    validates the texts afterwards).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int = 0,
        concurrency: int = 8,
        retries: int = 4,
        timeout: float = 120.0,
        backoff: float = 1.0,
        max_image_side: int | None = None,
        structured: str = "json_schema",
        client: str = "auto",
        image_options: ImageOptions | None = None,
    ):
        check_settings(max_tokens=(max_tokens, 1), temperature=(temperature, 0), concurrency=(concurrency, 1),
                       retries=(retries, 0))
        if structured not in ("json_schema", "vllm", "none"):
            raise TrsllavaError(f"structured must be json_schema, vllm or none, got {structured!r}")
        if client not in ("auto", "openai", "httpx"):
            raise TrsllavaError(f"client must be auto, openai or httpx, got {client!r}")
        self.base_url = str(base_url).rstrip("/")
        self.model_id = str(model)
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.concurrency = int(concurrency)
        self.retries = int(retries)
        self.timeout = float(timeout)
        self.backoff = float(backoff)
        self.max_image_side = max_image_side
        self.image_loader = ImageLoader(image_options or DEFAULT_OPTIONS, max_image_side)
        self.structured = structured
        self._lock = threading.Lock()
        self._http = None
        self.client_kind = self._pick_client(client)
        log.info("openai backend: %s at %s (%s client, key from $%s: %s)", self.model_id, _public_url(self.base_url),
                 self.client_kind, api_key_env, "set" if self._api_key else "not set")

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={_public_url(self.base_url)!r}, model={self.model_id!r}, api_key=***)"

    @staticmethod
    def _pick_client(client: str) -> str:
        if client in ("auto", "openai"):
            try:
                import openai  # noqa: F401

                return "openai"
            except ImportError:
                if client == "openai":
                    raise TrsllavaError("client='openai' but the openai package is not installed") from None
        try:
            import httpx  # noqa: F401
        except ImportError:
            raise TrsllavaError("the openai backend needs the openai or the httpx package") from None
        return "httpx"

    # ------------------------------------------------------------------------------ description

    def describe(self) -> dict:
        return {
            "backend": self.name,
            "model_id": self.model_id,
            "model_revision": None,
            "dtype": None,
            "device": _public_url(self.base_url),
        }

    def _redact(self, text: str) -> str:
        text = str(text)
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    # -------------------------------------------------------------------------------- payload

    def _image_url(self, request: GenerationRequest) -> str:
        """The request's pixels as a PNG data URL (lossless: the server decodes exactly them)."""
        return "data:image/png;base64," + base64.b64encode(encode_png(request.pixels(self.image_loader))).decode("ascii")

    def _payload(self, request: GenerationRequest, index: int) -> dict:
        payload = {
            "model": self.model_id,
            "messages": [{
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": self._image_url(request)}},
                    {"type": "text", "text": request.prompt_text},
                ],
            }],
            "n": request.n,
            "max_tokens": self.max_tokens,
            "seed": request.seed if request.seed is not None else request_seed(self.seed, index),
        }
        temperature = sampling_temperature(self.temperature, request.n)
        if temperature is None:
            payload["temperature"] = 0.0
        else:
            payload.update(temperature=temperature, top_p=1.0)
        if request.json_schema is not None:
            if self.structured == "json_schema":
                payload["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": request.json_schema},
                }
            elif self.structured == "vllm":
                payload["structured_outputs"] = {"json": request.json_schema}
        return payload

    # ------------------------------------------------------------------------------ transport

    def _client(self):
        """One client shared by the worker threads (both clients are thread-safe and pool connections)."""
        with self._lock:
            if self._http is None:
                key = self._api_key or "EMPTY"
                if self.client_kind == "openai":
                    import openai

                    self._http = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout,
                                               max_retries=0)
                else:
                    import httpx

                    self._http = httpx.Client(base_url=self.base_url, timeout=self.timeout,
                                              headers={"Authorization": f"Bearer {key}"})
            return self._http

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def _post(self, payload: dict) -> dict:
        """One chat.completions call; raises _Retryable or _Fatal (messages not yet redacted)."""
        if self.client_kind == "openai":
            import openai

            known = {"model", "messages", "n", "max_tokens", "seed", "temperature", "top_p", "response_format"}
            kwargs = {k: v for k, v in payload.items() if k in known}
            extra = {k: v for k, v in payload.items() if k not in known}
            try:
                response = self._client().chat.completions.create(**kwargs, extra_body=extra or None)
            except openai.APIConnectionError as exc:  # includes APITimeoutError
                raise _Retryable(f"{type(exc).__name__}: {exc}") from None
            except openai.APIStatusError as exc:
                message = f"HTTP {exc.status_code}: {exc.message}"
                if exc.status_code in _RETRY_STATUS or exc.status_code >= 500:
                    raise _Retryable(message, _retry_after(getattr(exc.response, "headers", None))) from None
                raise _Fatal(message) from None
            return response.model_dump()

        import httpx

        try:
            response = self._client().post("/chat/completions", json=payload)
        except httpx.TransportError as exc:  # connection refused/reset, timeouts
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code in _RETRY_STATUS or response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}: {response.text[:500]}", _retry_after(response.headers))
        if response.status_code != 200:
            raise _Fatal(f"HTTP {response.status_code}: {response.text[:500]}")
        try:
            return response.json()
        except ValueError as exc:
            raise _Retryable(f"response is not JSON: {exc}") from None

    def _call(self, index: int, request: GenerationRequest) -> GenerationResult:
        payload = self._payload(request, index)
        for attempt in range(self.retries + 1):
            try:
                body = self._post(payload)
                break
            except _Fatal as exc:
                raise TrsllavaError(f"openai backend: {request.image_path}: {self._redact(exc)}") from None
            except _Retryable as exc:
                if attempt >= self.retries:
                    raise TrsllavaError(f"openai backend: {request.image_path}: {self._redact(exc)} "
                                        f"(gave up after {attempt + 1} attempts)") from None
                delay = backoff_delay(attempt, self.backoff, exc.retry_after)
                log.warning("openai backend: %s: %s; retry %d/%d in %.1f s", request.image_path,
                            self._redact(exc), attempt + 1, self.retries, delay)
                time.sleep(delay)
        return self._result(request, body)

    def _result(self, request: GenerationRequest, body: dict) -> GenerationResult:
        choices = sorted(body.get("choices") or [], key=lambda choice: choice.get("index") or 0)
        if len(choices) != request.n:
            raise TrsllavaError(f"openai backend: {request.image_path}: asked for n={request.n} samples, "
                                f"the server returned {len(choices)}")
        texts, reasons = [], []
        for choice in choices:
            content = (choice.get("message") or {}).get("content") or ""
            texts.append(content.strip())
            reasons.append("length" if choice.get("finish_reason") == "length" else "stop")
        usage = body.get("usage") or {}
        return GenerationResult(texts=texts, finish_reasons=reasons,
                                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                completion_tokens=int(usage.get("completion_tokens") or 0))

    # -------------------------------------------------------------------------------- public

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in request order; up to ``concurrency`` requests in flight."""
        check_requests(requests)
        if not requests:
            return []
        workers = min(self.concurrency, len(requests))
        if workers == 1:
            return [self._call(index, request) for index, request in enumerate(requests)]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-backend")
        try:
            futures = [pool.submit(self._call, index, request) for index, request in enumerate(requests)]
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
