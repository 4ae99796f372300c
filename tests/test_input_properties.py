"""Property-based tests (hypothesis) of the dataset loaders and the caption import reader: whatever the
file holds (random bytes, truncated JSON, wrong types, missing keys, byte-order marks, other
encodings, huge or blank fields), reading it either succeeds or fails with one TrsllavaError that
names the file, never with another exception."""

import csv
import io
import json
import tempfile
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from trsllava.captions.importer import import_captions
from trsllava.datasets import DatasetSpec, read_dataset
from trsllava.errors import TrsllavaError

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GALLERY = pl.DataFrame({"image_id": ["a.jpg", "b.jpg"], "filename": ["a.jpg", "b.jpg"], "split": "test", "path": None},
                       schema={"image_id": pl.String, "filename": pl.String, "split": pl.String, "path": pl.String})

# keys the readers look for, so that generated objects hit their checks and not only the "missing key" one
KEYS = ["images", "filename", "split", "sentences", "raw", "sentid", "raw_1", "raw_4", "sentids", "sentids_1", "caption",
        "text", "prompt", "variant", "field", "model", "image", "variants", "one_sentence", "feature",
        "one_sentence_caption", "feature_analysis", "airplane", "test", "train"]
TEXTS = st.one_of(
    st.sampled_from(["", " ", "\t\n", "\u200b", ".", "a.jpg", "b.jpg", "test", "train", "a road", "\ufeff", "\x00", "rsrt",
                     "x" * 100_000]),
    st.text(max_size=30),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), TEXTS)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                      max_leaves=10)
OBJECTS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)


def mostly(good, bad):
    """``good`` four times in five, else ``bad``: most generated files get far enough to load."""
    return st.integers(min_value=0, max_value=4).flatmap(lambda i: bad if i == 0 else good)


# well-shaped files (right keys and types; odd values: blank, NUL, BOM, very long texts, repeated names)
NAMES = st.sampled_from(["a.jpg", "b.jpg", " a.jpg ", "c.tif", "dir/d.png"])
SPLITS = st.sampled_from(["test", "test", "train", ""])
IDS = st.integers(min_value=0, max_value=30)


def karpathy_documents():
    sentence = st.fixed_dictionaries({"raw": st.one_of(TEXTS, st.none())}, optional={"sentid": IDS, "tokens": VALUES})
    image = st.fixed_dictionaries({"filename": NAMES, "sentences": st.lists(sentence, max_size=6)}, optional={"split": SPLITS})
    shaped = st.fixed_dictionaries({"images": st.lists(image, max_size=5)}, optional={"dataset": VALUES})
    # badly shaped: any key may hold any value
    bad_sentence = st.dictionaries(st.sampled_from(["raw", "sentid"]), VALUES, max_size=2)
    bad_image = st.dictionaries(st.sampled_from(["filename", "split", "sentences"]),
                                st.one_of(VALUES, st.lists(st.one_of(bad_sentence, VALUES), max_size=3)), max_size=3)
    return mostly(shaped, st.one_of(st.fixed_dictionaries({"images": st.lists(st.one_of(bad_image, VALUES), max_size=4)}), VALUES))


def nwpu_documents():
    image = st.fixed_dictionaries({"filename": NAMES, "raw": TEXTS},
                                  optional={"split": SPLITS, "raw_1": TEXTS, "raw_4": TEXTS, "raw_01": TEXTS, "sentids": IDS,
                                            "sentids_1": st.one_of(IDS, st.lists(IDS, max_size=2)), "imgid": VALUES})
    classes = st.sampled_from(["airplane", "beach", "", "..", "a/b"])
    shaped = st.dictionaries(classes, st.lists(image, max_size=4), min_size=1, max_size=3)
    bad_image = st.dictionaries(st.sampled_from(["filename", "split", "raw", "raw_2", "sentids"]), VALUES, max_size=4)
    return mostly(shaped, st.one_of(st.dictionaries(classes, st.one_of(st.lists(bad_image, max_size=3), VALUES), max_size=3), VALUES))


@st.composite
def encoded(draw, documents):
    """A generated document serialised as JSON, then (maybe) damaged as files in the wild are."""
    text = json.dumps(draw(documents), ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, 1])))
    return damage(draw, text)


@st.composite
def encoded_lines(draw, rows):
    lines = [json.dumps(row, ensure_ascii=draw(st.booleans())) if isinstance(row, dict) else row for row in draw(rows)]
    return damage(draw, "\n".join(lines) + "\n")


# "none" and "bom crlf" (files that should load) as often as the five kinds of damage together
DAMAGES = ("none",) * 3 + ("bom crlf",) * 2 + ("utf-16", "latin-1", "truncated", "junk inserted", "random bytes")


