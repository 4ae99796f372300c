"""The prompt registry: packaged prompts, custom prompts, output parsing, database texts, quality."""

from __future__ import annotations

import json

import jsonschema
import polars as pl
import pytest

from trsllava.captioning.prompts import (
    STATUSES,
    ParsedOutput,
    Prompt,
    database_texts,
    extract_json_object,
    load_prompts,
    parse_output,
    prompt_hash,
    quality_report,
)
from trsllava.errors import TrsllavaError

PACKAGED = {"rsrt", "one_sentence", "features", "detailed", "rsicd_style", "query"}
VALID = {
    "one_sentence": "An airport with a row of parked planes on a wide apron.",
    "feature": "apron: wide grey strip in the centre; planes: several in a line along the apron",
    "caption": "A wide grey apron crosses the image. Several planes are parked along it.",
}


@pytest.fixture(scope="module")
def prompts() -> dict[str, Prompt]:
    return load_prompts()


@pytest.fixture(scope="module")
def rsrt(prompts) -> Prompt:
    return prompts["rsrt"]


# ------------------------------------------------------------------------------------ registry


def test_packaged_prompts_load(prompts):
    assert set(prompts) == PACKAGED
    for prompt_id, prompt in prompts.items():
        assert prompt.id == prompt_id
        assert prompt.origin == "package"
        assert prompt.description and len(prompt.text) > 100
        assert "remote-sensing" in prompt.text or "remote sensing" in prompt.text
        assert len(prompt.hash) == 16 and int(prompt.hash, 16) >= 0
    for prompt_id in PACKAGED - {"rsrt"}:
        prompt = prompts[prompt_id]
        assert (prompt.output, prompt.variants, prompt.fields, prompt.schema) == ("text", 1, None, None)


def test_rsrt_declaration(rsrt):
    assert rsrt.output == "json" and rsrt.is_json
    assert rsrt.variants == 5
    assert rsrt.fields == ("one_sentence", "feature", "caption")
    assert rsrt.schema["required"] == ["one_sentence", "feature", "caption"]
    assert rsrt.schema["additionalProperties"] is False
    for name in ("north", "south", "west", "east", "percentages", "visible"):
        assert name in rsrt.text
    for name in rsrt.fields:
        assert f'"{name}"' in rsrt.text


def test_hashes_stable_and_distinct(prompts):
    again = load_prompts()
    assert {k: p.hash for k, p in prompts.items()} == {k: p.hash for k, p in again.items()}
    assert len({p.hash for p in prompts.values()}) == len(prompts)
    rsrt = prompts["rsrt"]
    assert rsrt.hash == prompt_hash(rsrt.text, rsrt.output, rsrt.schema, rsrt.fields)
    # key order of the schema does not matter; the text does
    reordered = dict(reversed(list(rsrt.schema.items())))
    assert prompt_hash(rsrt.text, "json", reordered, rsrt.fields) == rsrt.hash
    assert prompt_hash(rsrt.text + " ", "json", rsrt.schema, rsrt.fields) != rsrt.hash
    # the description and the number of variants do not change what one sample looks like
    custom = load_prompts({"rsrt": {"text": rsrt.text, "output": "json", "fields": list(rsrt.fields),
                                    "schema": rsrt.schema, "variants": 2, "description": "other"}})
    assert custom["rsrt"].hash == rsrt.hash


def test_prompts_are_frozen_and_hashable(rsrt):
    with pytest.raises(AttributeError):
        rsrt.text = "x"
    assert hash(rsrt) == hash(load_prompts()["rsrt"])


def test_rsrt_schema_accepts_and_rejects(rsrt):
    jsonschema.validate(VALID, rsrt.schema)
    for broken in (
        {k: v for k, v in VALID.items() if k != "caption"},  # missing field
        {**VALID, "extra": "no"},  # extra field
        {**VALID, "feature": ""},  # empty field
        {**VALID, "caption": 3},  # not a string
        [VALID] * 5,  # five variants in one JSON is not the format: n=5 samples are
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, rsrt.schema)


