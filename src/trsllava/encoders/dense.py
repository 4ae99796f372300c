"""Dense encoders: unit-normalised embeddings scored by inner product (cosine).

``DenseRepresentation`` holds a query-role and a document-role matrix (the same array for a
symmetric encoder); ``SentenceTransformerEncoder`` is the sentence-transformers implementation of
``VectorEncoder``, asymmetric when given query and document prompts (encoders.prompts).

Token limit. A sentence-transformers model reads at most ``max_seq_length`` tokens of a text
(all-MiniLM-L6-v2: 256 word pieces, all-mpnet-base-v2: 384, special tokens included) and silently
drops the rest. ``token_counts`` measures that from the tokenizer alone (no model weights), the way
sentence-transformers prepares a text: the role prompt prepended, surrounding whitespace stripped,
lower-cased when the model says ``do_lower_case``.
"""

from __future__ import annotations

import json
import logging
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import TrsllavaError
from .base import ROLES, Representation, Role, TokenCounts, VectorEncoder, load_texts
from .prompts import role_prompts
from .store import ROLE_FILES, VECTORS_FILE
from .weights import ResolvedModel, resolve_identity

log = logging.getLogger(__name__)

# what the tokenizer and its limits need from a hub snapshot (never the weights)
TOKENIZER_FILES = ["*.json", "*.txt", "*.model", "*/sentence_bert_config.json", "*/tokenizer*", "*/vocab*", "*/special_tokens_map.json",
                   "*/*.model", "*/merges.txt"]
TOKENIZE_BATCH = 4096
UNBOUNDED = 10**9  # transformers' model_max_length of a tokenizer that states no limit is about 1e30


class DenseRepresentation(Representation):
    """Texts with their vectors: ``vectors`` (document role; also the query role unless
    ``query_vectors`` is given), float32 (len(texts), d), usually memory-mapped."""

    def __init__(self, texts: list[str], vectors: np.ndarray, query_vectors: np.ndarray | None = None):
        super().__init__(texts)
        self.document_vectors = vectors
        self.query_vectors = vectors if query_vectors is None else query_vectors

    @property
    def symmetric(self) -> bool:
        return self.query_vectors is self.document_vectors

    @property
    def vectors(self) -> np.ndarray:
        """The one matrix of a symmetric encoder; an asymmetric one has ``query_vectors`` and
        ``document_vectors`` instead, and asking for ``vectors`` is an error rather than a guess."""
        if not self.symmetric:
            raise TrsllavaError("this representation is of an asymmetric encoder: use query_vectors or document_vectors")
        return self.document_vectors

    def scores_against(self, documents: "DenseRepresentation", rows: np.ndarray) -> np.ndarray:
        """Inner products of self's query-role vectors ``rows`` with every document-role vector of
        ``documents``: float32 (len(rows), len(documents)); cosine similarities for unit vectors."""
        return np.asarray(self.query_vectors[rows], dtype=np.float32) @ np.asarray(documents.document_vectors, dtype=np.float32).T

    @classmethod
    def load(cls, directory: Path) -> "DenseRepresentation":
        """Memory-map ``embeddings.npy`` (symmetric) or ``embeddings.{query,document}.npy``."""
        directory = Path(directory)
        texts = load_texts(directory)
        if (directory / VECTORS_FILE).is_file():
            return cls(texts, np.load(directory / VECTORS_FILE, mmap_mode="r"))
        if all((directory / name).is_file() for name in ROLE_FILES.values()):
            return cls(texts, np.load(directory / ROLE_FILES["document"], mmap_mode="r"),
                       np.load(directory / ROLE_FILES["query"], mmap_mode="r"))
        raise TrsllavaError(f"{directory} holds no embeddings ({VECTORS_FILE}, or {' and '.join(ROLE_FILES.values())})")


