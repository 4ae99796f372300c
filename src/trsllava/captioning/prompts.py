"""The prompt registry: what a VLM is asked about each image, and how its answer is read.

Packaged prompts are YAML files in ``trsllava/data/prompts`` (one per prompt, the file named after
its id); ``config.yaml`` may add custom prompts under ``prompts:`` with the same keys, and a custom
prompt with a packaged id replaces it. Keys of an entry:

  id           optional inside an entry (the mapping key is the id); must match it when given
  description  free text (optional for custom prompts)
  text         the instruction given to the VLM with the image (required)
  output       ``text`` (default) or ``json``
  variants     how many samples to ask per image (n); default 1
  fields       json prompts: the output's fields, in database order; text prompts: null
  schema       json prompts: the JSON Schema each output must satisfy (derived from ``fields``
               when left out: an object of exactly those non-empty string fields)

``parse_output`` turns one raw answer into fields and a status (ok, empty, refused, invalid_json,
truncated); ``database_texts`` turns a parsed answer into (field, text) rows of the caption table;
``quality_report`` summarises the statuses of a whole generation run per prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Mapping

import jsonschema
import polars as pl

from ..errors import TrsllavaError
from ..textio import read_yaml

OUTPUTS = ("text", "json")
STATUSES = ("ok", "empty", "refused", "invalid_json", "truncated")
# jobs that produced no answer at all (captioning.shard): the image file could not become pixels,
# or the backend failed on the image alone; listed in the quality report beside the parse statuses
JOB_FAILURES = ("unreadable", "error")
REPORT_STATUSES = STATUSES + JOB_FAILURES
MODES = ("fields", "joined")
JOINED_FIELD = "joined"
KEYS = ("id", "description", "text", "output", "variants", "fields", "schema")
# prompt ids become caption-set labels ("<prompt>/<field>") and file names; "fused" is the label
# of the union of all prompts (evaluation.caption_sets.FUSED)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RESERVED_IDS = {"fused": "the label of all prompts fused", "images": "the image failures section of the quality report"}
DUPLICATE_EXAMPLES = 5


@dataclass(frozen=True)
class Prompt:
    id: str
    description: str
    text: str
    output: str  # "text" | "json"
    variants: int
    fields: tuple[str, ...] | None  # json prompts: output fields in database order; text: None
    schema: dict | None = field(default=None, hash=False, compare=True)
    hash: str = ""  # sha256 of the canonical JSON of text, output, schema and fields (16 hex chars)
    origin: str = "package"  # "package" or "config"

    @property
    def is_json(self) -> bool:
        return self.output == "json"


@dataclass(frozen=True)
class ParsedOutput:
    fields: dict[str | None, str]  # filled only when status == "ok"; {None: text} for text prompts
    status: str  # one of STATUSES
    detail: str | None = None  # why, for any status but ok

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ---------------------------------------------------------------------------------------- loading


def prompt_hash(text: str, output: str, schema: Mapping | None, fields) -> str:
    """First 16 hex characters of sha256 over a canonical JSON of what shapes the VLM's answer."""
    canonical = json.dumps(
        {"text": text, "output": output, "schema": schema, "fields": list(fields) if fields is not None else None},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _fail(prompt_id: str, key: str | None, message: str) -> TrsllavaError:
    where = f"prompts.{prompt_id}" + (f".{key}" if key else "")
    return TrsllavaError(f"{where}: {message}")


def _default_schema(fields: tuple[str, ...]) -> dict:
    return {
        "type": "object",
        "properties": {name: {"type": "string", "minLength": 1} for name in fields},
        "required": list(fields),
        "additionalProperties": False,
    }


def make_prompt(prompt_id: Any, entry: Any, origin: str = "config") -> Prompt:
    """Check one registry entry and return its Prompt. Errors name ``prompts.<id>.<key>``."""
    if not isinstance(prompt_id, str) or not NAME.match(prompt_id):
        raise _fail(prompt_id, None, "a prompt id is letters, digits, '_', '.' or '-' (starting with a letter or digit)")
    if prompt_id in RESERVED_IDS:
        raise _fail(prompt_id, None, f"'{prompt_id}' is reserved ({RESERVED_IDS[prompt_id]})")
    if not isinstance(entry, Mapping):
        raise _fail(prompt_id, None, f"expected a mapping of {list(KEYS)}, got {type(entry).__name__}")
    unknown = sorted(str(key) for key in entry if key not in KEYS)
    if unknown:
        raise _fail(prompt_id, unknown[0], f"unknown key (allowed: {', '.join(KEYS)})")

    if "id" in entry and entry["id"] != prompt_id:
        raise _fail(prompt_id, "id", f"'{entry['id']}' does not match the prompt's key '{prompt_id}'")

    text = entry.get("text")
    if text is None:
        raise _fail(prompt_id, "text", "required: the instruction given to the VLM with the image")
    if not isinstance(text, str) or not text.strip():
        raise _fail(prompt_id, "text", "must be a non-empty string")
    text = text.strip()

    description = entry.get("description") or ""
    if not isinstance(description, str):
        raise _fail(prompt_id, "description", "must be a string")

    output = entry.get("output", "text")
    if output not in OUTPUTS:
        raise _fail(prompt_id, "output", f"'{output}' is not one of {list(OUTPUTS)}")

    variants = entry.get("variants", 1)
    if isinstance(variants, bool) or not isinstance(variants, int) or variants < 1:
        raise _fail(prompt_id, "variants", f"must be a positive integer, got {variants!r}")

    fields = entry.get("fields")
    schema = entry.get("schema")
    if output == "text":
        if fields is not None:
            raise _fail(prompt_id, "fields", "a text prompt has no fields (set output: json for structured answers)")
        if schema is not None:
            raise _fail(prompt_id, "schema", "a text prompt has no schema (set output: json for structured answers)")
    else:
        if fields is None and isinstance(schema, Mapping) and isinstance(schema.get("required"), list):
            fields = schema["required"]
        if not isinstance(fields, list) or not fields:
            raise _fail(prompt_id, "fields", "a json prompt needs a non-empty list of field names")
        for name in fields:
            if not isinstance(name, str) or not NAME.match(name):
                raise _fail(prompt_id, "fields", f"field name {name!r} must be letters, digits, '_', '.' or '-'")
            if name == JOINED_FIELD:
                raise _fail(prompt_id, "fields", f"'{JOINED_FIELD}' is reserved for the joined database text")
        if len(set(fields)) != len(fields):
            raise _fail(prompt_id, "fields", f"duplicate field names in {fields}")
        fields = tuple(fields)
        if schema is None:
            schema = _default_schema(fields)
        if not isinstance(schema, Mapping):
            raise _fail(prompt_id, "schema", f"must be a JSON Schema mapping, got {type(schema).__name__}")
        schema = json.loads(json.dumps(schema))  # a plain, private copy (and proof it is JSON)
        try:
            jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise _fail(prompt_id, "schema", f"not a valid JSON Schema: {exc.message}") from exc
        properties = schema.get("properties")
        if isinstance(properties, Mapping):
            missing = [name for name in fields if name not in properties]
            if missing:
                raise _fail(prompt_id, "schema", f"fields {missing} are not among the schema's properties")

    return Prompt(
        id=prompt_id,
        description=description.strip(),
        text=text,
        output=output,
        variants=variants,
        fields=fields,
        schema=schema,
        hash=prompt_hash(text, output, schema, fields),
        origin=origin,
    )


def packaged_prompts() -> dict[str, Prompt]:
    """The prompts shipped in ``trsllava/data/prompts``, by id."""
    folder = resources.files("trsllava").joinpath("data", "prompts")
    prompts = {}
    for item in sorted(folder.iterdir(), key=lambda item: item.name):
        if not item.name.endswith((".yaml", ".yml")):
            continue
        prompt_id = item.name.rsplit(".", 1)[0]
        with resources.as_file(item) as path:
            entry = read_yaml(path, f"prompts.{prompt_id}: packaged prompt file")  # BOM and CRLF tolerated
        prompts[prompt_id] = make_prompt(prompt_id, entry, origin="package")
    return prompts


def load_prompts(custom: Mapping | None = None) -> dict[str, Prompt]:
    """The packaged prompts plus ``custom`` ones (config ``prompts:``, id -> entry), by id.

    A custom prompt with a packaged id replaces it entirely (its keys are not merged with the
    packaged entry, so ``output`` defaults to text again unless given)."""
    prompts = packaged_prompts()
    if custom is None:
        return prompts
    if not isinstance(custom, Mapping):
        raise TrsllavaError(f"prompts: expected a mapping of prompt id -> entry, got {type(custom).__name__}")
    for prompt_id, entry in custom.items():
        prompts[prompt_id] = make_prompt(prompt_id, entry, origin="config")
    return prompts


# ---------------------------------------------------------------------------------------- parsing

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_REFUSAL = re.compile(
    r"""^\W*(
        (i'?m|i\s+am)\s+(so\s+|very\s+|really\s+)?sorry
      | sorry\b
      | my\s+apologies | i\s+apologi[sz]e
      | i\s+(cannot|can't|can\s+not)\b
      | i\s+(won't|will\s+not)\s+(help|assist|provide|describe|analy[sz]e|identify|comply)
      | i'?m\s+(unable|not\s+able)|i\s+am\s+(unable|not\s+able)
      | i\s+must\s+decline | i\s+have\s+to\s+decline
      | as\s+an\s+ai\b | as\s+a\s+language\s+model | as\s+an\s+ai\s+language\s+model
      | unfortunately,?\s+i\s+(cannot|can't|can\s+not|am\s+unable|'m\s+unable|am\s+not\s+able)
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_MAX_OBJECT_STARTS = 50
_validators: dict[str, Any] = {}


def is_refusal(text: str) -> bool:
    """True when ``text`` opens with a common refusal phrasing (I'm sorry, I cannot, as an AI ...)."""
    return bool(_REFUSAL.match(text.translate(_APOSTROPHES)))


def extract_json_object(raw: str) -> dict | None:
    """The one JSON object in ``raw``, or None when there is none or the answer is ambiguous
    (two different objects; see ``json_objects``)."""
    objects = json_objects(raw)
    return objects[0] if len(objects) == 1 else None


def json_objects(raw: str) -> list[dict]:
    """The distinct JSON objects an answer offers, read as VLMs write it: the whole answer if it is
    one object; else the objects of its Markdown code fences (```json ... ```), if any decode;
    else every ``{...}`` that decodes with prose before, between and after. Strings may hold
    literal control characters (newlines, tabs: ``json.loads(strict=False)``, which Python's json
    module provides for exactly this). Repeats of one object count once; more than one distinct
    object means the answer is ambiguous (say an example, then the answer). Nothing is repaired:
    broken JSON (unbalanced, truncated, single-quoted) is no object."""
    text = raw.strip()
    decoder = json.JSONDecoder(strict=False)
    whole = _decode_object(text, decoder)
    if whole is not None:
        return [whole]
    fenced = [_decode_object(match.group(1).strip(), decoder) for match in _FENCE.finditer(text)]
    objects = [value for value in fenced if value is not None] or _top_level_objects(text, decoder)
    return list({json.dumps(value, sort_keys=True): value for value in objects}.values())


def _decode_object(text: str, decoder: json.JSONDecoder) -> dict | None:
    try:
        value = decoder.decode(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _top_level_objects(text: str, decoder: json.JSONDecoder) -> list[dict]:
    """Every JSON object that decodes at a ``{`` of ``text`` outside the objects already found,
    left to right (at most ``_MAX_OBJECT_STARTS`` failed starts, so a long prose answer stays cheap)."""
    found, failures = [], 0
    start = text.find("{")
    while start != -1 and failures < _MAX_OBJECT_STARTS:
        try:
            value, end = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            value, end = None, start + 1
        if isinstance(value, dict):
            found.append(value)
        else:
            failures += 1
            end = start + 1
        start = text.find("{", end)
    return found


def _validator(prompt: Prompt):
    key = prompt.hash
    if key not in _validators:
        cls = jsonschema.validators.validator_for(prompt.schema, default=jsonschema.Draft202012Validator)
        _validators[key] = cls(prompt.schema)
    return _validators[key]


def _shorten(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_output(prompt: Prompt, raw: str | None, finish_reason: str | None = None) -> ParsedOutput:
    """Read one raw VLM answer to ``prompt``.

    Status, checked in this order: ``truncated`` when the answer stopped at max_tokens
    (finish_reason "length", even if what came is empty or happens to parse); ``empty`` for a
    whitespace-only answer; for json prompts ``ok`` when a JSON object (whole answer, fenced, or
    surrounded by prose, literal newlines and tabs inside strings allowed; ``json_objects``)
    satisfies the schema and every field has text; ``refused`` when the
    answer opens with a refusal phrasing; else ``invalid_json`` (json prompts) or ``ok`` (text
    prompts, fields {None: the stripped answer})."""
    text = (raw or "").strip()
    if finish_reason == "length":
        what = "no text" if not text else f"{len(text)} characters, ending '{_shorten(text[-60:], 60)}'"
        # a free-text caption cut at max_tokens still describes the image: kept, and reported
        kept = {None: text} if text and not prompt.is_json else {}
        return ParsedOutput(kept, "truncated", f"stopped at max_tokens (finish_reason=length) after {what}")
    if not text:
        return ParsedOutput({}, "empty", "the answer is empty" + (" or whitespace only" if raw else ""))
    if not prompt.is_json:
        if is_refusal(text):
            return ParsedOutput({}, "refused", f"refusal: '{_shorten(text)}'")
        return ParsedOutput({None: text}, "ok")

    objects = json_objects(text)
    if len(objects) > 1:
        return ParsedOutput({}, "invalid_json", f"ambiguous: {len(objects)} different JSON objects in '{_shorten(text)}'")
    if not objects:
        if is_refusal(text):
            return ParsedOutput({}, "refused", f"refusal: '{_shorten(text)}'")
        return ParsedOutput({}, "invalid_json", f"no JSON object found in '{_shorten(text)}'")
    obj = objects[0]
    error = jsonschema.exceptions.best_match(_validator(prompt).iter_errors(obj))
    if error is not None:
        path = "/".join(str(part) for part in error.absolute_path)
        return ParsedOutput({}, "invalid_json", f"schema: {error.message}" + (f" (at {path})" if path else ""))
    fields: dict[str | None, str] = {}
    for name in prompt.fields:
        value = obj.get(name)
        if not isinstance(value, str):
            return ParsedOutput({}, "invalid_json", f"field '{name}' is not a string: {_shorten(repr(value))}")
        if not value.strip():
            return ParsedOutput({}, "invalid_json", f"field '{name}' is blank")
        fields[name] = value.strip()
    return ParsedOutput(fields, "ok")


def database_texts(prompt: Prompt, parsed: ParsedOutput, mode: str = "fields") -> list[tuple[str | None, str]]:
    """(field, text) rows of the caption table for one parsed answer: none for a failed answer
    (a free-text answer truncated at max_tokens is kept; its status stays in the quality report).

    ``fields``: each field alone, in the prompt's order (text prompts: one row, field None).
    ``joined``: a json prompt's fields joined in prompt order as one text with field "joined"
    (a full stop is added to a part that does not end a sentence); a text prompt's single text
    is unchanged (field None)."""
    if mode not in MODES:
        raise TrsllavaError(f"caption set mode '{mode}' is not one of {list(MODES)}")
    if not parsed.fields:
        return []
    if not prompt.is_json:
        return [(None, parsed.fields[None])]
    if mode == "fields":
        return [(name, parsed.fields[name]) for name in prompt.fields]
    return [(JOINED_FIELD, join_field_texts([parsed.fields[name] for name in prompt.fields]))]


def join_field_texts(parts: list[str]) -> str:
    """Field texts as one database text, in the given order: a full stop is added to a part that
    does not end a sentence; blank parts are left out."""
    out = []
    for part in (p.strip() for p in parts):
        if part:
            out.append(part if part[-1] in ".!?\"')" else part + ".")
    return " ".join(out)


# ----------------------------------------------------------------------------------------- report

QUALITY_COLUMNS = {
    "image_id": pl.String,
    "prompt": pl.String,
    "variant": pl.Int64,
    "status": pl.String,
    "detail": pl.String,
    "attempts": pl.Int64,
    "text": pl.String,
}


def quality_report(rows: pl.DataFrame) -> dict:
    """Per prompt: counts by status, retried outputs, exact duplicates and the failures by image.

    ``rows`` has one row per (image_id, prompt, variant) with columns image_id, prompt, variant,
    status, detail, attempts, text (text may be null). Duplicates are counted among the ok
    outputs: ``across_images`` are texts written for two or more different images (a sign of a
    generic or degenerate caption); ``within_image`` are variants of one image repeating another
    variant's text (sampling without diversity)."""
    missing = [name for name in QUALITY_COLUMNS if name not in rows.columns]
    if missing:
        raise TrsllavaError(f"quality report: missing column(s) {missing}; found {rows.columns}")
    try:
        rows = rows.select([pl.col(name).cast(dtype, strict=True) for name, dtype in QUALITY_COLUMNS.items()])
    except Exception as exc:  # polars raises several error types for bad casts
        raise TrsllavaError(f"quality report: columns cannot be read as {QUALITY_COLUMNS}: {exc}") from exc
    unknown = sorted(set(rows["status"].drop_nulls().to_list()) - set(REPORT_STATUSES))
    if unknown or rows["status"].null_count():
        raise TrsllavaError(f"quality report: unknown status(es) {unknown or [None]}; expected one of {list(REPORT_STATUSES)}")

    rows = rows.with_columns(
        pl.col("attempts").fill_null(1),
        pl.col("text").str.strip_chars(),
    )
    report = {}
    for prompt in sorted(rows["prompt"].unique().to_list(), key=lambda p: (p is None, p)):
        part = rows.filter(pl.col("prompt").is_null() if prompt is None else pl.col("prompt") == prompt)
        counts = dict(part.group_by("status").len().iter_rows())
        status = {name: int(counts.get(name, 0)) for name in REPORT_STATUSES}

        ok = part.filter((pl.col("status") == "ok") & pl.col("text").is_not_null() & (pl.col("text") != ""))
        shared = (
            ok.group_by("text")
            .agg(pl.col("image_id").unique().sort().alias("images"), pl.len().alias("rows"))
            .filter(pl.col("images").list.len() > 1)
            .sort(["rows", "text"], descending=[True, False])
        )
        repeated = (
            ok.group_by(["image_id", "text"]).len().filter(pl.col("len") > 1)
        )
        failures = (
            part.filter(pl.col("status") != "ok")
            .sort(["image_id", "variant"], nulls_last=True)
            .select("image_id", "variant", "status", "detail")
            .to_dicts()
        )
        report[prompt] = {
            "outputs": part.height,
            "images": part["image_id"].n_unique(),
            "status": status,
            "ok_rate": round(status["ok"] / part.height, 4) if part.height else None,
            "retried": int((part["attempts"] > 1).sum()),
            "retried_ok": int(((part["attempts"] > 1) & (part["status"] == "ok")).sum()),
            "duplicates": {
                "across_images": {
                    "texts": shared.height,
                    "rows": int(shared["rows"].sum()) if shared.height else 0,
                    "examples": [
                        {"text": r["text"], "images": r["images"][:10], "n_images": len(r["images"]), "rows": r["rows"]}
                        for r in shared.head(DUPLICATE_EXAMPLES).iter_rows(named=True)
                    ],
                },
                "within_image": int((repeated["len"] - 1).sum()) if repeated.height else 0,
            },
            "failures": failures,
        }
    return report