def test_custom_prompt_added_and_overriding(prompts):
    merged = load_prompts(
        {
            "short": {"text": "Name the scene of this remote-sensing image in three words."},
            "one_sentence": {"text": "Describe the image in one sentence.", "variants": 3},
            "pair": {"text": "Return JSON with scene and objects.", "output": "json", "fields": ["scene", "objects"]},
        }
    )
    assert set(merged) == PACKAGED | {"short", "pair"}
    short = merged["short"]
    assert (short.output, short.variants, short.fields, short.origin) == ("text", 1, None, "config")
    override = merged["one_sentence"]
    assert override.origin == "config" and override.variants == 3
    assert override.text == "Describe the image in one sentence."
    assert override.hash != prompts["one_sentence"].hash
    assert merged["rsrt"] == prompts["rsrt"]
    pair = merged["pair"]  # schema derived from the fields
    assert pair.fields == ("scene", "objects")
    assert pair.schema["required"] == ["scene", "objects"] and pair.schema["additionalProperties"] is False
    assert parse_output(pair, '{"scene": "port", "objects": "ships"}', "stop").fields == {"scene": "port", "objects": "ships"}


@pytest.mark.parametrize(
    "custom, message",
    [
        ({"mine": {"description": "no text"}}, "prompts.mine.text: required"),
        ({"mine": {"text": "   "}}, "prompts.mine.text: must be a non-empty string"),
        ({"mine": {"text": "x", "output": "xml"}}, "prompts.mine.output: 'xml' is not one of"),
        ({"mine": {"text": "x", "variants": 0}}, "prompts.mine.variants: must be a positive integer"),
        ({"mine": {"text": "x", "temperature": 0.2}}, "prompts.mine.temperature: unknown key"),
        ({"mine": {"text": "x", "fields": ["a"]}}, "prompts.mine.fields: a text prompt has no fields"),
        ({"mine": {"text": "x", "output": "json"}}, "prompts.mine.fields: a json prompt needs"),
        ({"mine": {"text": "x", "output": "json", "fields": ["a", "a"]}}, "prompts.mine.fields: duplicate"),
        ({"mine": {"text": "x", "output": "json", "fields": ["a"], "schema": {"type": 5}}}, "prompts.mine.schema: not a valid JSON Schema"),
        ({"mine": {"text": "x", "output": "json", "fields": ["b"], "schema": {"type": "object", "properties": {"a": {}}}}}, "prompts.mine.schema: fields ['b']"),
        ({"mine": {"id": "other", "text": "x"}}, "prompts.mine.id: 'other' does not match"),
        ({"mine": "Describe the image."}, "prompts.mine: expected a mapping"),
        ({"a/b": {"text": "x"}}, "prompts.a/b: a prompt id is"),
        ({"fused": {"text": "x"}}, "prompts.fused: 'fused' is reserved"),
    ],
)
def test_bad_custom_prompt(custom, message):
    with pytest.raises(TrsllavaError) as info:
        load_prompts(custom)
    assert message in str(info.value)


def test_custom_prompts_must_be_a_mapping():
    with pytest.raises(TrsllavaError, match="prompts: expected a mapping"):
        load_prompts(["rsrt"])


# ------------------------------------------------------------------------------------- parsing


def test_parse_plain_json(rsrt):
    parsed = parse_output(rsrt, json.dumps(VALID), "stop")
    assert parsed == ParsedOutput(VALID, "ok", None) and parsed.ok
    assert list(parsed.fields) == ["one_sentence", "feature", "caption"]


def test_parse_fenced_json(rsrt):
    raw = "```json\n" + json.dumps(VALID, indent=2) + "\n```"
    parsed = parse_output(rsrt, raw, "stop")
    assert parsed.status == "ok" and parsed.fields == VALID


def test_parse_json_with_prose_around(rsrt):
    raw = "Here is the description {as requested}:\n" + json.dumps(VALID) + "\nLet me know if you need more."
    parsed = parse_output(rsrt, raw, None)
    assert parsed.status == "ok" and parsed.fields == VALID
    # field order follows the prompt, not the answer; text is stripped
    shuffled = {"caption": "  " + VALID["caption"] + " ", "feature": VALID["feature"], "one_sentence": VALID["one_sentence"]}
    assert list(parse_output(rsrt, json.dumps(shuffled), "stop").fields.items()) == list(VALID.items())


