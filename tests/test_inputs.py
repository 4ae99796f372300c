"""Loaders and the caption importer, and the clear errors bad input must get."""

import json

import polars as pl
import pytest

from trsllava.captions.importer import import_captions
from trsllava.datasets import DatasetSpec, load_dataset
from trsllava.errors import TrsllavaError
from trsllava.steps import BUILTIN_CAPTIONS


def karpathy(tmp_path, images):
    path = tmp_path / "dataset_x.json"
    path.write_text(json.dumps({"dataset": "x", "images": images}))
    return path


def image(filename, split, sentences, start):
    return {"filename": filename, "split": split,
            "sentences": [{"raw": s, "sentid": start + i} for i, s in enumerate(sentences)]}


def test_builtin_sample():
    images, references = load_dataset(DatasetSpec.from_config("sample", {"format": "builtin"}))
    assert images.height == 60 and references.height == 300
    assert images["split"].unique().to_list() == ["test"]
    assert images.schema == {"image_id": pl.String, "filename": pl.String, "split": pl.String, "path": pl.String}
    assert references.group_by("image_id").len()["len"].unique().to_list() == [5]
    assert all(p.endswith(f) for p, f in zip(images["path"], images["filename"]))


def test_karpathy_split_gallery_and_no_images_needed(tmp_path):
    path = karpathy(tmp_path, [image("a.jpg", "train", ["x"], 0), image("b.jpg", "test", [" b one ", "b two"], 1),
                               image("c.jpg", "test", ["c"], 3)])
    images, references = load_dataset(DatasetSpec.from_config("x", {"format": "karpathy", "annotations": str(path)}))
    assert images["image_id"].to_list() == ["b.jpg", "c.jpg"] and images["path"].to_list() == [None, None]
    assert references.rows() == [(1, "b.jpg", "b one"), (2, "b.jpg", "b two"), (3, "c.jpg", "c")]
    everything, _ = load_dataset(DatasetSpec.from_config("x", {"format": "karpathy", "annotations": str(path), "gallery": "all"}))
    assert everything["split"].to_list() == ["train", "test", "test"]


def test_generic_csv_and_jsonl(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in ("p.png", "q.png"):
        (tmp_path / "imgs" / name).write_bytes(b"")
    csv = tmp_path / "caps.csv"
    csv.write_text("filename,caption\np.png,a pond\np.png,water\nq.png,a road\n")
    images, references = load_dataset(DatasetSpec.from_config("g", {"format": "generic", "annotations": str(csv), "images": str(tmp_path / "imgs")}))
    assert images["image_id"].to_list() == ["p.png", "q.png"]
    assert images["path"].to_list() == [str(tmp_path / "imgs" / "p.png"), str(tmp_path / "imgs" / "q.png")]
    assert references["text"].to_list() == ["a pond", "water", "a road"]
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text('{"filename": "p.png", "caption": "a pond", "split": "val"}\n')
    images, _ = load_dataset(DatasetSpec.from_config("g", {"format": "generic", "annotations": str(jsonl), "split": "val"}))
    assert images["split"].to_list() == ["val"]


def test_missing_image_file_is_named(tmp_path):
    path = karpathy(tmp_path, [image("there.jpg", "test", ["x"], 0), image("gone.jpg", "test", ["y"], 1)])
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "there.jpg").write_bytes(b"")
    spec = DatasetSpec.from_config("x", {"format": "karpathy", "annotations": str(path), "images": str(tmp_path / "images")})
    with pytest.raises(TrsllavaError, match=r"image file 'gone.jpg'.*not found"):
        load_dataset(spec)


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", r"expected a Karpathy-style object with an 'images' list"),
        ('{"images": [{"filename": "a.jpg"}]}', r"images\[0\]: missing key 'sentences'"),
        ('{"images": [{"filename": "a.jpg", "sentences": [{"tokens": []}]}]}', r"images\[0\].sentences\[0\]"),
        ("{not json", r"not readable as JSON"),
    ],
)
def test_wrong_shape_annotation_names_file_and_key(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(TrsllavaError, match=message) as error:
        load_dataset(DatasetSpec.from_config("x", {"format": "karpathy", "annotations": str(path)}))
    assert str(path) in str(error.value)


def test_unknown_split_is_reported(tmp_path):
    path = karpathy(tmp_path, [image("a.jpg", "train", ["x"], 0)])
    with pytest.raises(TrsllavaError, match=r"no image in split 'test'.*\['train'\]"):
        load_dataset(DatasetSpec.from_config("x", {"format": "karpathy", "annotations": str(path)}))


def sample_images():
    return load_dataset(DatasetSpec.from_config("sample", {"format": "builtin"}))[0]


def test_builtin_caption_set_covers_the_sample():
    table, coverage = import_captions(BUILTIN_CAPTIONS, "claude-sample", sample_images(), "claude")
    assert table.height == 420 and coverage["images_without_caption"] == [] and coverage["unknown_images"] == []
    assert sorted(table["prompt"].unique()) == ["rsicd_style", "rsrt"]
    assert table.filter(pl.col("prompt") == "rsrt").group_by("image_id").len()["len"].unique().to_list() == [6]
    assert set(table["backend"]) == {"import"} and set(table["model_id"]) == {"claude"}


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_import_formats_and_coverage(tmp_path, suffix):
    rows = pl.DataFrame({"filename": ["airport_4.png", "/data/rsicd/images/test/airport_4.jpg", "nowhere.jpg", "beach_4.jpg"],
                         "text": ["planes on an apron", "a runway", "lost", "  "]})
    path = tmp_path / f"caps.{suffix}"
    {"jsonl": rows.write_ndjson, "csv": rows.write_csv, "parquet": rows.write_parquet}[suffix](path)
    table, coverage = import_captions(path, "mine", sample_images())
    assert table["text"].to_list() == ["planes on an apron", "a runway"]
    assert table["prompt"].to_list() == ["default", "default"]
    assert coverage["unknown_images"] == ["nowhere.jpg"] and coverage["empty_texts_dropped"] == 1
    assert len(coverage["images_without_caption"]) == 59 and "beach_4.jpg" in coverage["images_without_caption"]


def test_unreadable_caption_file_is_named(tmp_path):
    path = tmp_path / "caps.jsonl"
    path.write_bytes(b'{"filename": "a.jpg", "text": "ok"}\n\xff\xfe garbage {{{\n')
    # one line naming the file and the byte offset of the first byte that is not UTF-8
    with pytest.raises(TrsllavaError, match=rf"caption file {path}: not valid UTF-8 text at byte 36 \(found b'\\xff\\xfe"):
        import_captions(path, "mine", sample_images())
    wrong = tmp_path / "caps.csv"
    wrong.write_text("image,caption\na.jpg,x\n")
    with pytest.raises(TrsllavaError, match=r"missing column\(s\) \['filename', 'text'\]"):
        import_captions(wrong, "mine", sample_images())
    with pytest.raises(TrsllavaError, match="caption file not found"):
        import_captions(tmp_path / "nope.jsonl", "mine", sample_images())
