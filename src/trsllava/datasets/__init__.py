"""Benchmark datasets normalised to two typed tables: images and human reference captions."""

from .load import BUILTIN_SAMPLE_DIR, DatasetSpec, load_dataset, read_dataset

__all__ = ["BUILTIN_SAMPLE_DIR", "DatasetSpec", "load_dataset", "read_dataset"]
