"""Inputs as they really are (issue 10): blank captions, BOMs and CRLF, literal control characters in
VLM JSON, the TRSLLaVA authors' RSRT files, NWPU-Captions. Each case of tests/data/cases is one
example of a kind; the tests here try the kind, and check the right values by hand."""

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from trsllava.captioning.prompts import extract_json_object, load_prompts, parse_output
from trsllava.captions.importer import import_captions
from trsllava.datasets import DatasetSpec, load_dataset, read_dataset
from trsllava.datasets.report import describe_report, has_words
from trsllava.encoders.dense import DenseRepresentation
from trsllava.errors import TrsllavaError
from trsllava.evaluation.baselines import Oracle
from trsllava.evaluation.caption_sets import caption_set_views
from trsllava.evaluation.fusion import FusedProtocol, FusionSpec
from trsllava.evaluation.metrics import recalls
from trsllava.evaluation.protocol import Protocol, Settings, tie_counts
from trsllava.textio import decode, read_text, read_yaml

CASES = Path(__file__).parent / "data" / "cases"
SAMPLE = DatasetSpec.from_config("sample", {"format": "builtin"})


def karpathy_spec(path, **extra):
    return DatasetSpec.from_config("x", {"format": "karpathy", "annotations": str(path), **extra})


def write_karpathy(path, images):
    path.write_text(json.dumps({"images": [
        {"filename": name, "split": split, "sentences": [{"raw": raw, "sentid": sid} for sid, raw in sentences]}
        for name, split, sentences in images
    ]}))
    return path


# ---------------------------------------------------------------------------------- C01: annotations

def test_c01_blank_captions_are_dropped_reported_and_never_queries():
    images, references, report = read_dataset(karpathy_spec(CASES / "C01" / "dataset_c01.json"))
    # the gallery keeps all four test images: an image without a usable caption is still a candidate
    assert images["image_id"].to_list() == ["storagetanks_9001.tif", "viaduct_9002.tif", "tenniscourt_9003.tif",
                                            "harbor_9004.tif"]
    # 7 of the 20 captions are blank ("" or spaces): sentids 0-4 (storagetanks) and 6, 7 (viaduct)
    assert references.height == 13 and sorted(references["caption_id"]) == [5, 8, 9, *range(10, 20)]
    assert report["captions_listed"] == 20 and report["captions_usable"] == 13
    assert report["blank_captions"] == {"count": 7, "images": 2,
                                        "by_image": {"storagetanks_9001.tif": 5, "viaduct_9002.tif": 2}}
    assert report["images_without_usable_caption"] == ["storagetanks_9001.tif"]
    assert report["irregular_caption_counts"]["by_image"] == {"storagetanks_9001.tif": {"listed": 5, "usable": 0},
                                                              "viaduct_9002.tif": {"listed": 5, "usable": 3}}
    assert report["usable_captions_per_image"] == {"0": 1, "3": 1, "5": 2}
    assert report["queries"] == {"text_to_image": 13, "image_to_text": 3}
    lines = describe_report(report)
    assert any("7 blank caption(s) in 2 image(s)" in line and "storagetanks_9001.tif (5)" in line for line in lines)
    assert any("1 image(s) have no usable caption" in line and "storagetanks_9001.tif" in line for line in lines)


@pytest.mark.parametrize("text, usable", [
    ("", False), ("   ", False), ("\t\n", False), ("\u200b", False), ("\u00a0\u3000", False), (".", False), (" - ", False),
    (None, False), ("3", True), ("a", True), ("机场的跑道", True), (" an airport . ", True),
])
def test_a_blank_caption_has_no_letter_or_digit(text, usable):
    assert has_words(text) is usable


