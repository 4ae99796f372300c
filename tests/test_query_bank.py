"""The query bank of a dataset: where its queries come from, and the refusal of a transductive bank."""

import json

import pytest

from trsllava.datasets.query_bank import BUILTIN_BANK, bank_entry, load_query_bank
from trsllava.errors import TrsllavaError


@pytest.fixture
def karpathy(tmp_path):
    images = [
        {"filename": "a.jpg", "split": "train", "sentences": [{"raw": "a plane ."}, {"raw": "a plane ."}, {"raw": " "}]},
        {"filename": "b.jpg", "split": "train", "sentences": [{"raw": "houses ."}]},
        {"filename": "c.jpg", "split": "val", "sentences": [{"raw": "a river ."}]},
        {"filename": "d.jpg", "split": "test", "sentences": [{"raw": "a road ."}]},
    ]
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"images": images}))
    return path


def config(annotations, **entry):
    return {"datasets": {"d": {"format": "karpathy", "annotations": str(annotations), "split": "test", **entry},
                         "other": {"format": "karpathy", "annotations": str(annotations), "split": "val"}}}


def test_default_is_the_train_split_of_the_same_annotations(karpathy):
    table, source = load_query_bank(config(karpathy), "d")
    # every caption row of the train images, blank ones dropped; grouped by image
    assert table.rows() == [("a.jpg", "a plane ."), ("a.jpg", "a plane ."), ("b.jpg", "houses .")]
    assert "split train" in source


def test_another_split_or_another_dataset(karpathy):
    table, _ = load_query_bank(config(karpathy, query_bank={"split": "val"}), "d")
    assert table["text"].to_list() == ["a river ."]
    table, _ = load_query_bank(config(karpathy, query_bank={"dataset": "other", "split": "train"}), "d")
    assert table.height == 3


def test_the_evaluated_split_as_bank_is_refused(karpathy):
    with pytest.raises(TrsllavaError, match="datasets.d.query_bank takes split 'test'.*transductive"):
        load_query_bank(config(karpathy, query_bank={"split": "test"}), "d")
    with pytest.raises(TrsllavaError, match="transductive"):  # the same split through another dataset entry
        load_query_bank(config(karpathy, query_bank={"dataset": "other", "split": "test"}), "d")


def test_text_and_table_files(tmp_path, karpathy):
    lines = tmp_path / "bank.txt"
    lines.write_text("first query\n\n  second query  \n")
    table, _ = load_query_bank(config(karpathy, query_bank={"file": str(lines)}), "d")
    assert table.rows() == [("0", "first query"), ("2", "second query")]
    rows = tmp_path / "bank.jsonl"
    rows.write_text('{"filename": "x.jpg", "caption": "one"}\n{"filename": "x.jpg", "caption": "two"}\n')
    table, _ = load_query_bank(config(karpathy, query_bank={"file": str(rows)}), "d")
    assert table.rows() == [("x.jpg", "one"), ("x.jpg", "two")]
    bad = tmp_path / "bank.csv"
    bad.write_text("filename,words\nx.jpg,one\n")
    with pytest.raises(TrsllavaError, match="bank.csv: needs a 'caption' or 'text' column"):
        load_query_bank(config(karpathy, query_bank={"file": str(bad)}), "d")


def test_builtin_sample_uses_the_packaged_train_bank():
    cfg = {"datasets": {"sample": {"format": "builtin"}}}
    assert bank_entry(cfg, "sample") == {"file": "builtin"}
    table, _ = load_query_bank(cfg, "sample")
    assert table.height == 5000 and table["group"].n_unique() == 1000
    sample = json.loads((BUILTIN_BANK.parents[1] / "sample" / "dataset_rsicd_sample.json").read_text())
    sample_files = {image["filename"] for image in sample["images"]}
    assert not sample_files & set(table["group"])  # no image of the sample (RSICD test) is in the bank


@pytest.mark.parametrize("entry, message", [
    ({"splits": "train"}, "unknown key"),
    ({"file": "x.txt", "split": "train"}, "`file` stands alone"),
    ({"dataset": "nowhere"}, "'nowhere' is not a dataset"),
])
def test_bad_entries_name_the_key(karpathy, entry, message):
    with pytest.raises(TrsllavaError, match=message):
        bank_entry(config(karpathy, query_bank=entry), "d")
