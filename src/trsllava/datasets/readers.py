"""Annotation formats, each read into the same records: one per image entry of the file.

A record is ``{"filename", "split", "captions": [(caption_id or None, text or None), ...], "where",
"folder"}``: ``where`` locates the entry in the file for messages (``images[3]``, ``rows 4, 9``,
``airplane[12]``), ``folder`` is a sub-folder the image may sit in (NWPU's class), ``text`` None is
a caption given as null. Texts are kept as written: blank ones are found, reported and dropped by
``datasets.report``; the readers only check types, so that a malformed file fails with a
TrsllavaError naming the file and the entry, never with another exception.

  karpathy  {"images": [{"filename", "split", "sentences": [{"raw", "sentid"}, ...]}, ...]}: RSICD,
            RSITMD, UCM-Captions, Sydney-Captions (Karpathy's layout)
  generic   CSV / JSONL / JSON / parquet rows (filename, caption[, split]), several rows per image
  nwpu      {"<class>": [{"filename", "split", "raw", "raw_1" .. "raw_4", "sentids", "sentids_1" ..}, ...]}:
            NWPU-Captions (Cheng et al. 2022, 31,500 images of 45 classes)
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import TrsllavaError
from ..tables import read_records, require_columns
from ..textio import read_json, type_name

INT64_MAX = 2**63 - 1
NWPU_CAPTION_KEY = re.compile(r"^raw(?:_([0-9]{1,3}))?$")


def read_karpathy(path: Path, default_split: str) -> list[dict]:
    """Records of a Karpathy-style annotation file (see the module docstring)."""
    source = f"annotation file {path}"
    document = read_json(path, "annotation file")
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        keys = f" with keys {sorted(document)[:10]}" if isinstance(document, dict) else ""
        raise TrsllavaError(
            f"{source}: expected a Karpathy-style object with an 'images' list (found {type_name(document)}{keys})"
        )
    records = []
    for position, image in enumerate(document["images"]):
        where = f"images[{position}]"
        if not isinstance(image, dict):
            raise TrsllavaError(f"{source}: {where}: expected an object, found {type_name(image)}")
        for key in ("filename", "sentences"):
            if key not in image:
                raise TrsllavaError(f"{source}: {where}: missing key '{key}'")
        if not isinstance(image["sentences"], list):
            raise TrsllavaError(f"{source}: {where}.sentences: expected a list, found {type_name(image['sentences'])}")
        captions = []
        for index, sentence in enumerate(image["sentences"]):
            at = f"{where}.sentences[{index}]"
            if not isinstance(sentence, dict) or "raw" not in sentence:
                raise TrsllavaError(f"{source}: {at}: expected an object with a string 'raw'")
            captions.append((_caption_id(sentence.get("sentid"), source, f"{at}.sentid"),
                             _caption_text(sentence["raw"], source, f"{at}.raw")))
        records.append({
            "filename": _name(image["filename"], source, f"{where}.filename"),
            "split": _split(image.get("split"), default_split, source, f"{where}.split"),
            "captions": captions,
            "where": where,
            "folder": None,
        })
    return records


def read_nwpu(path: Path, default_split: str) -> list[dict]:
    """Records of an NWPU-Captions annotation file (``dataset_nwpu.json``): an object keyed by class,
    each class a list of images with ``filename``, ``split`` and the captions ``raw``, ``raw_1`` ..
    ``raw_4`` (ids from ``sentids``, ``sentids_1`` ..). The class is the image's folder."""
    source = f"annotation file {path}"
    document = read_json(path, "annotation file")
    if not isinstance(document, dict) or not document:
        raise TrsllavaError(
            f"{source}: expected an NWPU-Captions object keyed by class name, each a list of images (found {type_name(document)}"
            f"{' with no class' if isinstance(document, dict) else ''})"
        )
    records = []
    for class_name, images in document.items():
        if not isinstance(images, list):
            raise TrsllavaError(f"{source}: class '{class_name}': expected a list of images, found {type_name(images)}")
        for position, image in enumerate(images):
            where = f"{class_name}[{position}]"
            if not isinstance(image, dict):
                raise TrsllavaError(f"{source}: {where}: expected an object, found {type_name(image)}")
            if "filename" not in image:
                raise TrsllavaError(f"{source}: {where}: missing key 'filename'")
            keys = sorted((int(m.group(1) or 0), key) for key in image if (m := NWPU_CAPTION_KEY.match(key)))
            captions = []
            for number, key in keys:
                id_key = "sentids" if number == 0 else f"sentids_{number}"
                captions.append((_caption_id(image.get(id_key), source, f"{where}.{id_key}", lists=True),
                                 _caption_text(image[key], source, f"{where}.{key}")))
            records.append({
                "filename": _name(image["filename"], source, f"{where}.filename"),
                "split": _split(image.get("split"), default_split, source, f"{where}.split"),
                "captions": captions,
                "where": where,
                "folder": _folder(class_name, source),
            })
    return records