def test_blank_kinds_in_every_format(tmp_path):
    """null, empty, whitespace-only and zero-width captions in Karpathy, generic CSV / JSONL and
    NWPU files: the same drops and the same report."""
    captions = {"a.jpg": ["a road", None, "   "], "b.jpg": ["\u200b", ""], "c.jpg": ["a farm", "fields"]}
    write_karpathy(tmp_path / "k.json", [(name, "test", list(enumerate(texts, start=10 * i)))
                                         for i, (name, texts) in enumerate(captions.items())])
    rows = [{"filename": name, "caption": text} for name, texts in captions.items() for text in texts]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    pl.DataFrame(rows).write_csv(tmp_path / "g.csv")  # None becomes an empty field
    nwpu = {"scene": [{"filename": name, "split": "test", **{("raw" if j == 0 else f"raw_{j}"): t for j, t in enumerate(texts)}}
                      for name, texts in captions.items()]}
    (tmp_path / "n.json").write_text(json.dumps(nwpu))
    for fmt, file in (("karpathy", "k.json"), ("generic", "g.jsonl"), ("generic", "g.csv"), ("nwpu", "n.json")):
        spec = DatasetSpec.from_config("x", {"format": fmt, "annotations": str(tmp_path / file), "captions_per_image": 2})
        images, references, report = read_dataset(spec)
        assert images["image_id"].to_list() == ["a.jpg", "b.jpg", "c.jpg"], file
        assert references["text"].to_list() == ["a road", "a farm", "fields"], file
        assert report["blank_captions"]["by_image"] == {"a.jpg": 2, "b.jpg": 2}, file
        assert report["images_without_usable_caption"] == ["b.jpg"], file
        assert report["irregular_caption_counts"]["by_image"] == {"a.jpg": {"listed": 3, "usable": 1},
                                                                  "b.jpg": {"listed": 2, "usable": 0}}, file
        assert report["queries"] == {"text_to_image": 3, "image_to_text": 2}, file


def test_caption_count_check_follows_the_config(tmp_path):
    path = write_karpathy(tmp_path / "k.json", [("a.jpg", "test", [(0, "one")]), ("b.jpg", "test", [(1, "x"), (2, "y")])])
    assert read_dataset(karpathy_spec(path))[2]["irregular_caption_counts"]["count"] == 2  # default: 5 expected
    assert read_dataset(karpathy_spec(path, captions_per_image=2))[2]["irregular_caption_counts"]["by_image"] == {
        "a.jpg": {"listed": 1, "usable": 1}}
    report = read_dataset(karpathy_spec(path, captions_per_image=None))[2]
    assert report["irregular_caption_counts"]["count"] == 0 and describe_report(report) == []
    sample_report = read_dataset(SAMPLE)[2]
    assert describe_report(sample_report) == [] and sample_report["queries"] == {"text_to_image": 300, "image_to_text": 60}


def test_a_split_without_a_usable_caption_is_an_error(tmp_path):
    path = write_karpathy(tmp_path / "k.json", [("a.jpg", "test", [(0, " "), (1, "")]), ("b.jpg", "train", [(2, "x")])])
    with pytest.raises(TrsllavaError, match=rf"no usable caption in split 'test' of {path} \(1 image\(s\), 2 caption\(s\), none with a letter or digit\)"):
        load_dataset(karpathy_spec(path))


