"""SmolVLM's architecture (idefics3: SigLIP-like tower, pixel-shuffle connector, Llama LM,
Idefics3Processor with image splitting) through the transformers captioning backend, on a tiny
random SmolVLM built offline (gibberish texts: what is tested is loading, prompting, image
splitting, batching and token accounting), plus the ``processor_options`` captioner setting."""

import json
import math
import sys
import types
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from trsllava.captioning import tiny_smolvlm
from trsllava.captioning.backends import make_backend
from trsllava.captioning.hf_backend import TransformersBackend
from trsllava.captioning.prompts import load_prompts
from trsllava.captioning.shard import ShardRun, cache_key, read_progress
from trsllava.captioning.tiny_smolvlm import build_tiny_smolvlm
from trsllava.captioning.types import GenerationRequest, check_processor_options
from trsllava.errors import TrsllavaError

IMAGES = Path(__file__).resolve().parents[1] / "src" / "trsllava" / "data" / "sample" / "images"
NAMES = ["airport_4.jpg", "beach_4.jpg", "bridge_4.jpg"]
PROMPT = "Describe the image in one sentence."
NO_SPLIT = {"do_image_splitting": False}
MAX_NEW = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_smolvlm(tmp_path_factory.mktemp("tiny-smolvlm"), seed=0)


@pytest.fixture(scope="module")
def split(folder):  # the saved processor: splitting on, as in SmolVLM-256M-Instruct
    return TransformersBackend(str(folder), device="cpu", max_new_tokens=MAX_NEW, temperature=0.0, seed=0, batch_size=3)


@pytest.fixture(scope="module")
def whole(folder):  # one tile per image
    return TransformersBackend(str(folder), device="cpu", max_new_tokens=MAX_NEW, temperature=0.0, seed=0, batch_size=3,
                               processor_options=NO_SPLIT)


@pytest.fixture(scope="module")
def wide_image(tmp_path_factory):
    """A 224 x 112 crop: split into 2 rows x 4 columns (a square image gives 4 x 4)."""
    path = tmp_path_factory.mktemp("wide") / "wide.png"
    with Image.open(IMAGES / NAMES[1]) as image:
        image.convert("RGB").crop((0, 56, 224, 168)).save(path)
    return path


def requests(names=NAMES, prompt=PROMPT):
    return [GenerationRequest(image_path=str(IMAGES / name), prompt_text=prompt) for name in names]


def mixed_requests(wide_image):
    """Different prompt lengths (left padding) and different tile grids in one batch."""
    return [GenerationRequest(str(IMAGES / NAMES[0]), PROMPT),
            GenerationRequest(str(wide_image), "Describe."),
            GenerationRequest(str(IMAGES / NAMES[2]), "What is in this picture? List every object you see.")]


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def grid(width: int, height: int, longest_edge: int, tile: int) -> tuple[int, int]:
    """Idefics3's split, by hand: the longer side is resized to ``longest_edge`` (aspect kept, the
    shorter side rounded to even), both sides rounded up to whole tiles -> (rows, cols)."""
    if width >= height:
        width, height = longest_edge, int(longest_edge / (width / height))
        height += height % 2
    else:
        width, height = int(longest_edge * (width / height)), longest_edge
        width += width % 2
    return math.ceil(height / tile), math.ceil(width / tile)


def image_block(tokenizer, rows: int, cols: int, seq_len: int) -> int:
    """Prompt tokens that replace one ``<image>``, by hand. Split: per tile
    ``<fake_token_around_image><row_r_col_c>`` + seq_len ``<image>``, a newline after each row, then
    ``\\n<fake_token_around_image><global-img>`` + seq_len ``<image>`` + ``<fake_token_around_image>``
    (the last row's newline and this one form "\\n\\n", one or two tokens depending on the
    tokenizer's merges). Unsplit: the global view alone."""
    global_view = 1 + 1 + seq_len + 1
    if rows == cols == 0:
        return global_view
    newlines = (rows - 1) * n_tokens(tokenizer, "\n") + n_tokens(tokenizer, "\n\n")
    return rows * cols * (2 + seq_len) + newlines + global_view