def test_parse_invalid_json(rsrt):
    parsed = parse_output(rsrt, '{"one_sentence": "An airport", "feature": ', "stop")
    assert parsed.status == "invalid_json" and parsed.fields == {}
    assert "no JSON object found" in parsed.detail
    missing = parse_output(rsrt, json.dumps({"one_sentence": "a", "feature": "b"}), "stop")
    assert missing.status == "invalid_json" and "'caption' is a required property" in missing.detail
    extra = parse_output(rsrt, json.dumps({**VALID, "tags": "x"}), "stop")
    assert extra.status == "invalid_json" and "tags" in extra.detail
    blank = parse_output(rsrt, json.dumps({**VALID, "caption": "   "}), "stop")
    assert blank.status == "invalid_json" and "caption" in blank.detail
    prose = parse_output(rsrt, "An airport with planes parked on the apron.", "stop")
    assert prose.status == "invalid_json"


def test_parse_truncated(rsrt, prompts):
    cut = json.dumps(VALID)[:40]
    parsed = parse_output(rsrt, cut, "length")
    assert parsed.status == "truncated" and parsed.fields == {} and "max_tokens" in parsed.detail
    text = parse_output(prompts["detailed"], "The scene shows a wide river running from", "length")
    assert text.status == "truncated"
    assert parse_output(prompts["detailed"], "", "length").status == "truncated"


@pytest.mark.parametrize(
    "raw",
    [
        "I'm sorry, but I can't help with identifying this location.",
        "I\u2019m sorry, I cannot describe this image.",
        "I cannot analyze this image.",
        "I can't see the image you are referring to.",
        "As an AI language model, I do not have the ability to view images.",
        "Sorry, I am unable to process images.",
        "  I am unable to provide a description.",
        "Unfortunately, I cannot assist with that.",
    ],
)
def test_parse_refusal(raw, rsrt, prompts):
    for prompt in (rsrt, prompts["one_sentence"]):
        parsed = parse_output(prompt, raw, "stop")
        assert parsed.status == "refused", (prompt.id, raw)
        assert parsed.fields == {} and parsed.detail.startswith("refusal:")


def test_not_a_refusal(prompts, rsrt):
    for raw in ("Sorting yards of a railway station with many parallel tracks.",
                "Irregular fields in green and brown cover the image.",
                "Icy peaks in the north; a canal crosses the south."):
        assert parse_output(prompts["one_sentence"], raw, "stop").status == "ok"
    # a valid object after an apology is still an answer
    assert parse_output(rsrt, "Sorry for the delay! " + json.dumps(VALID), "stop").status == "ok"


def test_parse_empty(rsrt, prompts):
    for prompt in (rsrt, prompts["query"]):
        for raw in ("", "  \n\t ", None):
            parsed = parse_output(prompt, raw, "stop")
            assert parsed.status == "empty" and parsed.fields == {}


def test_parse_text_prompt(prompts):
    parsed = parse_output(prompts["rsicd_style"], "  many buildings and green trees are around a playground \n", "stop")
    assert parsed == ParsedOutput({None: "many buildings and green trees are around a playground"}, "ok", None)
    # a text prompt does not read JSON: the answer is the text
    raw = '{"caption": "a port"}'
    assert parse_output(prompts["one_sentence"], raw, None).fields == {None: raw}


def test_extract_json_object():
    # two different objects: no telling which is the answer (ambiguous, so none); one repeated is one
    assert extract_json_object('prefix {"a": "{b}"} {"c": 1}') is None
    assert extract_json_object('prefix {"a": "{b}"} and again {"a": "{b}"}') == {"a": "{b}"}
    assert extract_json_object("```\n{\"a\": 1}\n```") == {"a": 1}
    assert extract_json_object("[1, 2]") is None
    assert extract_json_object('text {not json} then {"x": {"y": 2}} end') == {"x": {"y": 2}}


def test_parsed_statuses_are_known():
    assert set(STATUSES) == {"ok", "empty", "refused", "invalid_json", "truncated"}


# ------------------------------------------------------------------------------ database texts


