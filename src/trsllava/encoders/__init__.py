"""Text encoders: a registry of types (dense sentence-transformers, an OpenAI-compatible
embeddings API, lexical BM25) built from config."""

from .base import ROLES, Encoder, Representation, Role, VectorEncoder
from .registry import ENCODER_TYPES, build_encoder, is_vector_encoder, load_representation

__all__ = ["ENCODER_TYPES", "ROLES", "Encoder", "Representation", "Role", "VectorEncoder", "build_encoder",
           "is_vector_encoder", "load_representation"]
