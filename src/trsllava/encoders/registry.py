"""The encoder registry: config's ``encoders`` entries name a ``type`` from ENCODER_TYPES
(sentence-transformers, bm25, openai: any OpenAI-compatible embeddings server)."""

from __future__ import annotations

from pathlib import Path

from ..errors import TrsllavaError
from .api import OpenAIEmbeddingEncoder
from .base import Encoder, Representation, VectorEncoder
from .dense import DenseRepresentation, SentenceTransformerEncoder
from .lexical import BM25Encoder, BM25Representation

ENCODER_TYPES: dict[str, type[Encoder]] = {
    SentenceTransformerEncoder.kind: SentenceTransformerEncoder,
    BM25Encoder.kind: BM25Encoder,
    OpenAIEmbeddingEncoder.kind: OpenAIEmbeddingEncoder,
}


def build_encoder(name: str, entry: dict) -> Encoder:
    kind = entry.get("type")
    if kind not in ENCODER_TYPES:
        raise TrsllavaError(f"config: encoders.{name}.type is '{kind}'; known types: {sorted(ENCODER_TYPES)}")
    return ENCODER_TYPES[kind](name, entry)


def is_vector_encoder(entry: dict) -> bool:
    """Whether an encoder entry's type embeds texts one by one (cached per text, sharded)."""
    kind = entry.get("type")
    return kind in ENCODER_TYPES and issubclass(ENCODER_TYPES[kind], VectorEncoder)


def load_representation(name: str, entry: dict, directory: Path) -> Representation:
    encoder = build_encoder(name, entry)
    if isinstance(encoder, BM25Encoder):
        return BM25Representation.load(Path(directory), encoder.stopwords)
    return DenseRepresentation.load(Path(directory))
