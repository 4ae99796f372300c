"""Reading the text files users hand to trsllava: one decoder behind every reader.

Annotation files, caption files, prompt files and configs come from many tools. Windows editors and
Excel's "CSV UTF-8" write a byte-order mark (BOM) and CRLF line ends; Notepad's "Unicode" is UTF-16
with a BOM. Every reader of such a file (Karpathy / NWPU JSON, generic and imported CSV / JSONL / JSON,
prompt YAML, the CLI's config) decodes it through ``read_text``, so that it reads exactly as its
plain UTF-8, LF twin does:

  - a BOM is removed and names the encoding (UTF-8, UTF-16 or UTF-32, either byte order);
    without a BOM the file must be UTF-8 (no guessing: Latin-1 and UTF-8 overlap, and a wrong
    guess would change caption texts silently);
  - CRLF and lone CR line ends become LF (also inside quoted CSV fields and YAML block scalars);
  - a file that does not decode (or, without a BOM, holds a NUL byte: UTF-16 saved without its
    mark, or a binary file) is one ``TrsllavaError`` line naming the file, the byte offset and the
    bytes found there.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Any

from .errors import TrsllavaError

# longest first: the UTF-32-LE mark begins with the UTF-16-LE one
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def decode(data: bytes, source: str) -> str:
    """Text of ``data`` (the bytes of ``source``, named in errors) with its BOM removed and LF line ends.

    Raises TrsllavaError "<source>: not valid <encoding> text at byte <offset> ..." when the bytes do
    not decode; the offset counts from the start of the file, BOM included."""
    encoding, skip = "utf-8", 0
    for mark, name in BOMS:
        if data.startswith(mark):
            encoding, skip = name, len(mark)
            break
    if not skip and b"\x00" in data:
        # no text format trsllava reads holds a NUL byte: this is UTF-16/32 without a BOM, or not text
        offset = data.index(b"\x00")
        raise TrsllavaError(
            f"{source}: not valid UTF-8 text at byte {offset} (a NUL byte: UTF-16 or UTF-32 without a byte-order mark, "
            "or not a text file): save it as UTF-8"
        )
    try:
        text = data[skip:].decode(encoding)
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        found = data[offset : offset + 4]
        hint = "" if skip else " (a file without a byte-order mark is read as UTF-8: save it as UTF-8)"
        raise TrsllavaError(
            f"{source}: not valid {encoding.upper()} text at byte {offset} (found {found!r}){hint}"
        ) from None
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def read_text(path: str | Path, what: str = "file") -> str:
    """The decoded text of the file at ``path`` (see ``decode``); errors start with "<what> <path>"."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TrsllavaError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise TrsllavaError(f"{what} {path}: cannot be read: {exc.strerror or exc}") from None
    return decode(data, f"{what} {path}")


def parse_json(text: str, source: str) -> Any:
    """``json.loads`` with errors as one TrsllavaError line naming ``source``, line and column.

    A string holding an unpaired UTF-16 surrogate escape (``"\\ud83d"``, half of an emoji cut by a
    tool) is refused too: it is not text, and no table could store it."""
    try:
        value = json.loads(text)
        if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(value):
            line = text.count("\n", 0, _SURROGATE_ESCAPE.search(text).start()) + 1
            raise TrsllavaError(f"{source}: a string holds an unpaired surrogate escape (near line {line}); "
                                "it is not valid text")
        return value
    except json.JSONDecodeError as exc:
        raise TrsllavaError(f"{source}: not readable as JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise TrsllavaError(f"{source}: not readable as JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise TrsllavaError(f"{source}: not readable as JSON: {exc}") from None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(value: Any) -> bool:
    """True when a string in ``value`` (or a key) holds a surrogate code point (json.loads leaves
    unpaired surrogate escapes as such). Iterative: a deep document must not exhaust the stack."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
    return False


def read_json(path: str | Path, what: str = "file") -> Any:
    """The JSON document in the file at ``path``, BOM and CRLF tolerated."""
    return parse_json(read_text(path, what), f"{what} {path}")


def read_jsonl(path: str | Path, what: str = "file") -> tuple[list[dict], list[int]]:
    """The objects of a JSON Lines file and their line numbers (1-based); blank lines are skipped.

    Raises TrsllavaError naming the file and line for a line that is not JSON or not an object."""
    rows, lines = [], []
    for number, line in enumerate(read_text(path, what).split("\n"), start=1):
        if not line.strip():
            continue
        value = parse_json(line, f"{what} {path}, line {number}")
        if not isinstance(value, dict):
            raise TrsllavaError(f"{what} {path}, line {number}: expected a JSON object, found {type_name(value)}")
        rows.append(value)
        lines.append(number)
    return rows, lines


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """The YAML document in the file at ``path`` (``yaml.safe_load``), BOM and CRLF tolerated."""
    import yaml

    try:
        return yaml.safe_load(read_text(path, what))
    except yaml.YAMLError as exc:
        raise TrsllavaError(f"{what} {path}: not valid YAML: {' '.join(str(exc).split())}") from None


def type_name(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
