"""Build a captioning backend from a captioner's config entry; ``auto`` picks vLLM where it can run."""

from __future__ import annotations

import importlib.util
import logging

from ..errors import TrsllavaError

log = logging.getLogger(__name__)
GENERATING_BACKENDS = ("auto", "transformers", "vllm", "openai")


def sampling_of(entry: dict) -> dict:
    """The sampling parameters that enter the cache key and the provenance of every caption."""
    return {
        "max_tokens": int(entry.get("max_tokens", 512)),
        "temperature": float(entry.get("temperature", 0.7)),
        "seed": int(entry.get("seed", 0)),
    }


def choose_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    chosen = "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "transformers"
    log.info("captioning backend auto -> %s (CUDA %s, vllm %s)", chosen, torch.cuda.is_available(),
             "installed" if importlib.util.find_spec("vllm") else "not installed")
    return chosen


def make_backend(name: str, entry: dict, image_options=None):
    """The backend of captioner ``name`` (its config entry). ``image_options``: the config's
    ``images:`` settings (``trsllava.images.ImageOptions``) for requests that carry no pixels."""
    kind = choose_backend(entry["backend"])
    sampling = sampling_of(entry)
    model = entry.get("model")
    if not model:
        raise TrsllavaError(f"config: captioners.{name}.model is required for backend '{entry['backend']}'")
    if kind == "openai" and entry.get("processor_options"):
        raise TrsllavaError(f"config: captioners.{name}.processor_options: the openai backend cannot set them; "
                            "give them to the server (e.g. `vllm serve --mm-processor-kwargs '{...}'`)")
    try:
        if kind == "transformers":
            from .hf_backend import TransformersBackend

            return TransformersBackend(
                model, dtype=entry.get("dtype", "auto"), device=entry.get("device", "auto"),
                max_new_tokens=sampling["max_tokens"], temperature=sampling["temperature"], seed=sampling["seed"],
                batch_size=int(entry.get("batch_size", 4)), max_image_side=entry.get("max_image_side"),
                processor_options=entry.get("processor_options"), image_options=image_options,
            )
        if kind == "vllm":
            from .vllm_backend import VLLMBackend

            options = {k: entry[k] for k in ("dtype", "max_model_len", "max_num_seqs", "tensor_parallel_size",
                                              "limit_mm_per_prompt", "enforce_eager", "max_image_side", "processor_options")
                       if k in entry}
            return VLLMBackend(model, max_new_tokens=sampling["max_tokens"], temperature=sampling["temperature"],
                               seed=sampling["seed"], image_options=image_options, **options)
        if kind == "openai":
            from .openai_backend import OpenAIBackend

            options = {k: entry[k] for k in ("api_key_env", "concurrency", "retries", "timeout", "max_image_side")
                       if k in entry}
            return OpenAIBackend(entry["base_url"], model, max_tokens=sampling["max_tokens"],
                                 temperature=sampling["temperature"], seed=sampling["seed"], image_options=image_options,
                                 **options)
    except TrsllavaError as error:
        reason = str(error).strip().splitlines()[0].rstrip(".")  # one line: the loader's first sentence
        from .model_fetch import ways_out

        raise TrsllavaError(f"captioner '{name}': {reason}. {ways_out(name)}") from error
    raise TrsllavaError(f"config: captioners.{name}.backend '{kind}' is not one of {GENERATING_BACKENDS} or import")