def text_tokens(backend, prompt_text: str) -> int:
    """The chat prompt's tokens besides the image: its single ``<image>`` placeholder is one token."""
    return n_tokens(backend.tokenizer, backend._prompt(prompt_text)) - 1


def check_accounting(results, n=1):
    for result in results:
        assert len(result.texts) == n and len(result.finish_reasons) == n
        assert set(result.finish_reasons) <= {"stop", "length"}
        assert 0 < result.completion_tokens <= n * MAX_NEW
        if result.finish_reasons == ["length"] * n:
            assert result.completion_tokens == n * MAX_NEW


def test_same_architecture_and_processor_layout_as_smolvlm(folder, split):
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "idefics3" and config["architectures"] == ["Idefics3ForConditionalGeneration"]
    assert config["scale_factor"] == 4 and config["text_config"]["model_type"] == "llama"
    assert type(split.model).__name__ == "Idefics3ForConditionalGeneration"
    assert type(split.processor).__name__ == "Idefics3Processor"
    assert 3e5 < sum(p.numel() for p in split.model.parameters()) < 2.5e6
    vision = split.model.config.vision_config
    tiles_per_side = vision.image_size // vision.patch_size
    assert split.processor.image_seq_len == tiles_per_side**2 // config["scale_factor"] ** 2 == tiny_smolvlm.IMAGE_SEQ_LEN
    image_processor = split.processor.image_processor
    assert image_processor.do_image_splitting is True
    assert image_processor.max_image_size == {"longest_edge": vision.image_size}
    assert image_processor.size == {"longest_edge": 4 * vision.image_size}  # 2048 = 4 x 512 in the real model
    for token in tiny_smolvlm.IMAGE_TOKENS:  # all single tokens, as in SmolVLM's vocabulary
        assert n_tokens(split.tokenizer, token) == 1, token
    assert split._prompt(PROMPT) == f"<|im_start|>User:<image>{PROMPT}<end_of_utterance>\nAssistant:"
    end_ids = {split.tokenizer.convert_tokens_to_ids(t) for t in ("<end_of_utterance>", "<|im_end|>")}
    assert split.eos_ids == end_ids