def test_duplicate_file_names(tmp_path):
    """Identical copies are one image (reported); copies that differ are an error naming both entries,
    unless only one of them is in the gallery."""
    same = write_karpathy(tmp_path / "same.json", [("a.jpg", "test", [(0, "a road")]), ("b.jpg", "test", [(1, "b")]),
                                                    ("a.jpg", "test", [(2, " a road ")])])
    images, references, report = read_dataset(karpathy_spec(same))
    assert images["image_id"].to_list() == ["a.jpg", "b.jpg"] and references["caption_id"].to_list() == [0, 1]
    assert report["duplicate_filenames"] == {"a.jpg": {"entries": ["images[0] (split test)", "images[2] (split test)"],
                                                       "action": "dropped identical copies"}}
    assert any("'a.jpg' is listed 2 times" in line for line in describe_report(report))

    differ = write_karpathy(tmp_path / "differ.json", [("a.jpg", "test", [(0, "a road")]), ("a.jpg", "test", [(1, "a river")])])
    with pytest.raises(TrsllavaError, match=r"file name 'a.jpg' is listed twice with different captions "
                                            r"\(images\[0\] \(split test\) and images\[1\] \(split test\)\)") as error:
        load_dataset(karpathy_spec(differ))
    assert str(differ) in str(error.value)

    splits = write_karpathy(tmp_path / "splits.json", [("a.jpg", "train", [(0, "a road")]), ("a.jpg", "test", [(1, "a river")])])
    images, references, report = read_dataset(karpathy_spec(splits))
    assert references["text"].to_list() == ["a river"]
    assert report["duplicate_filenames"]["a.jpg"]["action"] == "kept both: only one copy is in the gallery"
    with pytest.raises(TrsllavaError, match="listed twice with different splits"):
        load_dataset(karpathy_spec(splits, gallery="all"))


def test_repeated_or_missing_caption_ids_are_numbered_in_file_order(tmp_path):
    path = write_karpathy(tmp_path / "k.json", [("a.jpg", "test", [(7, "x"), (7, "y")]), ("b.jpg", "test", [(None, "z")])])
    _, references, report = read_dataset(karpathy_spec(path))
    assert references["caption_id"].to_list() == [0, 1, 2] and report["caption_ids"] == "file order"


# --------------------------------------------------------------- C01: the evaluation's query invariant

GALLERY = pl.DataFrame({"image_id": ["A", "B", "C"], "filename": ["A", "B", "C"], "split": "test", "path": None},
                       schema={"image_id": pl.String, "filename": pl.String, "split": pl.String, "path": pl.String})
# A has two usable captions, B one, C none (all of C's were blank and dropped by the loader)
REFERENCES = pl.DataFrame({"caption_id": [0, 1, 2], "image_id": ["A", "A", "B"], "text": ["a1", "a2", "b1"]})
REF_VECTORS = {"a1": [1.0, 0.0], "a2": [0.8, 0.6], "b1": [0.0, 1.0]}


def rep(table):
    return DenseRepresentation(list(table), np.array(list(table.values()), dtype=np.float32))


def test_protocol_queries_only_images_with_a_reference_by_hand():
    generated = {"gA": [1.0, 0.0], "gB": [0.0, 1.0], "gC": [0.6, 0.8]}
    captions = pl.DataFrame({"image_id": ["A", "B", "C"], "prompt": "p", "variant": None, "field": None,
                             "text": ["gA", "gB", "gC"]}, schema_overrides={"variant": pl.Int64, "field": pl.String})
    protocol = Protocol(GALLERY, REFERENCES, "test", rep(REF_VECTORS), rep(generated), Settings(aggregations=("max",), progress=False))
    assert [protocol.image_ids[i] for i in protocol.query_images] == ["A", "B"]  # C has no caption to find
    views = [protocol.view(label, rows) for label, rows in caption_set_views(captions)]
    stats = pl.concat([protocol.text_to_image(views), protocol.image_to_text(views)])
    counts = {(d, q): (a, o, r) for d, q, a, o, r in stats.select("direction", "query", "above", "tied_other", "tied_relevant").rows()}
    # t2i: a1 -> A 1, C .6, B 0; a2 -> C .96 above A .8; b1 -> B 1, C .8, A 0 (C is a candidate all along)
    # i2t: gA ranks a1 1, a2 .8, b1 0 (own caption first); gB ranks b1 1, a2 .6, a1 0
    assert counts == {("t2i", "0"): (0, 0, 1), ("t2i", "1"): (1, 0, 1), ("t2i", "2"): (0, 0, 1),
                      ("i2t", "A"): (0, 0, 1), ("i2t", "B"): (0, 0, 1)}
    values = recalls(stats)
    assert values["t2i_r1"] == pytest.approx(200 / 3) and values["i2t_r1"] == pytest.approx(100.0)  # not 66.67: C is no query
    fused = FusedProtocol([protocol, protocol], FusionSpec("self", ("x", "x"), (1.0, 1.0)))
    assert fused.image_to_text([views, views])["query"].to_list() == ["A", "B"]


