"""Zero-shot CLIP image-text retrieval: the baseline every caption-based pipeline is compared with.

A CLIP model embeds the gallery images and the human captions (unit-normalised, so inner product is
cosine similarity). Both are saved in the dense-representation format of the text encoders
(``texts.parquet`` + ``embeddings.npy``), so the evaluator scores them like any caption set: the
image side is a "caption set" with exactly one database item per image, keyed ``<image>ID``.

Models are Hugging Face CLIP checkpoints (``CLIPModel`` + ``AutoProcessor``): a hub id such as
``openai/clip-vit-base-patch32`` (downloaded once, like the VLM captioners) or a local folder in HF
format (``config.json``, weights, tokenizer and preprocessor files), or an open_clip ViT checkpoint
file (``.pt`` / ``.pth`` / ``.bin``: RemoteCLIP, GeoRSCLIP), converted on load by
``open_clip_convert`` with the CLIP tokenizer of the entry's ``tokenizer`` (default
``openai/clip-vit-base-patch32``, or a local folder).

Images are read by ``trsllava.images.load_rgb`` (the pixels every consumer gets). An image that
cannot be read gets no vector: it is listed with its reason in ``quality.json`` beside the
embeddings and ranks last (like an uncaptioned image); ``clip_evaluate`` refuses the model when
more than ``max_failure_share`` (default 5%) of the images failed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from ..atomic import write_json, write_npy
from ..encoders.base import save_texts
from ..encoders.dense import VECTORS_FILE, pick_device
from ..errors import TrsllavaError
from ..failures import DEFAULT_MAX_FAILURE_SHARE, failure_report
from ..images import ImageLoader

log = logging.getLogger(__name__)

IMAGE_KEY = "<image>"  # prefix of the database key of each image (its one "text")
IMAGES_DIR = "images"
REFERENCES_DIR = "references"
QUALITY_FILE = "quality.json"  # beside images/ and references/: the images that got no vector


def image_key(image_id: str) -> str:
    return f"{IMAGE_KEY}{image_id}"


def display_name(model_name: str) -> str:
    """The captioner column of a CLIP row: ``clip:<name>`` (file paths use the bare name)."""
    return f"clip:{model_name}"


def _is_hub_id(source: str) -> bool:
    return "/" in source and not Path(source).expanduser().exists() and not source.startswith((".", "/", "~"))


def load_clip(entry: dict, name: str = "clip"):
    """(model, processor, device) for a config entry ``{model, device}`` (open_clip files: also
    ``tokenizer``, ``activation``)."""
    import torch  # noqa: F401  (torch must be importable before transformers picks a backend)
    from transformers import AutoProcessor, CLIPModel

    from .open_clip_convert import DEFAULT_TOKENIZER, is_open_clip_checkpoint, load_open_clip_checkpoint

    source = str(entry["model"])
    path = Path(source).expanduser()
    if is_open_clip_checkpoint(source):
        device = pick_device(entry.get("device", "auto"))
        model, processor = load_open_clip_checkpoint(path, str(entry.get("tokenizer", DEFAULT_TOKENIZER)),
                                                     entry.get("activation", "gelu"))
        log.info("clip %s: converted open_clip checkpoint %s, on %s", name, source, device)
        return model.to(device).eval(), processor, device
    if not _is_hub_id(source) and not path.is_dir():
        raise TrsllavaError(
            f"config: baselines.clip.models.{name}.model is '{source}': not a folder (a local CLIP checkpoint in "
            "Hugging Face format), an open_clip checkpoint file (.pt, .pth, .bin) nor a hub id org/name"
        )
    device = pick_device(entry.get("device", "auto"))
    try:
        model = CLIPModel.from_pretrained(str(path) if path.is_dir() else source)
        processor = AutoProcessor.from_pretrained(str(path) if path.is_dir() else source)
    except OSError as exc:
        raise TrsllavaError(
            f"CLIP model '{source}' could not be loaded ({str(exc).splitlines()[0]}); without a model hub, give "
            f"baselines.clip.models.{name}.model a local folder in Hugging Face format"
        ) from exc
    model = model.to(device).eval()
    log.info("clip %s: loaded %s on %s", name, source, device)
    return model, processor, device


def _features(output):
    """transformers 4 returns the projected features, 5 an output whose pooler_output holds them."""
    import torch

    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def embed_images(model, processor, device: str, paths: list[str], batch_size: int = 32,
                 loader: ImageLoader | None = None) -> tuple[np.ndarray, list[dict]]:
    """(unit-normalised embeddings of the readable images, in order, one row each; failures
    ``[{"index", "path", "reason"}]`` of the images that could not be read, which get no row).
    Pixels come from ``loader`` (default ``ImageLoader()``), then the processor's resize and crop."""
    import torch

    loader = loader or ImageLoader()
    chunks, failures = [], []
    for start in tqdm(range(0, len(paths), batch_size), desc="CLIP images", unit="batch"):
        images = []
        for index in range(start, min(start + batch_size, len(paths))):
            try:
                images.append(loader.load(paths[index]))
            except TrsllavaError as error:  # missing, truncated, not an image: listed, no vector
                failures.append({"index": index, "path": paths[index], "reason": str(error)})
                log.warning("CLIP baseline: %s (no vector; the image ranks last)", error)
        if not images:
            continue
        inputs = processor(images=images, return_tensors="pt").to(device)
        with torch.inference_mode():
            chunks.append(_features(model.get_image_features(**inputs)).float().cpu().numpy())
    vectors = _normalise(np.concatenate(chunks)) if chunks else np.zeros((0, 0), dtype=np.float32)
    return vectors, failures