def test_build_is_deterministic_per_seed_and_leaves_the_rng_alone(folder, tmp_path):
    import torch

    state = torch.random.get_rng_state()
    again = build_tiny_smolvlm(tmp_path / "again", seed=0)
    other = build_tiny_smolvlm(tmp_path / "other", seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    weights = (folder / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights
    assert (again / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()


def test_prompt_tokens_with_and_without_splitting(split, whole):
    with Image.open(IMAGES / NAMES[0]) as image:
        assert image.size == (224, 224)  # every sample image
    seq = tiny_smolvlm.IMAGE_SEQ_LEN
    rows, cols = grid(224, 224, tiny_smolvlm.LONGEST_EDGE, tiny_smolvlm.TILE)
    assert (rows, cols) == (4, 4)
    text = text_tokens(split, PROMPT)
    expected_split = text + image_block(split.tokenizer, rows, cols, seq)
    expected_whole = text + image_block(whole.tokenizer, 0, 0, seq)

    split_results, whole_results = split.generate(requests()), whole.generate(requests())
    assert [r.prompt_tokens for r in split_results] == [expected_split] * 3
    assert [r.prompt_tokens for r in whole_results] == [expected_whole] * 3
    # the 16 tiles (marker, position token, seq image tokens) and the newlines come on top of the global view
    assert expected_split - expected_whole == rows * cols * (seq + 2) + (rows - 1) + n_tokens(split.tokenizer, "\n\n")
    check_accounting(split_results)
    check_accounting(whole_results)

    # what the vision tower gets: 17 tiles vs 1 per image
    with Image.open(IMAGES / NAMES[0]) as image:
        rgb = image.convert("RGB")
    tile = tiny_smolvlm.TILE
    for backend, tiles in ((split, rows * cols + 1), (whole, 1)):
        inputs = backend.processor(images=[rgb], text=[backend._prompt(PROMPT)], return_tensors="pt")
        assert tuple(inputs["pixel_values"].shape) == (1, tiles, 3, tile, tile)
        assert int((inputs["input_ids"] == backend.processor.image_token_id).sum()) == tiles * seq


def test_non_square_image_grid(split, whole, wide_image):
    rows, cols = grid(224, 112, tiny_smolvlm.LONGEST_EDGE, tiny_smolvlm.TILE)
    assert (rows, cols) == (2, 4)
    request = [GenerationRequest(str(wide_image), PROMPT)]
    seq, text = tiny_smolvlm.IMAGE_SEQ_LEN, text_tokens(split, PROMPT)
    assert split.generate(request)[0].prompt_tokens == text + image_block(split.tokenizer, rows, cols, seq)
    assert whole.generate(request)[0].prompt_tokens == text + image_block(whole.tokenizer, 0, 0, seq)


@pytest.mark.parametrize("options", [None, NO_SPLIT], ids=["split", "whole"])
def test_greedy_is_deterministic_and_batching_changes_nothing(folder, split, whole, wide_image, options):
    """Batches mix prompt lengths (left padding) and tile grids (17 and 9 tiles, padded with empty
    tiles): batch size 3 and 1 give the same texts, reasons and token counts."""
    batched = split if options is None else whole
    first = batched.generate(mixed_requests(wide_image))
    assert batched.generate(mixed_requests(wide_image)) == first
    check_accounting(first)
    assert len({r.prompt_tokens for r in first}) == 3  # the batch really was padded
    single = TransformersBackend(str(folder), device="cpu", max_new_tokens=MAX_NEW, temperature=0.0, seed=0,
                                 batch_size=1, processor_options=options)
    assert single.generate(mixed_requests(wide_image)) == first


def test_sampling_n_samples(split):
    results = split.generate([GenerationRequest(str(IMAGES / NAMES[0]), PROMPT, n=2)])
    check_accounting(results, n=2)
    assert split.generate([GenerationRequest(str(IMAGES / NAMES[0]), PROMPT, n=2)]) == results


def test_real_smolvlm_256m_processor_token_counts():
    """SmolVLM-256M-Instruct's processor settings as reconstructed (image_seq_len 64, longest edge
    2048, 512-px tiles) on a 224 x 224 image: 4 x 4 tiles + global = 17 x 64 = 1,088 ``<image>``
    tokens with splitting, 64 without (the text around them depends on the real tokenizer)."""
    real = tiny_smolvlm.SMOLVLM_256M_PROCESSOR
    processor = tiny_smolvlm.build_processor(image_seq_len=real["image_seq_len"], tile=real["max_image_size"]["longest_edge"],
                                             longest_edge=real["size"]["longest_edge"])
    with Image.open(IMAGES / NAMES[0]) as image:
        rgb = image.convert("RGB")
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}], add_generation_prompt=True,
        tokenize=False)
    counts = {}
    for splitting in (True, False):
        inputs = processor(images=[rgb], text=[prompt], do_image_splitting=splitting)
        ids = inputs["input_ids"][0]
        counts[splitting] = (ids.count(processor.image_token_id), len(ids))
    assert grid(224, 224, 2048, 512) == (4, 4)
    assert counts[True][0] == 17 * 64 == 1088 and counts[False][0] == 64
    text = n_tokens(processor.tokenizer, prompt) - 1
    assert counts[True][1] == text + image_block(processor.tokenizer, 4, 4, 64)
    assert counts[False][1] == text + image_block(processor.tokenizer, 0, 0, 64) == text + 67


def test_make_backend_passes_processor_options_to_transformers(folder):
    entry = {"backend": "transformers", "model": str(folder), "device": "cpu", "max_tokens": 4, "temperature": 0,
             "batch_size": 2}
    plain = make_backend("tiny", entry)
    assert plain.processor.image_processor.do_image_splitting is True
    assert "processor_options" not in plain.describe()
    options = {"do_image_splitting": False, "max_image_size": {"longest_edge": 32}}
    backend = make_backend("tiny", {**entry, "processor_options": options})
    assert backend.processor_options == options
    assert backend.processor.image_processor.do_image_splitting is False
    assert backend.processor.image_processor.max_image_size == {"longest_edge": 32}
    assert backend.describe()["processor_options"] == options
    json.dumps(backend.describe())  # provenance stays JSON