def test_a_query_without_a_relevant_item_is_an_error_never_a_miss():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    relevant = np.array([[True, False, False], [False, False, False]])
    with pytest.raises(AssertionError, match=r"1 of 2 queries have no relevant item \(e.g. storagetanks_9001.tif\)"):
        tie_counts(scores, relevant, 1e-6, np.array(["viaduct_9002.tif", "storagetanks_9001.tif"]))
    above, tied_other, tied_relevant = tie_counts(scores[:1], relevant[:1], 1e-6)
    assert (above[0], tied_other[0], tied_relevant[0]) == (0, 0, 1)


def test_oracle_with_partly_blank_captions_by_hand():
    """Leave-one-out over the usable captions only: A keeps a1, a2; B keeps b1 alone; C has none."""
    for leave_out in ("caption", "text"):
        oracle = Oracle(GALLERY, REFERENCES, "test", rep(REF_VECTORS), Settings(aggregations=("max", "mean"), progress=False), leave_out)
        stats = pl.concat([oracle.text_to_image(), oracle.image_to_text()])
        for aggregation in ("max", "mean"):
            part = stats.filter(pl.col("aggregation") == aggregation)
            counts = {(d, q): (a, o, r) for d, q, a, o, r in part.select("direction", "query", "above", "tied_other", "tied_relevant").rows()}
            # t2i a1: A by {a2} .8, B by {b1} 0, C nothing (-inf); a2: A by {a1} .8, B .6;
            # b1: B by {} (-inf, tied with C), A by {a1, a2} (max .6, mean .3) above
            # i2t A: a1 and a2 each by the other (.8), b1 by {a1, a2} (.6 / .3); B: b1 by {} -inf, a1 0, a2 .6
            assert counts == {("t2i", "0"): (0, 0, 1), ("t2i", "1"): (0, 0, 1), ("t2i", "2"): (1, 1, 1),
                              ("i2t", "A"): (0, 0, 2), ("i2t", "B"): (2, 0, 1)}, (leave_out, aggregation)
            values = recalls(part)
            assert values["t2i_r1"] == pytest.approx(200 / 3) and values["t2i_r5"] == pytest.approx(100.0)
            assert values["i2t_r1"] == pytest.approx(50.0) and values["i2t_r5"] == pytest.approx(100.0)
            assert values["mR"] == pytest.approx((50 + 100 + 100 + 200 / 3 + 100 + 100) / 6)


# ------------------------------------------------------------------------------ C03: BOM and CRLF

def bom_variants(plain: bytes) -> dict[str, bytes]:
    text = plain.decode("utf-8")
    crlf = text.replace("\n", "\r\n")
    return {"utf-8": plain, "utf-8 bom": b"\xef\xbb\xbf" + plain, "crlf": crlf.encode(),
            "bom crlf": b"\xef\xbb\xbf" + crlf.encode(), "cr": text.replace("\n", "\r").encode(),
            "utf-16 bom": text.encode("utf-16"), "utf-16-be bom crlf": b"\xfe\xff" + crlf.encode("utf-16-be")}


def test_c03_case_files_read_the_same_with_and_without_bom():
    tables = []
    for fmt, file in (("karpathy", "dataset_c03.json"), ("karpathy", "dataset_c03_bom.json"),
                      ("generic", "generic_c03.jsonl"), ("generic", "generic_c03_bom.jsonl")):
        images, references, _ = read_dataset(DatasetSpec.from_config("c03", {"format": fmt, "annotations": str(CASES / "C03" / file)}))
        tables.append((images.drop("path"), references))
    for other in tables[1:]:
        assert other[0].equals(tables[0][0]) and other[1].equals(tables[0][1])
    captions = [import_captions(CASES / "C03" / file, "c", tables[0][0])[0].drop("source")
                for file in ("captions_c03.jsonl", "captions_c03_bom.jsonl", "captions_c03_bom.csv")]
    assert captions[0].height == 3
    for other in captions[1:]:
        assert other.equals(captions[0])