def read_generic(path: Path, default_split: str) -> list[dict]:
    """Records of a caption file of rows (filename, caption[, split]): every row is one caption of
    its image (caption id: the row's position in the file, from 0); a blank caption still lists
    the image."""
    records_in = read_records(path, "annotation file")
    require_columns(records_in, ["filename", "caption"])
    source = f"annotation file {path}"
    grouped: dict[tuple[str, str], dict] = {}
    for index, row in enumerate(records_in.rows):
        at = records_in.places[index]
        filename = _name(row.get("filename"), source, f"{at}: 'filename'")
        split = _split(row.get("split"), default_split, source, f"{at}: 'split'")
        text = _caption_text(row.get("caption"), source, f"{at}: 'caption'")
        record = grouped.get((filename, split))
        if record is None:
            record = grouped[(filename, split)] = {"filename": filename, "split": split, "captions": [], "where": [],
                                                   "folder": None}
        record["captions"].append((index, text))
        record["where"].append(at)
    records = list(grouped.values())
    for record in records:
        places = record["where"]
        record["where"] = ", ".join(places[:5]) + (f" and {len(places) - 5} more" if len(places) > 5 else "")
    return records


READERS = {"karpathy": read_karpathy, "builtin": read_karpathy, "generic": read_generic, "nwpu": read_nwpu}


# -- value checks ---------------------------------------------------------------------------------

def _name(value, source: str, where: str) -> str:
    if not isinstance(value, str):
        raise TrsllavaError(f"{source}: {where}: expected a file name (a string), found {type_name(value)}")
    name = value.strip()
    if not name:
        raise TrsllavaError(f"{source}: {where}: the file name is blank")
    if "\x00" in name:
        raise TrsllavaError(f"{source}: {where}: the file name contains a NUL character")
    return name


def _split(value, default: str, source: str, where: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if not isinstance(value, str):
        raise TrsllavaError(f"{source}: {where}: expected a split name (a string), found {type_name(value)}")
    return value.strip()


def _caption_text(value, source: str, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TrsllavaError(f"{source}: {where}: expected a caption (a string), found {type_name(value)}")


def _caption_id(value, source: str, where: str, lists: bool = False) -> int | None:
    """An integer caption id, or None when absent (ids are then numbered in file order).
    NWPU files may hold ``sentids`` as a one-element list."""
    if lists and isinstance(value, list) and len(value) == 1:
        value = value[0]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise TrsllavaError(f"{source}: {where}: expected an integer caption id, found {value!r:.60}")
    if not 0 <= value <= INT64_MAX:
        raise TrsllavaError(f"{source}: {where}: caption id {value!r:.60} is out of range (0 .. 2^63-1)")
    return int(value)


def _folder(class_name: str, source: str) -> str | None:
    """The class as a folder name; a class that is not a plain folder name is not looked for."""
    name = class_name.strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return None
    return name
