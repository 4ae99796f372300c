"""Dense sentence-transformers encoders: unit-normalised embeddings scored by inner product (cosine)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..atomic import write_json, write_npy
from .base import Encoder, Representation, load_texts, save_texts
from .weights import resolve_model

log = logging.getLogger(__name__)
VECTORS_FILE = "embeddings.npy"


class DenseRepresentation(Representation):
    def __init__(self, texts: list[str], vectors: np.ndarray):
        super().__init__(texts)
        self.vectors = vectors

    def scores_against(self, documents: "DenseRepresentation", rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors[rows], dtype=np.float32) @ np.asarray(documents.vectors, dtype=np.float32).T

    @classmethod
    def load(cls, directory: Path) -> "DenseRepresentation":
        return cls(load_texts(directory), np.load(directory / VECTORS_FILE, mmap_mode="r"))


def pick_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEncoder(Encoder):
    kind = "sentence-transformers"

    def load_model(self):
        from sentence_transformers import SentenceTransformer

        source = resolve_model(self.entry["model"])
        device = pick_device(self.entry.get("device", "auto"))
        backend = self.entry.get("backend", "torch")
        log.info("encoder %s: loading %s on %s (backend %s)", self.name, source, device, backend)
        kwargs = {"device": device, "backend": backend}
        if self.entry.get("model_kwargs"):
            kwargs["model_kwargs"] = self.entry["model_kwargs"]
        return SentenceTransformer(source, **kwargs)

    def encode(self, model, texts: list[str], progress: bool = True) -> np.ndarray:
        vectors = model.encode(
            texts,
            batch_size=int(self.entry.get("batch_size", 64)),
            normalize_embeddings=True,  # cosine similarity as inner product, as FAISS IndexFlatIP expects
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def represent(self, texts: list[str], directory: Path) -> None:
        model = self.load_model()
        vectors = self.encode(model, texts)
        write_npy(vectors, directory / VECTORS_FILE)
        save_texts(texts, directory)
        write_json({**self.describe(), "resolved_model": str(resolve_model(self.entry["model"])), "dim": vectors.shape[1] if vectors.ndim == 2 else 0}, directory / "encoder.json")
