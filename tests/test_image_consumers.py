"""Every consumer of pixels gets the one loader's pixels (trsllava.images.load_rgb): the transformers
and vLLM backend inputs, the OpenAI payload, CLIP, the gallery thumbnails; and the captioning cache
key changes with the loader's options. Checked on the images of the failure kinds: 12-bit data in a
16-bit file (C04), a degenerate size (C05); the real vLLM engine runs them in test_vllm_backends."""

import base64
import io
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from trsllava.captioning.hf_backend import TransformersBackend
from trsllava.captioning.prompts import load_prompts
from trsllava.captioning.shard import ShardRun
from trsllava.captioning.tiny_models import build_tiny_llava
from trsllava.captioning.types import GenerationRequest, GenerationResult
from trsllava.images import ImageLoader, ImageOptions, load_rgb

CASES = Path(__file__).resolve().parent / "data" / "cases"
HIGH_BIT = CASES / "C04" / "pan_12bit.png"
SLIVER = CASES / "C05" / "sliver_499x1.png"
PATHS = [HIGH_BIT, SLIVER]


def same(a, b) -> bool:
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b))


class Recording:
    """Wraps a processor: records the images it is called with, delegates everything."""

    def __init__(self, inner):
        self.inner, self.images = inner, []

    def __call__(self, *args, images=None, **kwargs):
        self.images += list(images or [])
        return self.inner(*args, images=images, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), seed=0)


def test_transformers_backend_gets_the_loader_pixels(tiny_llava):
    options = ImageOptions(stretch="percentile")
    backend = TransformersBackend(str(tiny_llava), device="cpu", max_new_tokens=2, temperature=0.0, max_image_side=256,
                                  image_options=options)
    backend.processor = Recording(backend.processor)
    results = backend.generate([GenerationRequest(str(path), "Describe.") for path in PATHS])
    assert len(results) == 2
    for seen, path in zip(backend.processor.images, PATHS):
        assert same(seen, load_rgb(path, options=options, max_side=256))
    assert (np.asarray(backend.processor.images[0]) == 255).all(axis=-1).mean() < 0.10  # not the white square of before
    assert backend.processor.images[1].size == (256, 32)  # 499 x 1: capped at 256, then padded


def test_vllm_backend_gets_the_loader_pixels():
    """The prompt-building part of VLLMBackend.generate, with the engine replaced by a recorder
    (the real engine runs the same images in tests/vllm_driver.py)."""
    from trsllava.captioning.vllm_backend import VLLMBackend

    class Engine:
        prompts = None

        def generate(self, prompts, params, use_tqdm=False):
            Engine.prompts = prompts
            raise RuntimeError("recorded")

    class Template:
        @staticmethod
        def apply_chat_template(messages, **_):
            return "USER: <image>"

    backend = VLLMBackend.__new__(VLLMBackend)  # no engine: vllm is not installed in this venv
    backend.image_loader = ImageLoader(ImageOptions(), 128)
    backend.llm, backend._template_owner = Engine(), Template()
    backend._sampling_params = lambda request, index: None
    with pytest.raises(RuntimeError, match="recorded"):
        backend.generate([GenerationRequest(str(path), "Describe.") for path in PATHS])
    for prompt, path in zip(Engine.prompts, PATHS):
        assert same(prompt["multi_modal_data"]["image"], load_rgb(path, max_side=128))
    given = load_rgb(CASES / "C05" / "dot_1x1.png")
    with pytest.raises(RuntimeError):
        backend.generate([GenerationRequest("unused-path", "x", image=given)])
    assert Engine.prompts[0]["multi_modal_data"]["image"] is given  # pixels loaded by the shard are used as they are


def test_openai_payload_is_the_loader_pixels_as_png():
    pytest.importorskip("httpx")
    from trsllava.captioning.openai_backend import OpenAIBackend

    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m", client="httpx", image_options=ImageOptions(min_side=48))
    for path in PATHS + [CASES / "C06" / "airport_1.jpg"]:
        url = backend._payload(GenerationRequest(str(path), "Describe."), 0)["messages"][0]["content"][0]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")  # re-encoded losslessly, never the file's own bytes
        sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert sent.format == "PNG" and same(sent, load_rgb(path, options=ImageOptions(min_side=48)))


def test_clip_gets_the_loader_pixels(tmp_path):
    from trsllava.baselines.clip import embed_images, load_clip
    from trsllava.baselines.tiny_clip import build_tiny_clip

    model, processor, device = load_clip({"model": str(build_tiny_clip(tmp_path / "clip")), "device": "cpu"})
    recording = Recording(processor)
    vectors, failures = embed_images(model, recording, device, [str(p) for p in PATHS], loader=ImageLoader())
    assert vectors.shape[0] == 2 and failures == []
    for seen, path in zip(recording.images, PATHS):
        assert same(seen, load_rgb(path))


def test_gallery_thumbnail_is_the_loader_pixels():
    from trsllava.search.gallery_html import THUMBNAIL_SIDE, thumbnail_uri

    uri = thumbnail_uri(str(HIGH_BIT))
    thumbnail = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("L")).astype(int)
    expected = np.asarray(load_rgb(HIGH_BIT, max_side=THUMBNAIL_SIDE).convert("L")).astype(int)
    assert thumbnail.shape == expected.shape and np.abs(thumbnail - expected).mean() < 3  # JPEG of the same pixels
    reference = np.asarray(Image.open(CASES / "C04" / "pan_8bit.png").convert("L")).astype(int)
    assert (thumbnail >= 250).mean() < 0.05 and np.abs(thumbnail - reference).mean() < 3  # was 100% white
    assert thumbnail_uri(str(CASES / "C06" / "notes.jpg")) is None  # unreadable: the page shows "no image file"


class Stub:
    """A backend that answers every request with one fixed text."""

    max_image_side = None

    def describe(self):
        return {"backend": "stub", "model_id": "stub", "model_revision": None}

    def generate(self, requests):
        return [GenerationResult(["a field"] * r.n, ["stop"] * r.n, 1, r.n) for r in requests]


def test_cache_key_covers_the_loader(tmp_path):
    prompt = load_prompts()["rsicd_style"]
    images = pl.DataFrame({"image_id": ["pan"], "path": [str(HIGH_BIT)]})
    sampling = {"max_tokens": 4, "temperature": 0.0, "seed": 0}

    def key(loader, folder):
        return ShardRun(Stub(), [prompt], sampling, loader=loader).run(images, tmp_path / folder / "p.jsonl")[0]["key"]

    default = key(ImageLoader(), "a")
    assert key(ImageLoader(), "b") == default  # same bytes, same loader: same key
    assert key(ImageLoader(ImageOptions(stretch="percentile")), "c") != default  # the model sees other pixels
    assert key(ImageLoader(max_side=64), "d") != default
    assert key(ImageLoader(ImageOptions(min_side=8)), "e") != default
