"""BM25 through bm25s: the lexical baseline, expressed in the same block-scoring interface.

BM25 is not symmetric, so each side keeps its own index: a representation scores as documents
(``retriever``) and supplies its tokenised texts as queries.
"""

from __future__ import annotations

from pathlib import Path

import bm25s
import numpy as np

from ..atomic import write_json
from .base import ENCODER_FILE, Encoder, Representation, load_texts, save_texts

INDEX_DIR = "bm25"


class BM25Representation(Representation):
    def __init__(self, texts: list[str], retriever: bm25s.BM25, stopwords: str | None):
        super().__init__(texts)
        self.retriever = retriever
        self.stopwords = stopwords
        self._query_tokens = None

    def query_tokens(self) -> list[list[str]]:
        if self._query_tokens is None:
            self._query_tokens = bm25s.tokenize(self.texts, stopwords=self.stopwords, return_ids=False, show_progress=False)
        return self._query_tokens

    def scores_against(self, documents: "BM25Representation", rows: np.ndarray) -> np.ndarray:
        tokens = self.query_tokens()
        block = np.empty((len(rows), len(documents)), dtype=np.float32)
        for out, row in enumerate(rows):
            if not tokens[row]:  # a text of stopwords or punctuation only ("the", "."): it matches nothing
                block[out] = 0.0
                continue
            block[out] = documents.retriever.get_scores(tokens[row])  # unknown tokens score nothing
        return block

    @classmethod
    def load(cls, directory: Path, stopwords: str | None) -> "BM25Representation":
        return cls(load_texts(directory), bm25s.BM25.load(str(directory / INDEX_DIR)), stopwords)


class BM25Encoder(Encoder):
    kind = "bm25"

    @property
    def stopwords(self) -> str | None:
        return self.entry.get("stopwords", "en")

    def represent(self, texts: list[str], directory: Path) -> None:
        retriever = bm25s.BM25(k1=float(self.entry.get("k1", 1.5)), b=float(self.entry.get("b", 0.75)))
        retriever.index(bm25s.tokenize(texts, stopwords=self.stopwords, show_progress=False), show_progress=False)
        # bm25s writes several files into a folder; a rerun simply overwrites them, and Snakemake only
        # trusts the folder once the rule (which ends with texts.parquet) has finished.
        retriever.save(str(directory / INDEX_DIR))
        save_texts(texts, directory)
        write_json({**self.describe(), **self.token_counts(texts).metadata(len(texts))}, directory / ENCODER_FILE)