@pytest.mark.parametrize("variant", list(bom_variants(b"x")))
def test_every_reader_accepts_boms_and_line_ends(tmp_path, variant):
    karpathy = json.dumps({"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": "a road", "sentid": 0}]}]},
                          indent=1).encode()
    nwpu = json.dumps({"road": [{"filename": "a.jpg", "split": "test", "raw": "a road", "raw_1": "a lane"}]}, indent=1).encode()
    files = {
        "k.json": ("karpathy", karpathy), "n.json": ("nwpu", nwpu),
        "g.jsonl": ("generic", b'{"filename": "a.jpg", "caption": "a road"}\n{"filename": "a.jpg", "caption": "a lane"}\n'),
        "g.csv": ("generic", b'filename,caption\na.jpg,"a road"\na.jpg,a lane\n'),
    }
    for name, (fmt, plain) in files.items():
        (tmp_path / name).write_bytes(bom_variants(plain)[variant])
        images, references, _ = read_dataset(DatasetSpec.from_config("x", {"format": fmt, "annotations": str(tmp_path / name)}))
        assert images["image_id"].to_list() == ["a.jpg"], name
        assert references["text"].to_list() == (["a road"] if fmt == "karpathy" else ["a road", "a lane"]), name
    for name, plain in {"c.jsonl": b'{"filename": "a.jpg", "text": "a multi\\nline text"}\n',
                        "c.csv": b'filename,text\na.jpg,"a multi\nline text"\n',
                        "c.json": b'[{"filename": "a.jpg", "text": "a multi\\nline text"}]'}.items():
        (tmp_path / name).write_bytes(bom_variants(plain)[variant])
        table, _ = import_captions(tmp_path / name, "c", images)
        assert table["text"].to_list() == ["a multi\nline text"], name
    (tmp_path / "config.yaml").write_bytes(bom_variants(b"results: out\nprompts:\n  p:\n    text: |\n      two\n      lines\n")[variant])
    assert read_yaml(tmp_path / "config.yaml", "config") == {"results": "out", "prompts": {"p": {"text": "two\nlines\n"}}}


@pytest.mark.parametrize("suffix, fmt", [(".json", "karpathy"), (".json", "nwpu"), (".jsonl", "generic"), (".csv", "generic")])
def test_an_undecodable_file_is_one_line_with_the_byte_offset(tmp_path, suffix, fmt):
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(b"filename,caption\na.jpg,caf\xe9 by the road\n")  # Latin-1: byte 26 is not UTF-8
    with pytest.raises(TrsllavaError) as error:
        load_dataset(DatasetSpec.from_config("x", {"format": fmt, "annotations": str(path)}))
    message = str(error.value)
    assert message == (f"annotation file {path}: not valid UTF-8 text at byte 26 (found b'\\xe9 by') "
                       "(a file without a byte-order mark is read as UTF-8: save it as UTF-8)")
    assert "\n" not in message
    path.write_bytes(b"\xef\xbb\xbf" + b"a" * 10 + b"\xff")
    with pytest.raises(TrsllavaError, match=r"not valid UTF-8 text at byte 13 \(found b'\\xff'\)$"):
        read_text(path, "annotation file")


def test_utf16_without_a_bom_is_named_not_misread():
    with pytest.raises(TrsllavaError, match=r"^f: not valid UTF-8 text at byte 1 \(a NUL byte: UTF-16 or UTF-32 without a byte-order mark"):
        decode('{"images": []}'.encode("utf-16-le"), "f")