def test_database_texts_fields_and_joined(rsrt, prompts):
    parsed = parse_output(rsrt, json.dumps(VALID), "stop")
    assert database_texts(rsrt, parsed) == [
        ("one_sentence", VALID["one_sentence"]),
        ("feature", VALID["feature"]),
        ("caption", VALID["caption"]),
    ]
    assert database_texts(rsrt, parsed, "fields") == database_texts(rsrt, parsed)
    joined = database_texts(rsrt, parsed, "joined")
    assert joined == [
        ("joined", VALID["one_sentence"] + " " + VALID["feature"] + ". " + VALID["caption"]),
    ]
    text_prompt = prompts["detailed"]
    text = parse_output(text_prompt, "A dense residential area.", "stop")
    assert database_texts(text_prompt, text, "fields") == [(None, "A dense residential area.")]
    assert database_texts(text_prompt, text, "joined") == [(None, "A dense residential area.")]


def test_database_texts_failures_and_bad_mode(rsrt):
    assert database_texts(rsrt, parse_output(rsrt, "", "stop")) == []
    with pytest.raises(TrsllavaError, match="mode 'concat'"):
        database_texts(rsrt, parse_output(rsrt, json.dumps(VALID), "stop"), "concat")


# ------------------------------------------------------------------------------ quality report


def test_quality_report_counts():
    rows = pl.DataFrame(
        {
            "image_id": ["a.jpg", "a.jpg", "b.jpg", "b.jpg", "c.jpg", "c.jpg", "d.jpg", "a.jpg", "b.jpg", "c.jpg"],
            "prompt": ["rsrt"] * 6 + ["rsrt", "query", "query", "query"],
            "variant": [0, 1, 0, 1, 0, 1, 0, None, None, None],
            "status": ["ok", "ok", "ok", "invalid_json", "refused", "ok", "truncated", "ok", "ok", "empty"],
            "detail": [None, None, None, "schema: 'caption' is a required property", "refusal: 'I'm sorry'", None,
                       "stopped at max_tokens", None, None, "the answer is empty"],
            "attempts": [1, 2, 1, 2, 1, 1, 1, 1, 1, None],
            "text": ["a grey airport", "a grey airport", "a grey airport", None, "I'm sorry", "a beach",
                     None, "a port", "a port", ""],
        }
    )
    report = quality_report(rows)
    assert set(report) == {"rsrt", "query"}
    rsrt = report["rsrt"]
    assert rsrt["outputs"] == 7 and rsrt["images"] == 4
    assert rsrt["status"] == {"ok": 4, "empty": 0, "refused": 1, "invalid_json": 1, "truncated": 1,
                              "unreadable": 0, "error": 0}
    assert rsrt["ok_rate"] == round(4 / 7, 4)
    assert rsrt["retried"] == 2 and rsrt["retried_ok"] == 1
    across = rsrt["duplicates"]["across_images"]
    assert across["texts"] == 1 and across["rows"] == 3
    assert across["examples"] == [{"text": "a grey airport", "images": ["a.jpg", "b.jpg"], "n_images": 2, "rows": 3}]
    assert rsrt["duplicates"]["within_image"] == 1  # a.jpg variants 0 and 1
    assert rsrt["failures"] == [
        {"image_id": "b.jpg", "variant": 1, "status": "invalid_json", "detail": "schema: 'caption' is a required property"},
        {"image_id": "c.jpg", "variant": 0, "status": "refused", "detail": "refusal: 'I'm sorry'"},
        {"image_id": "d.jpg", "variant": 0, "status": "truncated", "detail": "stopped at max_tokens"},
    ]
    query = report["query"]
    assert query["status"] == {"ok": 2, "empty": 1, "refused": 0, "invalid_json": 0, "truncated": 0,
                               "unreadable": 0, "error": 0}
    assert query["retried"] == 0
    assert query["duplicates"]["across_images"]["texts"] == 1
    assert query["failures"] == [{"image_id": "c.jpg", "variant": None, "status": "empty", "detail": "the answer is empty"}]
    json.dumps(report)  # plain JSON for the report file


def test_quality_report_bad_input():
    with pytest.raises(TrsllavaError, match="missing column"):
        quality_report(pl.DataFrame({"image_id": ["a"], "prompt": ["rsrt"]}))
    rows = pl.DataFrame(
        {"image_id": ["a"], "prompt": ["rsrt"], "variant": [0], "status": ["weird"], "detail": [None],
         "attempts": [1], "text": ["x"]}
    )
    with pytest.raises(TrsllavaError, match="unknown status"):
        quality_report(rows)
