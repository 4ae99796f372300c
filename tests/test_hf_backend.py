"""The transformers captioning backend on a tiny random LLaVA built offline (gibberish texts:
what is tested is batching, sampling, seeding, token accounting and errors)."""

from pathlib import Path

import pytest

from trsllava.captioning.hf_backend import TransformersBackend
from trsllava.captioning.tiny_models import build_tiny_llava
from trsllava.captioning.types import GenerationRequest, GenerationResult
from trsllava.errors import TrsllavaError

IMAGES = Path(__file__).resolve().parents[1] / "src" / "trsllava" / "data" / "sample" / "images"
NAMES = ["airport_4.jpg", "beach_4.jpg", "bridge_4.jpg"]
PROMPT = "Describe the image in one sentence."


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), seed=0)


@pytest.fixture(scope="module")
def backend(tiny_llava):
    return TransformersBackend(str(tiny_llava), device="cpu", max_new_tokens=8, temperature=0.0, seed=0, batch_size=3)


def requests(n):
    return [GenerationRequest(image_path=str(IMAGES / name), prompt_text=PROMPT, n=n) for name in NAMES]


def test_n_samples_per_request(backend):
    results = backend.generate(requests(2))
    assert len(results) == 3
    for result in results:
        assert isinstance(result, GenerationResult)
        assert len(result.texts) == 2 and all(isinstance(text, str) for text in result.texts)
        assert len(result.finish_reasons) == 2
        assert set(result.finish_reasons) <= {"stop", "length"}
        assert result.completion_tokens > 0
        assert result.completion_tokens <= 2 * 8
        assert result.prompt_tokens > 16  # the 16 image tokens and the text
    assert backend.generate(requests(2)) == results  # same seed, same texts


def test_greedy_same_texts_whatever_the_batch_size(tiny_llava, backend):
    batched = backend.generate(requests(1))
    single = TransformersBackend(str(tiny_llava), device="cpu", max_new_tokens=8, seed=0, batch_size=1)
    one_by_one = single.generate(requests(1))
    assert [r.texts for r in one_by_one] == [r.texts for r in batched]
    assert [r.finish_reasons for r in one_by_one] == [r.finish_reasons for r in batched]
    assert [r.prompt_tokens for r in one_by_one] == [r.prompt_tokens for r in batched]


def test_stop_and_length_finish_reasons(backend):
    """Force EOS on the first request's 3rd token: it stops (EOS counted, not decoded) while
    the others of the batch run to max_new_tokens."""
    eos = backend.tokenizer.eos_token_id
    calls = []

    def force_eos(module, inputs, output):
        calls.append(1)
        if len(calls) >= 3:  # prefill, then one forward per new token
            output = output.clone()
            output[0, :, eos] += 1e4
        return output

    handle = backend.model.get_output_embeddings().register_forward_hook(force_eos)
    try:
        stopped, *others = backend.generate(requests(1))
    finally:
        handle.remove()
    assert stopped.finish_reasons == ["stop"] and stopped.completion_tokens == 3
    assert all(r.finish_reasons == ["length"] and r.completion_tokens == 8 for r in others)


def test_image_downscaling(tiny_llava):
    from PIL import Image

    path = IMAGES / NAMES[0]
    with Image.open(path) as original:
        width, height = original.size
    full = TransformersBackend(str(tiny_llava), max_new_tokens=2).image_loader.load(path)
    assert max(full.size) == max(width, height)
    small = TransformersBackend(str(tiny_llava), max_new_tokens=2, max_image_side=48).image_loader.load(path)
    assert small.mode == "RGB" and max(small.size) == 48


def test_missing_image_names_the_path(backend, tmp_path):
    missing = tmp_path / "no_such_image.jpg"
    bad = requests(1) + [GenerationRequest(image_path=str(missing), prompt_text=PROMPT)]
    with pytest.raises(TrsllavaError, match="no_such_image.jpg"):
        backend.generate(bad)


def test_describe(backend, tiny_llava):
    info = backend.describe()
    assert info["backend"] == "transformers"
    assert info["model_id"] == str(tiny_llava)
    assert info["model_revision"] is None  # a plain local folder has no commit hash
    assert info["dtype"] == "float32"
    assert info["device"] == "cpu"


def test_prompt_uses_the_chat_template(backend):
    prompt = backend._prompt(PROMPT)
    assert prompt.startswith("USER: <image>")
    assert PROMPT in prompt and prompt.endswith("ASSISTANT:")