def test_decode_names_the_encoding_of_a_bom():
    assert decode("\ufeffa\r\nb\rc".encode("utf-8"), "f") == "a\nb\nc"
    assert decode("ä\r\n".encode("utf-32"), "f") == "ä\n"
    with pytest.raises(TrsllavaError, match=r"^f: not valid UTF-16-LE text at byte 4"):
        decode(b"\xff\xfea\x00\x00\xd8", "f")  # a BOM, 'a', then a lone high surrogate


# ------------------------------------------------------------------- C07: VLM output as it really is

@pytest.fixture(scope="module")
def rsrt():
    return load_prompts()["rsrt"]


CAPTION = "The image shows a dense residential area.\nA straight grey road crosses it from west to east."


def test_c07_every_answer_parses_with_the_three_fields(rsrt):
    answers = [json.loads(line) for line in (CASES / "C07" / "raw_outputs.jsonl").read_text().splitlines()]
    assert len(answers) == 5
    for answer in answers:
        parsed = parse_output(rsrt, answer["raw"], "stop")
        assert parsed.status == "ok", (answer["id"], parsed.detail)
        assert list(parsed.fields) == ["one_sentence", "feature", "caption"]
        assert parsed.fields["one_sentence"] == "A dense residential area crossed by a straight road."
        assert parsed.fields["caption"].startswith("The image shows a dense residential area.")
        assert parsed.fields["caption"].endswith("line both sides of the road.")


@pytest.mark.parametrize("control", ["\n", "\r\n", "\t", "\r", "\x0c", "\x0b", "\x00", "\x1f"])
@pytest.mark.parametrize("wrap", ["{}", "```json\n{}\n```", "```JSON {} ```", "Sure! Here it is:\n{}\nHope this helps.",
                                  "```\n{}\n```\nThe JSON above describes the image.", "{} {}"])
def test_literal_control_characters_anywhere_the_object_is(rsrt, control, wrap):
    body = ('{"one_sentence": "Houses and a road.", "feature": "houses:' + control + 'red roofs", '
            '"caption": "' + CAPTION.replace("\n", control) + '"}')
    parsed = parse_output(rsrt, wrap.replace("{}", body), "stop")
    assert parsed.status == "ok", parsed.detail
    assert parsed.fields["caption"] == CAPTION.replace("\n", control).strip()
    assert parsed.fields["feature"] == f"houses:{control}red roofs"


def test_two_different_objects_are_ambiguous_and_broken_json_is_not_repaired(rsrt):
    valid = {"one_sentence": "A port.", "feature": "boats: many", "caption": "Boats in a port."}
    example = {"one_sentence": "...", "feature": "...", "caption": "..."}
    parsed = parse_output(rsrt, f"Format: {json.dumps(example)}\nAnswer: {json.dumps(valid)}", "stop")
    assert parsed.status == "invalid_json" and parsed.detail.startswith("ambiguous: 2 different JSON objects")
    fences = f"```json\n{json.dumps(example)}\n```\n```json\n{json.dumps(valid)}\n```"
    assert parse_output(rsrt, fences, "stop").status == "invalid_json"
    for broken in ("{'one_sentence': 'A port.', 'feature': 'boats', 'caption': 'Boats.'}",
                   '{"one_sentence": "A port.", "feature": "boats", "caption": "Boats in',
                   '{"one_sentence": "A port.", "feature": "boats", "caption": "Boats."',):
        assert parse_output(rsrt, broken, "stop").status == "invalid_json", broken
    assert extract_json_object('{"a": "line\none"}') == {"a": "line\none"}


# ------------------------------------------------------------------ C11: the authors' RSRT files

CONTENT = ["image_id", "prompt", "variant", "field", "text"]


@pytest.fixture(scope="module")
def sample_images():
    return load_dataset(SAMPLE)[0]


