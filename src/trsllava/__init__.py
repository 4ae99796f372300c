"""trsllava: training-free remote-sensing image retrieval by text-to-text matching of VLM captions."""

__version__ = "0.1.0"