def pick_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEncoder(VectorEncoder):
    """sentence-transformers models (MiniLM, mpnet, any local or hub model), unit-normalised."""

    kind = "sentence-transformers"

    def __init__(self, name: str, entry: dict):
        super().__init__(name, entry)
        self._model = None

    @cached_property
    def resolved(self) -> ResolvedModel:
        """The folder or hub id to load and the identity of its weights (resolved once)."""
        return resolve_identity(self.entry["model"], self.entry.get("revision"))

    @cached_property
    def prompts(self) -> dict[Role, str | None]:
        """Each role's prompt (config query_prompt/document_prompt or prompts; encoders.prompts)."""
        return role_prompts(self.name, self.entry, self.model_prompts)

    def prompt(self, role: Role) -> str | None:
        """The text prepended to every ``role`` text (None: no prompt; both None: symmetric)."""
        return self.prompts[role]

    def model_prompts(self) -> dict:
        """The ``prompts`` of the model's config_sentence_transformers.json (``prompts: model``), read
        without loading the model; an error when the model configures none."""
        source, filename = self.resolved.source, "config_sentence_transformers.json"
        try:
            if Path(source).is_dir():
                path = Path(source) / filename
                config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            else:
                from huggingface_hub import hf_hub_download

                config = json.loads(Path(hf_hub_download(source, filename, revision=self.resolved.revision)).read_text(encoding="utf-8"))
        except Exception as error:  # unreadable JSON, not in the hub cache offline, no such file on the hub
            raise TrsllavaError(f"config: encoders.{self.name}.prompts is 'model' but {filename} of {source} cannot be read "
                                f"({type(error).__name__}: {error})") from None
        prompts = config.get("prompts") or {}
        if not prompts:
            raise TrsllavaError(f"config: encoders.{self.name}.prompts is 'model' but {source} configures no prompts "
                                f"({filename}); give query_prompt/document_prompt")
        return prompts

    def fingerprint(self, role: Role) -> dict:
        return {
            "type": self.kind,
            **self.resolved.identity,  # model (hub id) and weights (sha256, folder hash or commit)
            "backend": self.entry.get("backend", "torch"),
            "dimensions": self.entry.get("dimensions"),  # None: the model's own
            "normalized": True,
            "prompt": self.prompt(role),
            "model_kwargs": self.entry.get("model_kwargs") or {},
        }

    @cached_property
    def _tokenizer_and_limit(self):
        """(tokenizer, token limit or None, do_lower_case) of the model's Transformer module, read
        from its folder (a hub id: its cached snapshot, tokenizer files only)."""
        from transformers import AutoTokenizer

        source = Path(self.resolved.source)
        if not source.is_dir():
            from huggingface_hub import snapshot_download

            source = Path(snapshot_download(self.resolved.source, revision=self.resolved.revision, allow_patterns=TOKENIZER_FILES))
        module = source / transformer_module_path(source)
        settings_file = module / "sentence_bert_config.json"
        settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
        tokenizer = AutoTokenizer.from_pretrained(str(module))
        limits = [int(n) for n in (settings.get("max_seq_length"), getattr(tokenizer, "model_max_length", None))
                  if n is not None and 0 < int(n) < UNBOUNDED]
        return tokenizer, (min(limits) if limits else None), bool(settings.get("do_lower_case", False))

    def token_counts(self, texts: list[str]) -> TokenCounts:
        """Limit: the model's ``max_seq_length`` (sentence_bert_config.json) capped by its tokenizer's
        ``model_max_length``. Lengths: tokens of prompt + text, special tokens included, the longest
        over the roles' prompts; int32 (len(texts),). Batch tokenization without truncation, the
        tokenizer only (the model is never loaded). A tokenizer that cannot be read gives unknown
        counts and a warning, not a failed merge."""
        try:
            tokenizer, limit, lower = self._tokenizer_and_limit
        except Exception as error:  # a hub id whose tokenizer is not cached, an unreadable folder
            log.warning("encoder %s: cannot read the tokenizer of %s (%s: %s); its token limit is not checked", self.name,
                        self.resolved.source, type(error).__name__, error)
            return TokenCounts()
        lengths = np.zeros(len(texts), dtype=np.int32)
        for prompt in dict.fromkeys(self.prompt(role) or "" for role in ROLES):
            for start in range(0, len(texts), TOKENIZE_BATCH):
                batch = [(prompt + text).strip() for text in texts[start:start + TOKENIZE_BATCH]]
                if lower:
                    batch = [text.lower() for text in batch]
                ids = tokenizer(batch, add_special_tokens=True, truncation=False, verbose=False,
                                return_attention_mask=False, return_token_type_ids=False)["input_ids"]
                chunk = np.fromiter((len(row) for row in ids), dtype=np.int32, count=len(ids))
                np.maximum(lengths[start:start + len(ids)], chunk, out=lengths[start:start + len(ids)])
        return TokenCounts(limit, lengths)

    def load_model(self):
        import torch
        from sentence_transformers import SentenceTransformer

        if self.entry.get("threads"):
            torch.set_num_threads(int(self.entry["threads"]))  # a job's share of the CPUs, not all of them
        resolved = self.resolved
        device = pick_device(self.entry.get("device", "auto"))
        backend = self.entry.get("backend", "torch")
        log.info("encoder %s: loading %s on %s (backend %s)", self.name, resolved.source, device, backend)
        kwargs = {"device": device, "backend": backend}
        if resolved.revision:
            kwargs["revision"] = resolved.revision
        if self.entry.get("model_kwargs"):
            kwargs["model_kwargs"] = self.entry["model_kwargs"]
        return SentenceTransformer(resolved.source, **kwargs)

    def encode(self, model, texts: list[str], progress: bool = True, prompt: str | None = None) -> np.ndarray:
        """``texts`` through a loaded ``model``: float32 (len(texts), d), unit-normalised."""
        vectors = model.encode(
            texts,
            batch_size=int(self.entry.get("batch_size", 64)),
            normalize_embeddings=True,  # cosine similarity as inner product, as FAISS IndexFlatIP expects
            truncate_dim=self.entry.get("dimensions"),  # truncated first, then normalised
            prompt=prompt,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed(self, texts: list[str], role: Role) -> np.ndarray:
        if self._model is None:
            self._model = self.load_model()
        return self.encode(self._model, texts, progress=False, prompt=self.prompt(role))

    def close(self) -> None:
        self._model = None


def transformer_module_path(folder: Path) -> str:
    """The sub-folder of a sentence-transformers model holding its Transformer module (usually the
    folder itself, "0_Transformer" in older models); "" for a plain transformers folder."""
    modules = folder / "modules.json"
    if not modules.is_file():
        return ""
    for module in json.loads(modules.read_text(encoding="utf-8")):
        if str(module.get("type", "")).rsplit(".", 1)[-1] == "Transformer":
            return str(module.get("path", ""))
    return ""
