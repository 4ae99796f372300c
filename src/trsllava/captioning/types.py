"""The request and result records every captioning backend (transformers, vLLM, OpenAI) speaks."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import TrsllavaError

log = logging.getLogger(__name__)


@dataclass
class GenerationRequest:
    """One image and one user prompt; ``n`` samples are wanted.

    ``json_schema``: a JSON schema the output should follow. Backends with constrained decoding
    (vLLM) enforce it; the others ignore it and the caller validates the texts afterwards.
    ``seed``: this request's own sampling seed; when given, its samples do not depend on which
    other requests share the call (resumed shards then reproduce an uninterrupted run).
    ``image``: the pixels already loaded by ``trsllava.images`` (an RGB ``PIL.Image``); when None
    the backend loads ``image_path`` with its own ``ImageLoader``.
    """

    image_path: str
    prompt_text: str
    n: int = 1
    json_schema: dict | None = None
    seed: int | None = None
    image: object | None = None

    def pixels(self, loader):
        """The RGB pixels of this request: ``image`` when given, else ``loader.load(image_path)``."""
        return self.image if self.image is not None else loader.load(self.image_path)


@dataclass
class GenerationResult:
    """The ``n`` texts generated for one request, in sample order.

    ``finish_reasons[i]`` is "stop" (the model ended the text) or "length" (max_new_tokens hit).
    ``prompt_tokens`` counts the prompt once (image tokens included); ``completion_tokens`` is the
    total over the ``n`` samples.
    """

    texts: list[str]
    finish_reasons: list[str]
    prompt_tokens: int
    completion_tokens: int


def check_requests(requests: list[GenerationRequest]) -> None:
    """Fail before any generation starts, naming the file at fault."""
    for request in requests:
        if request.image is None and not Path(request.image_path).is_file():
            raise TrsllavaError(f"image not found: {request.image_path}")
        if request.n < 1:
            raise TrsllavaError(f"request for {request.image_path}: n must be >= 1, got {request.n}")


def check_settings(**minimums: tuple[float, float]) -> None:
    """Each keyword is (value, smallest allowed value); the error names the setting."""
    for name, (value, minimum) in minimums.items():
        if value < minimum:
            raise TrsllavaError(f"{name} must be >= {minimum}, got {value}")


def sampling_temperature(temperature: float, n: int) -> float | None:
    """The temperature every backend samples at, or None for greedy decoding. Greedy only when
    temperature is 0 and one sample is wanted: n greedy copies would be identical, so n > 1 at
    temperature 0 samples at 1.0."""
    if temperature == 0 and n == 1:
        return None
    return temperature or 1.0


def check_processor_options(options) -> dict:
    """A captioner's ``processor_options`` as a plain dict ({} when unset): a mapping with string keys
    and JSON values, since it is recorded in the provenance and the cache key."""
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(isinstance(key, str) for key in options):
        raise TrsllavaError(f"processor_options must be a mapping of option names to values, got {options!r}")
    try:
        json.dumps(dict(options), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise TrsllavaError(f"processor_options must hold plain (JSON) values: {exc}") from exc
    return dict(options)


def warn_unknown_processor_options(processor, options: dict, model_id: str) -> None:
    """transformers silently drops ``from_pretrained`` keywords no component knows: say so, since a
    misspelt option would otherwise leave the model's own setting in force."""
    components = [processor] + [getattr(processor, name, None) for name in ("image_processor", "tokenizer")]
    for key in options:
        if not any(component is not None and hasattr(component, key) for component in components):
            log.warning("model %s: processor option %r is not a setting of its processor (%s); it may have no effect",
                        model_id, key, type(processor).__name__)