def test_make_backend_passes_processor_options_to_vllm(folder, monkeypatch):
    """vLLM is not in this venv: a stand-in ``LLM`` records what the backend gives it."""
    seen = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            seen.update(kwargs)
            self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(dtype="torch.float32"))

    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(device_type="cpu")
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    entry = {"backend": "vllm", "model": str(folder), "max_model_len": 2048}

    backend = make_backend("tiny", {**entry, "processor_options": NO_SPLIT})
    assert seen["mm_processor_kwargs"] == NO_SPLIT
    assert backend.describe()["processor_options"] == NO_SPLIT
    assert backend._template_owner.image_processor.do_image_splitting is False
    seen.clear()
    plain = make_backend("tiny", entry)
    assert "mm_processor_kwargs" not in seen and "processor_options" not in plain.describe()


def test_processor_options_checks(folder, caplog):
    with pytest.raises(TrsllavaError, match="openai backend cannot set them"):
        make_backend("remote", {"backend": "openai", "model": "m", "base_url": "http://localhost:1/v1",
                                "processor_options": NO_SPLIT})
    with pytest.raises(TrsllavaError, match="mapping"):
        check_processor_options(["do_image_splitting"])
    with pytest.raises(TrsllavaError, match="JSON"):
        check_processor_options({"do_image_splitting": object()})
    assert check_processor_options(None) == {}
    with caplog.at_level("WARNING"):
        TransformersBackend(str(folder), device="cpu", max_new_tokens=2, processor_options={"do_image_spliting": False})
    assert "do_image_spliting" in caplog.text


def test_processor_options_enter_the_cache_key():
    prompt = load_prompts()["rsicd_style"]
    sampling, sha = {"max_tokens": 8, "temperature": 0.0, "seed": 0}, "ab" * 32
    model = {"backend": "transformers", "model_id": "m", "model_revision": None, "dtype": "float32", "device": "cpu"}
    before = cache_key(model, prompt, sampling, sha)
    # without processor options: the key of earlier versions (their progress files stay valid)
    import hashlib

    legacy = json.dumps({"model": "m", "revision": None, "prompt": prompt.hash, "sampling": sampling, "image": sha},
                        sort_keys=True)
    assert before == hashlib.sha256(legacy.encode()).hexdigest()[:32]
    assert cache_key({**model, "processor_options": {}}, prompt, sampling, sha) == before
    off = cache_key({**model, "processor_options": NO_SPLIT}, prompt, sampling, sha)
    on = cache_key({**model, "processor_options": {"do_image_splitting": True}}, prompt, sampling, sha)
    assert len({before, off, on}) == 3
    assert cache_key({**model, "dtype": "bfloat16"}, prompt, sampling, sha) == before  # only what changes outputs


def test_changed_processor_options_are_not_served_from_the_progress_file(split, whole, tmp_path):
    """A shard rerun with other processor options captions again instead of reusing old rows."""
    prompt = load_prompts()["rsicd_style"]
    sampling = {"max_tokens": MAX_NEW, "temperature": 0.0, "seed": 0}
    images = pl.DataFrame({"image_id": ["airport_4"], "path": [str(IMAGES / NAMES[0])]})
    progress = tmp_path / "progress.jsonl"
    ShardRun(split, [prompt], sampling, batch_size=1).run(images, progress)
    ShardRun(split, [prompt], sampling, batch_size=1).run(images, progress)
    assert len(read_progress(progress)) == 1  # same settings: resumed, nothing redone
    rows = ShardRun(whole, [prompt], sampling, batch_size=1).run(images, progress)
    assert len({row["key"] for row in read_progress(progress)}) == 2
    assert len(rows) == 1 and rows[0]["key"] != read_progress(progress)[0]["key"]  # only the current settings' row
