"""What every client of an OpenAI-compatible HTTP API here shares (the captioning backend
``captioning.openai_backend`` and the embeddings encoder ``encoders.api``): which failures are worth
another try, how long to wait before it, and how to name a server without leaking a credential.

Retried: connection errors and timeouts, HTTP 408, 409, 429 and every 5xx, with exponential backoff
(``backoff * 2**attempt`` seconds, capped at 60, plus up to 10 % jitter so that concurrent workers do
not retry in lockstep), at least the server's ``Retry-After`` when it sends one. Any other status is
final: a retry cannot fix a wrong key (401), model name (404) or request (400).
"""

from __future__ import annotations

import random
from urllib.parse import urlsplit, urlunsplit

RETRY_STATUS = frozenset({408, 409, 429})  # plus every 5xx
MAX_DELAY_S = 60.0


def retryable_status(status: int) -> bool:
    """Whether an HTTP status is worth another try (408, 409, 429, 5xx)."""
    return status in RETRY_STATUS or status >= 500


def retry_after(headers) -> float | None:
    """The ``Retry-After`` header in seconds (None when absent or not a number of seconds)."""
    try:
        value = headers.get("retry-after") if headers is not None else None
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def backoff_delay(attempt: int, backoff: float, server_wait: float | None = None) -> float:
    """Seconds to wait before retry ``attempt + 1`` (attempt counts from 0)."""
    delay = min(backoff * 2**attempt, MAX_DELAY_S) * (1 + 0.1 * random.random())
    if server_wait is not None:
        delay = max(delay, min(server_wait, MAX_DELAY_S))
    return delay


def public_url(url: str) -> str:
    """``url`` without user:password and query string (either may hold a credential)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
