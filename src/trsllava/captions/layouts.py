"""Caption file layouts, all read into flat rows (one text per row) for the caption table.

  flat         one row per text: ``filename``, ``text`` [, ``prompt``, ``variant``, ``field``, ``model``]
               (the caption table's own layout; any row format: JSONL, JSON, CSV, parquet)
  grouped      one record per image, as the TRSLLaVA authors release RSRT captions: ``image``,
               ``variants`` (a list of objects, e.g. 5 x {one_sentence, feature, caption}) [, ``model``]
  per-variant  one record per (image, variant), the authors' older layout: ``image`` and the fields
               ``one_sentence_caption``, ``feature_analysis``, ``caption`` (the newer names
               ``one_sentence``, ``feature`` are read too) [, ``variant``, ``model``]

In both RSRT layouts the prompt is ``rsrt`` unless a record names its ``prompt``; the variant is the
position in ``variants`` (grouped) or the record's order among the records of its image
(per-variant, unless it has a ``variant``); fields keep the RSRT names (``one_sentence_caption`` ->
``one_sentence``, ``feature_analysis`` -> ``feature``). The image key may also be ``filename`` or
``image_id``. A record's ``model`` is the caption's model id when the config gives none.

Every value is type-checked: a wrong type is a TrsllavaError naming the file, the line (or row)
and the key, never a text silently made of a number or an object.
"""

from __future__ import annotations

import math
import re

from ..errors import TrsllavaError
from ..tables import Records
from ..textio import type_name

RSRT_PROMPT = "rsrt"
RSRT_FIELDS = ("one_sentence", "feature", "caption")
FIELD_ALIASES = {"one_sentence_caption": "one_sentence", "feature_analysis": "feature"}
IMAGE_KEYS = ("image", "filename", "image_id")
COLUMNS = ("filename", "text", "prompt", "variant", "field", "model")
INT64_MAX = 2**63 - 1


def detect_layout(records: Records) -> str:
    """``flat``, ``grouped`` or ``per-variant`` (see the module docstring); a TrsllavaError naming the
    file and the columns found when it is none of them."""
    columns = records.columns
    if "filename" in columns and "text" in columns:
        return "flat"
    has_image = any(key in columns for key in IMAGE_KEYS)
    if has_image and "variants" in columns:
        return "grouped"
    # "caption" alone does not make an RSRT record (image, caption is a plain caption file misnamed)
    if has_image and any(name in columns for name in ("one_sentence", "feature", *FIELD_ALIASES)):
        return "per-variant"
    raise TrsllavaError(
        f"{records.what} {records.path}: missing column(s) ['filename', 'text']; found {columns}. Known layouts: "
        f"flat rows (filename, text), RSRT grouped by image (image, variants) or RSRT per variant "
        f"(image, one_sentence_caption, feature_analysis, caption)"
    )


def flat_rows(records: Records) -> tuple[dict[str, list], str]:
    """(columns ``COLUMNS`` as lists, layout name) of the texts in ``records``, in file order."""
    layout = detect_layout(records)
    out: dict[str, list] = {name: [] for name in COLUMNS}

    def add(filename, text, prompt, variant, field, model):
        for name, value in zip(COLUMNS, (filename, text, prompt, variant, field, model)):
            out[name].append(value)

    if layout == "flat":
        for index, row in enumerate(records.rows):
            add(_filename(records, index, row, "filename"), _text(records, index, row, "text"),
                _optional_str(records, index, row, "prompt"), _variant(records, index, row.get("variant")),
                _optional_str(records, index, row, "field"), _optional_str(records, index, row, "model"))
        return out, layout

    ordinal: dict[str, int] = {}
    for index, row in enumerate(records.rows):
        key = next((k for k in IMAGE_KEYS if k in row), None)
        if key is None:
            raise TrsllavaError(f"{records.at(index)}: no image key (one of {list(IMAGE_KEYS)})")
        filename = _filename(records, index, row, key)
        prompt = _optional_str(records, index, row, "prompt") or RSRT_PROMPT
        model = _optional_str(records, index, row, "model")
        if layout == "grouped":
            variants = row.get("variants")
            if not isinstance(variants, list):
                raise TrsllavaError(f"{records.at(index)}: 'variants' is {type_name(variants)}, expected an array of objects")
            for position, variant in enumerate(variants):
                if not isinstance(variant, dict):
                    raise TrsllavaError(
                        f"{records.at(index)}: variants[{position}] is {type_name(variant)}, expected an object of fields"
                    )
                for name in variant:
                    add(filename, _text(records, index, variant, name, f"variants[{position}]."), prompt, position,
                        FIELD_ALIASES.get(name, name), model)
        else:
            explicit = row.get("variant")
            number = _variant(records, index, explicit) if explicit is not None else ordinal.get(filename, 0)
            ordinal[filename] = ordinal.get(filename, 0) + 1
            for name in row:
                if name in RSRT_FIELDS or name in FIELD_ALIASES:
                    add(filename, _text(records, index, row, name), prompt, number, FIELD_ALIASES.get(name, name), model)
    return out, layout


def _filename(records: Records, index: int, row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str):
        raise TrsllavaError(f"{records.at(index)}: '{key}' is {type_name(value)}, expected a file name (a string)")
    if not value.strip():
        raise TrsllavaError(f"{records.at(index)}: '{key}' is blank")
    return value.strip()


def _text(records: Records, index: int, row: dict, key: str, prefix: str = "") -> str | None:
    """A caption text: a string, or null / missing (an empty text, dropped and counted later)."""
    value = row.get(key)
    if value is None or isinstance(value, str):
        return value
    raise TrsllavaError(f"{records.at(index)}: '{prefix}{key}' is {type_name(value)}, expected a caption text (a string)")


def _optional_str(records: Records, index: int, row: dict, key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TrsllavaError(f"{records.at(index)}: '{key}' is {type_name(value)}, expected a string")
    return value.strip() or None


def _variant(records: Records, index: int, value) -> int | None:
    """A variant index: an integer, an integer written as a string (CSV) or an integral float (parquet
    written from pandas), or null."""
    if value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and math.isnan(value)):
        return None
    number = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\+?[0-9]{1,19}\s*", value):
        number = int(value)
    if number is None or not 0 <= number <= INT64_MAX:
        raise TrsllavaError(f"{records.at(index)}: 'variant' is {value!r}, expected a non-negative integer")
    return number