def damage(draw, text: str) -> bytes:
    """``text`` encoded as one of ``DAMAGES`` (a BOM and CRLF, UTF-16, Latin-1, cut, bytes inserted, noise)."""
    how = draw(st.sampled_from(DAMAGES))
    data = text.encode("utf-8", "surrogatepass")
    if how == "bom crlf":
        return b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8", "surrogatepass")
    if how == "utf-16":
        return text.encode("utf-16", "surrogatepass")
    if how == "latin-1":
        return text.encode("latin-1", "replace")
    if how == "truncated":
        return data[: draw(st.integers(min_value=0, max_value=len(data)))]
    if how == "junk inserted":
        at = draw(st.integers(min_value=0, max_value=len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if how == "random bytes":
        return draw(st.binary(max_size=200))
    return data


def json_rows():
    shaped = st.fixed_dictionaries({"filename": NAMES, "caption": TEXTS, "text": TEXTS},
                                   optional={"split": SPLITS, "variant": IDS, "prompt": st.sampled_from(["rsrt", "p", ""]),
                                             "field": st.sampled_from(["caption", None])})
    rsrt = st.fixed_dictionaries({"image": NAMES, "variants": st.lists(st.dictionaries(st.sampled_from(["one_sentence", "feature",
                                                                                                        "caption"]), TEXTS), max_size=3)},
                                 optional={"model": TEXTS})
    legacy = st.fixed_dictionaries({"image": NAMES, "one_sentence_caption": TEXTS, "feature_analysis": TEXTS, "caption": TEXTS})
    odd_lines = st.sampled_from(["", "[1, 2]", "null", "{", '{"filename": "a.jpg", "text": "\\ud83d"}'])
    good = st.one_of(st.lists(shaped, max_size=6), st.lists(rsrt, max_size=4), st.lists(legacy, max_size=6))
    return mostly(good, st.lists(st.one_of(OBJECTS, odd_lines), max_size=6))


CELLS = st.one_of(TEXTS, st.sampled_from(['"', '""', '"a,b"', "a\nb", "\r", ","]))
HEADERS = st.lists(st.sampled_from(["filename", "caption", "text", "split", "variant", "image", "one_sentence_caption",
                                    " text ", "", "filename"]), min_size=0, max_size=5)
SHAPED_HEADERS = st.sampled_from([["filename", "caption"], ["filename", "text"], ["filename", "caption", "text", "split"],
                                  [" filename", "text ", "variant"], ["image", "one_sentence_caption", "feature_analysis", "caption"]])


@st.composite
def csv_texts(draw):
    if draw(mostly(st.just(True), st.just(False))):  # a CSV writer's file with odd values
        header = draw(SHAPED_HEADERS)
        rows = draw(st.lists(st.lists(st.one_of(TEXTS, NAMES, st.integers(0, 5).map(str)), min_size=len(header),
                                      max_size=len(header)), max_size=5))
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([header] + rows)
        return damage(draw, buffer.getvalue())
    rows = [draw(HEADERS)] + draw(st.lists(st.lists(CELLS, max_size=6), max_size=5))
    return damage(draw, "\n".join(",".join(row) for row in rows))


def check(read, suffix: str, data: bytes) -> None:
    """``read(path)`` on ``data`` either returns or raises a TrsllavaError naming the file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"input{suffix}"
        path.write_bytes(data)
        try:
            read(path)
            event("read")
        except TrsllavaError as error:
            event("refused")
            message = str(error)
            assert str(path) in message or str(path.resolve()) in message, message
            assert "\n" not in message, message  # one line


def dataset(fmt):
    return lambda path: read_dataset(DatasetSpec.from_config("x", {"format": fmt, "annotations": str(path)}))


def importer(path):
    return import_captions(path, "c", GALLERY)


@SETTINGS
@given(encoded(karpathy_documents()))
def test_karpathy_loader(data):
    check(dataset("karpathy"), ".json", data)


@SETTINGS
@given(encoded(nwpu_documents()))
def test_nwpu_loader(data):
    check(dataset("nwpu"), ".json", data)


@SETTINGS
@given(encoded_lines(json_rows()))
def test_generic_loader_jsonl(data):
    check(dataset("generic"), ".jsonl", data)


@SETTINGS
@given(csv_texts())
def test_generic_loader_csv(data):
    check(dataset("generic"), ".csv", data)


@SETTINGS
@given(encoded_lines(json_rows()))
def test_import_reader_jsonl(data):
    check(importer, ".jsonl", data)


@SETTINGS
@given(csv_texts())
def test_import_reader_csv(data):
    check(importer, ".csv", data)


@SETTINGS
@given(st.one_of(encoded(json_rows()), encoded(VALUES)))
def test_import_reader_json(data):
    check(importer, ".json", data)


@SETTINGS
@given(st.lists(st.fixed_dictionaries({}, optional={"filename": VALUES, "text": VALUES, "caption": VALUES, "variant": VALUES,
                                                    "image": VALUES, "variants": VALUES, "one_sentence": VALUES}),
                min_size=1, max_size=5))
def test_import_reader_and_generic_loader_parquet(rows):
    try:  # rows polars cannot hold in one column (mixed types) make no parquet file: nothing to read
        frame = pl.DataFrame(rows, strict=False)
    except Exception:
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.parquet"
        try:
            frame.write_parquet(path)
        except Exception:
            return
        data = path.read_bytes()
    check(importer, ".parquet", data)
    check(dataset("generic"), ".parquet", data)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize("fmt", ["karpathy", "nwpu", "generic", "import"])
def test_empty_and_truncated_files(fmt, suffix):
    """The edge cases hypothesis would find first, pinned: empty, a lone BOM, one brace."""
    read = importer if fmt == "import" else dataset(fmt)
    for data in (b"", b"\xef\xbb\xbf", b"{", b"\xff\xfe", b"\r\n\r\n"):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"input{suffix}"
            path.write_bytes(data)
            with pytest.raises(TrsllavaError) as error:
                read(path)
            assert str(path) in str(error.value)