def test_c11_grouped_and_legacy_layouts_import_as_the_control(sample_images):
    control, coverage = import_captions(CASES / "C11" / "rsrt_flat_control.jsonl", "authors", sample_images)
    assert control.height == 45 and coverage["layout"] == "flat" and set(control["prompt"]) == {"rsrt"}
    assert control.group_by("image_id").len().sort("image_id").rows() == [("airport_4.jpg", 15), ("beach_4.jpg", 15),
                                                                          ("forest_6.jpg", 15)]
    for file, layout in (("rsrt_grouped.jsonl", "grouped"), ("rsrt_legacy.jsonl", "per-variant")):
        table, coverage = import_captions(CASES / "C11" / file, "authors", sample_images)
        assert coverage["layout"] == layout and coverage["unknown_images"] == []
        assert table.select(CONTENT).equals(control.select(CONTENT)), file
    grouped, _ = import_captions(CASES / "C11" / "rsrt_grouped.jsonl", "authors", sample_images)
    assert set(grouped["model_id"]) == {"gpt-4.1"}  # the file's model when the config names none
    named, _ = import_captions(CASES / "C11" / "rsrt_grouped.jsonl", "authors", sample_images, "my-model")
    assert set(named["model_id"]) == {"my-model"}


def test_rsrt_layouts_in_other_row_formats(tmp_path, sample_images):
    grouped = [json.loads(line) for line in (CASES / "C11" / "rsrt_grouped.jsonl").read_text().splitlines()]
    control = import_captions(CASES / "C11" / "rsrt_flat_control.jsonl", "a", sample_images)[0].select(CONTENT)
    (tmp_path / "g.json").write_text(json.dumps(grouped))
    pl.DataFrame(grouped).write_parquet(tmp_path / "g.parquet")  # variants: a list of structs
    legacy = pl.read_ndjson(CASES / "C11" / "rsrt_legacy.jsonl")
    legacy.write_csv(tmp_path / "legacy.csv")
    legacy.with_columns(pl.int_range(pl.len()).over("image").alias("variant")).reverse().write_parquet(tmp_path / "legacy.parquet")
    for name in ("g.json", "g.parquet", "legacy.csv", "legacy.parquet"):
        assert import_captions(tmp_path / name, "a", sample_images)[0].select(CONTENT).equals(control), name


@pytest.mark.parametrize("line, message", [
    ('{"image": "a.jpg", "variants": {"one_sentence": "x"}}', r"line 2: 'variants' is an object, expected an array of objects"),
    ('{"image": "a.jpg", "variants": ["x"]}', r"line 2: variants\[0\] is a string, expected an object of fields"),
    ('{"image": "a.jpg", "variants": [{"caption": 5}]}', r"line 2: 'variants\[0\].caption' is a number, expected a caption text"),
    ('{"image": 7, "variants": []}', r"line 2: 'image' is a number, expected a file name"),
])
def test_malformed_grouped_records_are_named_by_line(tmp_path, sample_images, line, message):
    path = tmp_path / "g.jsonl"
    path.write_text('{"image": "airport_4.jpg", "variants": []}\n' + line + "\n")
    with pytest.raises(TrsllavaError, match=rf"caption file {path}, {message}"):
        import_captions(path, "a", sample_images)


def test_flat_rows_with_wrong_types_are_named_not_stringified(tmp_path, sample_images):
    path = tmp_path / "c.jsonl"
    path.write_text('{"filename": "airport_4.jpg", "text": "ok"}\n\n{"filename": "airport_4.jpg", "text": {"a": 1}}\n')
    with pytest.raises(TrsllavaError, match=rf"caption file {path}, line 3: 'text' is an object, expected a caption text"):
        import_captions(path, "a", sample_images)
    path.write_text('{"filename": "airport_4.jpg", "text": "ok", "variant": "two"}\n')
    with pytest.raises(TrsllavaError, match=r"line 1: 'variant' is 'two', expected a non-negative integer"):
        import_captions(path, "a", sample_images)


# ---------------------------------------------------------------------------------- NWPU-Captions

