"""Annotations as they really are: blank captions, irregular caption counts, duplicate file names.

Public copies of RS caption benchmarks have blank or whitespace-only captions (RSITMD copies), images
with fewer or more than five captions, and file names listed twice. None of it may silently reach
the numbers, so every gallery image's captions are sorted here into usable and blank, and what was
found is reported by image and count (the dataset report, ``report.json``, and the log):

  blank caption            null, or no letter or digit in it (empty, spaces, "\\u200b", "."): dropped;
                           it is never a text-to-image query nor a candidate of image-to-text
  no usable caption        an image whose captions are all blank stays in the gallery (a candidate of
                           text-to-image) but is no image-to-text query: a query needs at least one
                           relevant caption, which the evaluation asserts
  irregular count          an image with more or fewer usable captions than ``captions_per_image``
                           (the benchmarks' 5; null turns the check off): reported, used as they are
  duplicate file name      a file name listed twice: copies with the same split and the same captions
                           are one image (the later copies are dropped, and reported); copies that
                           differ in split or captions while both are in the gallery are an error
                           naming both entries, since no choice between them is safe
"""

from __future__ import annotations

import unicodedata
from collections import Counter

from ..errors import TrsllavaError

EXAMPLES = 5  # image names shown per log line


def has_words(text: str | None) -> bool:
    """True when ``text`` holds at least one letter or digit (Unicode categories L* and N*)."""
    return text is not None and any(unicodedata.category(char)[0] in "LN" for char in text)


def collapse_duplicates(records: list[dict], in_gallery, source: str) -> tuple[list[dict], dict]:
    """(records with identical copies of a file name dropped, duplicates report).

    ``in_gallery(record)`` says whether a record is in the gallery; two differing copies of one file
    name that are both in the gallery raise a TrsllavaError naming ``source`` and both entries."""
    first: dict[str, dict] = {}
    kept, duplicates = [], {}
    for record in records:
        name = record["filename"]
        if name not in first:
            first[name] = record
            kept.append(record)
            continue
        original = first[name]
        same = original["split"] == record["split"] and _texts(original) == _texts(record)
        entry = duplicates.setdefault(name, {"entries": [_describe(original)], "action": "dropped identical copies"})
        entry["entries"].append(_describe(record))
        if same:
            continue
        if in_gallery(original) and in_gallery(record):
            what = "splits" if original["split"] != record["split"] else "captions"
            raise TrsllavaError(
                f"{source}: file name {name!r} is listed twice with different {what} ({_describe(original)} and "
                f"{_describe(record)}); an image must be listed once: remove or rename one entry"
            )
        entry["action"] = "kept both: only one copy is in the gallery"
        kept.append(record)
    return kept, duplicates


def _texts(record: dict) -> list[str | None]:
    return [None if text is None else text.strip() for _, text in record["captions"]]


def _describe(record: dict) -> str:
    return f"{record['where']} (split {record['split']})"


def annotation_report(gallery: list[dict], split: str, expected: int | None) -> dict:
    """Counts and lists about the captions of the gallery ``records`` (see the module docstring).

    Sizes: ``blank_captions.by_image`` and ``irregular_caption_counts.by_image`` hold one entry per
    image concerned; ``usable_captions_per_image`` is a histogram (usable captions -> images)."""
    blank_by_image, irregular, without, histogram = {}, {}, [], Counter()
    listed = usable = t2i = i2t = 0
    for record in gallery:
        n_listed = len(record["captions"])
        n_usable = sum(has_words(text) for _, text in record["captions"])
        listed += n_listed
        usable += n_usable
        histogram[n_usable] += 1
        if n_usable < n_listed:
            blank_by_image[record["filename"]] = n_listed - n_usable
        if n_usable == 0:
            without.append(record["filename"])
        if expected is not None and n_usable != expected:
            irregular[record["filename"]] = {"listed": n_listed, "usable": n_usable}
        if record["split"] == split:
            t2i += n_usable
            i2t += n_usable > 0
    return {
        "gallery_images": len(gallery),
        "split_images": sum(r["split"] == split for r in gallery),
        "captions_listed": listed,
        "captions_usable": usable,
        "blank_captions": {"count": listed - usable, "images": len(blank_by_image), "by_image": blank_by_image},
        "images_without_usable_caption": without,
        "captions_per_image": expected,
        "irregular_caption_counts": {"count": len(irregular), "by_image": irregular},
        "usable_captions_per_image": {str(k): histogram[k] for k in sorted(histogram)},
        "queries": {"text_to_image": t2i, "image_to_text": i2t},
    }


def describe_report(report: dict) -> list[str]:
    """Warning lines for the log (empty when the annotations are clean)."""
    name, lines = report["dataset"], []
    blank = report["blank_captions"]
    if blank["count"]:
        examples = ", ".join(f"{image} ({count})" for image, count in list(blank["by_image"].items())[:EXAMPLES])
        lines.append(f"dataset {name}: {blank['count']} blank caption(s) in {blank['images']} image(s) dropped "
                     f"(never queries), e.g. {examples}")
    without = report["images_without_usable_caption"]
    if without:
        lines.append(f"dataset {name}: {len(without)} image(s) have no usable caption: they stay gallery images but are "
                     f"no image-to-text query, e.g. {', '.join(without[:EXAMPLES])}")
    irregular = report["irregular_caption_counts"]
    if irregular["count"]:
        examples = ", ".join(f"{image} ({c['usable']})" for image, c in list(irregular["by_image"].items())[:EXAMPLES])
        lines.append(f"dataset {name}: {irregular['count']} image(s) have other than {report['captions_per_image']} usable "
                     f"captions (used as they are), e.g. {examples}")
    for filename, entry in list(report["duplicate_filenames"].items())[:EXAMPLES]:
        lines.append(f"dataset {name}: file name {filename!r} is listed {len(entry['entries'])} times "
                     f"({'; '.join(entry['entries'][:3])}): {entry['action']}")
    if len(report["duplicate_filenames"]) > EXAMPLES:
        lines.append(f"dataset {name}: {len(report['duplicate_filenames'])} file names are listed more than once in all "
                     f"(see the dataset report)")
    if report.get("caption_ids") == "file order":
        lines.append(f"dataset {name}: caption ids are missing or repeated in {report['annotations']}; captions are "
                     f"numbered in file order instead")
    return lines
