"""Captioning with plain Hugging Face transformers: ``model.generate`` on batches of image prompts.

The reference backend: slow but dependable, runs on CPU or one GPU, and needs nothing beyond
transformers. vLLM is the fast backend for real runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import TrsllavaError
from ..images import DEFAULT_OPTIONS, ImageLoader, ImageOptions
from .types import (
    GenerationRequest,
    GenerationResult,
    check_processor_options,
    check_requests,
    check_settings,
    sampling_temperature,
    warn_unknown_processor_options,
)

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def _dtype_kwarg(dtype) -> dict:
    """transformers renamed from_pretrained's ``torch_dtype`` to ``dtype`` in 4.56."""
    import transformers

    major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


class TransformersBackend:
    """Generate texts for (image, prompt) requests with a transformers image-text-to-text model.

    ``model``: a local folder or a hub id already in the local cache (nothing is downloaded when
    HF_HUB_OFFLINE=1). Prompts are built with the processor's own chat template: one user turn
    holding the image and the prompt text, then the generation prompt.

    Sampling: greedy when ``temperature == 0`` and ``n == 1``; otherwise multinomial sampling at
    ``temperature`` (1.0 when ``temperature == 0`` but ``n > 1``, since n greedy copies would be
    identical), with top-p and top-k switched off so the model's generation_config does not change
    the meaning of ``temperature``. ``torch.manual_seed(seed)`` is set at the start of every
    ``generate`` call, so the same requests with the same settings give the same texts.

    ``GenerationRequest.json_schema`` is ignored: constrained (structured) decoding is a vLLM
    feature. Outputs of structured prompts are validated after generation by the caller.

    ``processor_options``: keyword arguments for ``AutoProcessor.from_pretrained``, overriding the
    model folder's processor settings, e.g. ``{"do_image_splitting": False}`` for SmolVLM / Idefics3
    (one tile per image instead of a grid of tiles + a global view). They change the prompts, so
    ``describe()`` reports them (and the shard cache key covers them).

    Pixels: a request's ``image`` when given (the captioning shard loads each image once), else
    ``trsllava.images.load_rgb`` of its path with ``image_options`` and ``max_image_side``.
    """

    name = "transformers"

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
        processor_options: dict | None = None,
        image_options: ImageOptions | None = None,
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        check_settings(batch_size=(batch_size, 1), max_new_tokens=(max_new_tokens, 1), temperature=(temperature, 0))
        self.model_id = str(model)
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.max_image_side = max_image_side
        self.image_loader = ImageLoader(image_options or DEFAULT_OPTIONS, max_image_side)
        self.processor_options = check_processor_options(processor_options)

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
            log.info("transformers backend: device auto -> %s", device)
        self.device = torch.device(device)
        torch_dtype = self._torch_dtype(dtype)

        try:
            self.processor = AutoProcessor.from_pretrained(self.model_id, **self.processor_options)
            self.model = AutoModelForImageTextToText.from_pretrained(self.model_id, **_dtype_kwarg(torch_dtype))
        except OSError as exc:  # missing folder, missing files, model not in the offline cache
            raise TrsllavaError(f"model {self.model_id}: cannot be loaded: {exc}") from exc
        self.model.to(self.device).eval()
        warn_unknown_processor_options(self.processor, self.processor_options, self.model_id)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = self._eos_ids()
        log.info("transformers backend: %s loaded (%s on %s)", self.model_id, self.model.dtype, self.device)

    @staticmethod
    def _torch_dtype(dtype):
        import torch

        if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
            return dtype or "auto"
        name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
        if name is None:
            raise TrsllavaError(f"unknown dtype '{dtype}' (use auto or one of {sorted(set(_DTYPES.values()))})")
        return getattr(torch, name)

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        if ids is None:
            ids = self.tokenizer.eos_token_id
        if ids is None:
            return set()
        return {int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids])}

    def revision(self) -> str | None:
        """The model's commit hash: the folder's config.json ``_commit_hash`` (hub snapshots), else
        what transformers recorded when loading; None for a plain local folder."""
        config_file = Path(self.model_id) / "config.json"
        if config_file.is_file():
            try:
                revision = json.loads(config_file.read_text()).get("_commit_hash")
            except (OSError, ValueError):
                revision = None
            if revision:
                return revision
        return getattr(self.model.config, "_commit_hash", None) or None

    def describe(self) -> dict:
        info = {
            "backend": self.name,
            "model_id": self.model_id,
            "model_revision": self.revision(),
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.device),
        }
        if self.processor_options:  # absent when unset: existing provenance and cache keys stay as they were
            info["processor_options"] = dict(self.processor_options)
        return info

    def _prompt(self, prompt_text: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt_text}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _sampling(self, n: int) -> dict:
        temperature = sampling_temperature(self.temperature, n)
        if temperature is None:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in request order. Requests are batched ``batch_size`` at a time
        (requests of a batch share ``n``; a change of ``n`` starts a new batch)."""
        import torch

        check_requests(requests)
        torch.manual_seed(self.seed)
        results: list[GenerationResult] = []
        start = 0
        while start < len(requests):
            batch = [requests[start]]
            if batch[0].seed is not None:
                # torch has one generator per process: a request with its own seed runs alone
                torch.manual_seed(batch[0].seed)
            else:
                while (start + len(batch) < len(requests) and len(batch) < self.batch_size
                       and requests[start + len(batch)].n == batch[0].n
                       and requests[start + len(batch)].seed is None):
                    batch.append(requests[start + len(batch)])
            results.extend(self._generate_batch(batch))
            start += len(batch)
        return results

    def _generate_batch(self, batch: list[GenerationRequest]) -> list[GenerationResult]:
        import torch

        n = batch[0].n
        images = [request.pixels(self.image_loader) for request in batch]
        prompts = [self._prompt(request.prompt_text) for request in batch]
        inputs = self.processor(images=images, text=prompts, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        prompt_length = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                num_return_sequences=n,
                pad_token_id=self.tokenizer.pad_token_id,
                **self._sampling(n),
            )
        new_tokens = output[:, prompt_length:].tolist()
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()

        results = []
        for index in range(len(batch)):
            texts, reasons, completion = [], [], 0
            for tokens in new_tokens[index * n:(index + 1) * n]:
                end = next((i for i, token in enumerate(tokens) if token in self.eos_ids), None)
                if end is None:
                    kept, reason = tokens, "length"
                    # rows are right-padded once every row of the batch has stopped; without an EOS
                    # this row ran to max_new_tokens, so it has no padding
                else:
                    kept, reason = tokens[:end], "stop"
                completion += len(kept) + (reason == "stop")  # the EOS counts, as in vLLM/OpenAI
                texts.append(self.tokenizer.decode(kept, skip_special_tokens=True).strip())
                reasons.append(reason)
            results.append(GenerationResult(texts=texts, finish_reasons=reasons,
                                            prompt_tokens=int(prompt_tokens[index]), completion_tokens=completion))
        return results
