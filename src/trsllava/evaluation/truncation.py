"""How many texts of an evaluation its encoder cut at its token limit: two columns of every metrics row.

A sentence-transformers encoder reads at most its limit of tokens of a text (MiniLM 256, mpnet 384)
and drops the rest; a joined RSRT text (three fields in one) often exceeds that, so the encoder never
sees its tail and two texts that differ only there embed identically. The recall of such a row is
right for what the encoder saw; these counts say how much it did not see:

  truncated_texts       distinct texts of the caption set over the limit (a caption-set fusion:
                        the sum over its member sets; an encoder fusion: the largest over its encoders)
  truncated_references  distinct human captions of the gallery over the limit (the text-to-image
                        queries and the image-to-text documents)

Both are null where the encoder has no limit (BM25) or its representation has no token lengths
(written before they were recorded), and for baselines (CLIP, the oracle).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..encoders.base import TokenCounts, load_token_counts
from .caption_sets import CaptionSetFusion

TRUNCATED_TEXTS = "truncated_texts"
TRUNCATED_REFERENCES = "truncated_references"
TRUNCATION_COLUMNS = (TRUNCATED_TEXTS, TRUNCATED_REFERENCES)

Truncation = dict[str, dict[str, int | None]]  # caption set label -> {column: count or None}


def stacked_token_counts(directories: Sequence[Path | None]) -> TokenCounts:
    """The token counts of representations stacked end to end (a StackedRepresentation's parts, in
    order); unknown when any part's are, or when the parts disagree on the limit."""
    parts = [load_token_counts(d) for d in directories if d is not None]
    limits = {part.limit for part in parts}
    if not parts or len(limits) != 1 or not all(part.known for part in parts):
        return TokenCounts(parts[0].limit if len(limits) == 1 and parts else None, None)
    return TokenCounts(parts[0].limit, np.concatenate([part.lengths for part in parts]))


def view_truncation(views: Sequence, generated: TokenCounts, references: TokenCounts, reference_rows: np.ndarray) -> Truncation:
    """Per caption set view (label), its distinct texts over the limit (``generated``: the counts of
    the rows its ``gen_idx`` index) and the distinct reference texts ``reference_rows`` (indexes into
    the reference representation) over the limit."""
    over_references = references.over(np.unique(reference_rows))
    return {view.label: {TRUNCATED_TEXTS: _over_texts(view, generated), TRUNCATED_REFERENCES: over_references}
            for view in views}


def _over_texts(view, generated: TokenCounts) -> int | None:
    if isinstance(view, CaptionSetFusion):
        counts = [_over_texts(member, generated) for member in view.members]
        return None if any(c is None for c in counts) else sum(counts)
    return generated.over(np.unique(view.gen_idx))


def fused_truncation(per_encoder: Sequence[Truncation]) -> Truncation:
    """An encoder fusion's counts: per caption set and column the largest over the encoders that
    have a limit (None when none has)."""
    fused: Truncation = {}
    for truncation in per_encoder:
        for label, columns in truncation.items():
            row = fused.setdefault(label, dict.fromkeys(TRUNCATION_COLUMNS))
            for column, value in columns.items():
                if value is not None:
                    row[column] = value if row[column] is None else max(row[column], value)
    return fused
