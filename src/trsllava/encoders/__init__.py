"""Text encoders: a registry of types (dense sentence-transformers, lexical BM25) built from config."""

from .registry import ENCODER_TYPES, Encoder, Representation, build_encoder, load_representation

__all__ = ["ENCODER_TYPES", "Encoder", "Representation", "build_encoder", "load_representation"]