def embed_texts(model, processor, device: str, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Unit-normalised text embeddings; texts longer than the model's context are truncated."""
    import torch

    max_length = int(model.config.text_config.max_position_embeddings)
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="CLIP texts", unit="batch"):
        inputs = processor(
            text=texts[start : start + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        with torch.inference_mode():
            chunks.append(_features(model.get_text_features(**inputs)).float().cpu().numpy())
    return _normalise(np.concatenate(chunks)) if chunks else np.zeros((0, 0), dtype=np.float32)


def embed_dataset(name: str, entry: dict, images: pl.DataFrame, references: pl.DataFrame, out_dir: Path,
                  loader: ImageLoader | None = None) -> None:
    """Write ``out_dir/images`` (one vector per readable gallery image, keyed ``<image>ID``),
    ``out_dir/references`` (one vector per distinct human caption), both dense representations,
    and ``out_dir/quality.json`` (the images that could not be read, with their reasons)."""
    missing = images.filter(pl.col("path").is_null())["image_id"].to_list()
    if missing:
        raise TrsllavaError(
            f"the CLIP baseline needs the images: {len(missing)} gallery image(s) have no file (e.g. {missing[0]}); "
            "give the dataset an `images` folder"
        )
    model, processor, device = load_clip(entry, name)
    batch_size = int(entry.get("batch_size", 32))
    texts = references["text"].unique(maintain_order=True).to_list()
    log.info("clip %s: embedding %d images and %d distinct captions", name, images.height, len(texts))
    image_ids = images["image_id"].to_list()
    image_vectors, failures = embed_images(model, processor, device, images["path"].to_list(), batch_size, loader)
    failed = {failure["index"] for failure in failures}
    text_vectors = embed_texts(model, processor, device, texts, batch_size)
    dim = int(text_vectors.shape[1]) if text_vectors.size else int(image_vectors.shape[1])
    if not image_vectors.size:
        image_vectors = np.zeros((0, dim), dtype=np.float32)
    described = {"name": name, "type": "clip", **entry, "dim": dim}
    kept_keys = [image_key(i) for index, i in enumerate(image_ids) if index not in failed]
    for sub, keys, vectors in (
        (IMAGES_DIR, kept_keys, image_vectors),
        (REFERENCES_DIR, texts, text_vectors),
    ):
        directory = Path(out_dir) / sub
        directory.mkdir(parents=True, exist_ok=True)
        write_npy(vectors, directory / VECTORS_FILE)
        save_texts(keys, directory)
        write_json(described, directory / "encoder.json")
    report = failure_report({image_ids[f["index"]]: ("unreadable", f["reason"]) for f in failures}, len(image_ids),
                            float(entry.get("max_failure_share", DEFAULT_MAX_FAILURE_SHARE)))
    write_json({"model": name, **report}, Path(out_dir) / QUALITY_FILE)