def nwpu_file(tmp_path):
    document = {
        "airplane": [
            {"filename": "airplane_001.jpg", "imgid": 0, "split": "test", "raw": "Two planes on the apron .",
             "raw_1": "A plane near a terminal .", "raw_2": "Planes parked .", "raw_3": " ", "raw_4": "An airport .",
             "sentids": 0, "sentids_1": 1, "sentids_2": 2, "sentids_3": 3, "sentids_4": 4},
            {"filename": "airplane_002.jpg", "imgid": 1, "split": "train", "raw": "A plane .", "raw_1": "Jets .",
             "raw_2": "x", "raw_3": "y", "raw_4": "z", "sentids": 5, "sentids_1": 6, "sentids_2": 7, "sentids_3": 8, "sentids_4": 9},
        ],
        "beach": [
            {"filename": "beach_001.jpg", "imgid": 2, "split": "test", "raw": "Waves on a beach .", "raw_1": "Sand .",
             "raw_2": "The sea .", "raw_3": "A coast .", "raw_4": "A shore .", "sentids": 10, "sentids_1": 11,
             "sentids_2": 12, "sentids_3": 13, "sentids_4": 14},
        ],
    }
    path = tmp_path / "dataset_nwpu.json"
    path.write_text(json.dumps(document))
    return path


def test_nwpu_captions_layout(tmp_path):
    path = nwpu_file(tmp_path)
    (tmp_path / "images" / "airplane").mkdir(parents=True)
    (tmp_path / "images" / "airplane" / "airplane_001.jpg").write_bytes(b"")
    (tmp_path / "images" / "beach_001.jpg").write_bytes(b"")  # a flat folder works too
    spec = DatasetSpec.from_config("nwpu", {"format": "nwpu", "annotations": str(path), "images": str(tmp_path / "images")})
    images, references, report = read_dataset(spec)
    assert images["image_id"].to_list() == ["airplane_001.jpg", "beach_001.jpg"]
    assert images["path"].to_list() == [str(tmp_path / "images" / "airplane" / "airplane_001.jpg"),
                                        str(tmp_path / "images" / "beach_001.jpg")]
    assert references["caption_id"].to_list() == [0, 1, 2, 4, 10, 11, 12, 13, 14] and report["caption_ids"] == "file"
    assert references.filter(pl.col("caption_id") == 4)["text"].item() == "An airport ."
    assert report["blank_captions"]["by_image"] == {"airplane_001.jpg": 1}
    train, _, _ = read_dataset(DatasetSpec.from_config("nwpu", {"format": "nwpu", "annotations": str(path), "split": "train"}))
    assert train["image_id"].to_list() == ["airplane_002.jpg"]
    (tmp_path / "images" / "beach_001.jpg").unlink()
    with pytest.raises(TrsllavaError, match=r"image file 'beach_001.jpg' \(listed in .*, beach\[0\]\) not found as .*/beach/beach_001.jpg"):
        load_dataset(spec)


@pytest.mark.parametrize("document, message", [
    ([1, 2], r"expected an NWPU-Captions object keyed by class name"),
    ({"airplane": {"filename": "a.jpg"}}, r"class 'airplane': expected a list of images, found an object"),
    ({"airplane": [{"raw": "x"}]}, r"airplane\[0\]: missing key 'filename'"),
    ({"airplane": [{"filename": "a.jpg", "raw": 3}]}, r"airplane\[0\].raw: expected a caption \(a string\), found a number"),
    ({"airplane": [{"filename": "a.jpg", "raw": "x", "sentids": "0"}]}, r"airplane\[0\].sentids: expected an integer caption id"),
])
def test_malformed_nwpu_files_are_named(tmp_path, document, message):
    path = tmp_path / "n.json"
    path.write_text(json.dumps(document))
    with pytest.raises(TrsllavaError, match=message) as error:
        load_dataset(DatasetSpec.from_config("n", {"format": "nwpu", "annotations": str(path)}))
    assert str(path) in str(error.value)
