"""Captioning throughput: the vLLM backend against the transformers backend, same model, images, machine.

Each backend runs in its own fresh subprocess: ``TransformersBackend`` with this interpreter, ``VLLMBackend``
with ``--vllm-python`` (default ``.venv-vllm/bin/python`` when it exists, else this interpreter, so on a GPU
machine with vllm installed in one environment the script runs unchanged). A child loads the model (timed
separately), does a small warm-up on other images, then generates one request per image: all of them in one
``generate`` call for vLLM, ``--batch-size`` at a time for transformers (``--repeats`` such calls, the fastest
reported). The driver prints per backend
load s, generate s, images/s and generated tokens/s (``completion_tokens``), and the vLLM / transformers
ratios, and writes them to ``bench/results/captioning_throughput.json``.

Equal work: by default both backends must generate exactly ``--max-tokens`` tokens per sample (vLLM:
``min_tokens = max_tokens`` and ``ignore_eos``; transformers: ``generation_config.min_new_tokens``), so
images/s compares like with like. ``--natural-stop`` lets the models stop at EOS instead; then compare
tokens/s, and the script reports the tokens each backend actually generated.

Default model: the tiny random LLaVA of ``trsllava.captioning.tiny_models``, built into a temp folder.
Its texts are meaningless; only throughput is measured, and on CPU it says little about a GPU.

    python bench/captioning_throughput.py                        # tiny model, 32 images, CPU
    python bench/captioning_throughput.py --model llava-hf/llava-1.5-7b-hf --images 256 --max-tokens 256

The driver imports only the standard library; no model is ever downloaded (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
SAMPLE_IMAGES = SRC / "trsllava" / "data" / "sample" / "images"
RESULTS = ROOT / "bench" / "results" / "captioning_throughput.json"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}
TINY_NOTE = ("model: the tiny RANDOM LLaVA (trsllava.captioning.tiny_models, 1.6 M parameters) built into a "
             "temp folder: its texts are meaningless, only throughput is measured")

CHILD_ENV = {
    "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    # vLLM-CPU (ignored by the CUDA build): KV cache size in GiB, no telemetry
    "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
}


# ------------------------------------------------------------------------------------------------ child
def _child(backend_name: str, spec_path: str) -> int:
    """Load one backend, warm up, time the generation; print ``RESULT {json}`` as the last line."""
    sys.path.insert(0, str(SRC))  # this checkout's package, whatever the venv has installed
    spec = json.loads(Path(spec_path).read_text())
    from trsllava.captioning.types import GenerationRequest

    forced = not spec["natural_stop"]
    max_tokens = spec["max_tokens"]
    out: dict = {"backend": backend_name, "python": sys.executable}

    t0 = time.perf_counter()
    if backend_name == "transformers":
        import torch
        import transformers

        from trsllava.captioning.hf_backend import TransformersBackend

        backend = TransformersBackend(spec["model"], dtype=spec["dtype"], device=spec["device"],
                                      max_new_tokens=max_tokens, temperature=0.0, seed=0,
                                      batch_size=spec["batch_size"])
        if forced:  # no EOS before max_new_tokens: every sample is exactly max_tokens long
            backend.model.generation_config.min_new_tokens = max_tokens
        if backend.device.type == "cuda":
            torch.cuda.synchronize()
        out["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__}
        out["torch_threads"] = torch.get_num_threads()
        close = lambda: None
    else:
        import vllm
        from vllm import SamplingParams
        from vllm.platforms import current_platform

        from trsllava.captioning.vllm_backend import VLLMBackend

        class ForcedLengthVLLM(VLLMBackend):
            """The package's sampling parameters, plus min_tokens = max_tokens and ignore_eos."""

            def _sampling_params(self, request, index):
                params = super()._sampling_params(request, index)
                if not forced:
                    return params
                kept = {name: getattr(params, name) for name in
                        ("n", "max_tokens", "seed", "temperature", "top_p", "top_k", "structured_outputs")}
                return SamplingParams(**kept, min_tokens=self.max_new_tokens, ignore_eos=True)

        on_cpu = getattr(current_platform, "device_type", "") == "cpu"
        eager = {"auto": on_cpu, "yes": True, "no": False}[spec["enforce_eager"]]
        engine_kwargs = {}
        if not spec["prefix_caching"]:  # every image is new to the engine, as for a real captioning run
            engine_kwargs.update(enable_prefix_caching=False, mm_processor_cache_gb=0)
        backend = ForcedLengthVLLM(spec["model"], dtype=spec["dtype"], device=spec["device"],
                                   max_new_tokens=max_tokens, temperature=0.0, seed=0,
                                   max_model_len=spec["max_model_len"], max_num_seqs=spec["max_num_seqs"],
                                   enforce_eager=eager, gpu_memory_utilization=spec["gpu_memory_utilization"],
                                   engine_kwargs=engine_kwargs)
        out["versions"] = {"vllm": getattr(vllm, "__version__", None)}
        out["engine"] = {key: value for key, value in backend.engine_kwargs.items()
                         if key not in ("model", "structured_outputs_config")}
        close = backend.close
    out["load_s"] = time.perf_counter() - t0
    out["describe"] = backend.describe()

    def requests(paths):
        return [GenerationRequest(path, spec["prompt_text"], n=spec["n"]) for path in paths]

    def sync():
        if backend_name == "transformers" and backend.device.type == "cuda":
            import torch
            torch.cuda.synchronize()

    try:
        t0 = time.perf_counter()
        backend.generate(requests(spec["warmup_images"]))
        sync()
        out["warmup_s"] = time.perf_counter() - t0
        out["warmup_requests"] = len(spec["warmup_images"])

        batch = requests(spec["images"])
        times, results = [], None
        for _ in range(spec["repeats"]):  # the same call again: the fastest one is reported
            t0 = time.perf_counter()
            outcome = backend.generate(batch)
            sync()
            times.append(time.perf_counter() - t0)
            results = results or outcome
        out["generate_s"] = min(times)
        out["generate_s_all"] = times
    finally:
        close()

    reasons: dict[str, int] = {}
    for result in results:
        for reason in result.finish_reasons:
            reasons[reason] = reasons.get(reason, 0) + 1
    samples = sum(len(result.texts) for result in results)
    out.update(
        requests=len(results), samples=samples,
        completion_tokens=sum(result.completion_tokens for result in results),
        prompt_tokens=sum(result.prompt_tokens for result in results),
        finish_reasons=reasons,
        texts=[result.texts for result in results],
    )
    out["images_per_s"] = len(results) / out["generate_s"]
    out["tokens_per_s"] = out["completion_tokens"] / out["generate_s"]
    out["forced_length_ok"] = (out["completion_tokens"] == samples * max_tokens) if forced else None
    sys.stdout.flush()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------- driver
def _default_vllm_python() -> str:
    candidate = ROOT / ".venv-vllm" / "bin" / "python"
    return str(candidate) if candidate.exists() else sys.executable


def _image_list(folder: Path, count: int, warmup: int) -> tuple[list[str], list[str], bool]:
    """``count`` measured images and ``warmup`` warm-up images, warm-up ones taken from the end of the
    sorted folder so they differ from the measured ones where the folder is large enough. When
    ``count`` exceeds the folder, images repeat (cycled): returned flag True."""
    files = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        sys.exit(f"no images in {folder}")
    measured = [files[i % len(files)] for i in range(count)]
    warm = files[::-1][:warmup] if warmup else []
    return measured, warm, count > len(files)


def _prompt_text(prompt: str) -> str:
    """A packaged (or project) prompt id, read in a subprocess so the driver stays light; else the text."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from trsllava.captioning.prompts import "
            "load_prompts; p = load_prompts(); print(json.dumps(p[sys.argv[2]].text if sys.argv[2] in p else None))")
    done = subprocess.run([sys.executable, "-c", code, str(SRC), prompt], capture_output=True, text=True,
                          check=False, env={**os.environ, **CHILD_ENV})
    if done.returncode != 0:
        sys.exit(f"cannot load prompts:\n{done.stderr[-2000:]}")
    text = json.loads(done.stdout.strip().splitlines()[-1])
    return text if text is not None else prompt


def _run_child(python: str, backend: str, spec_file: Path, log_file: Path, timeout: float) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--child", backend, "--spec", str(spec_file)]
    env = {**os.environ, **CHILD_ENV}
    print(f"[{backend}] {python} (log: {log_file})", flush=True)
    t0 = time.perf_counter()
    with open(log_file, "w") as log:
        try:
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, timeout=timeout, check=False,
                                  cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"backend": backend, "error": f"timed out after {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = Path(log_file).read_text(errors="replace")[-3000:]
        return {"backend": backend, "error": f"rc={done.returncode}", "log_tail": tail}
    result = json.loads(lines[-1][len("RESULT "):])
    result["process_s"] = time.perf_counter() - t0
    return result


def _ratio(a, b):
    return a / b if a and b else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", help="local folder or hub id in the local cache (default: build the tiny "
                                        "random LLaVA into a temp folder)")
    parser.add_argument("--images", type=int, default=32, help="images to caption (cycled if the folder has fewer)")
    parser.add_argument("--image-dir", type=Path, default=SAMPLE_IMAGES)
    parser.add_argument("--prompt", default="rsicd_style", help="a prompt id from load_prompts(), or literal text")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--n", type=int, default=1, help="samples per image (n > 1 samples at temperature 1)")
    parser.add_argument("--batch-size", type=int, default=8, help="transformers batch size")
    parser.add_argument("--warmup", type=int, default=None,
                        help="warm-up requests before the timed calls (default: --batch-size)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed generate calls per backend (same process); the fastest is reported")
    parser.add_argument("--vllm-python", default=_default_vllm_python(), help="interpreter that has vllm")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the transformers backend")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None,
                        help="both backends (default: float32 for the tiny model, else auto; vLLM-CPU's auto "
                             "turns a float32 model into bfloat16)")
    parser.add_argument("--max-model-len", type=int, default=2048,
                        help="vLLM max_model_len (on CPU it also turns chunked prefill off, see VLLMBackend)")
    parser.add_argument("--max-num-seqs", type=int, default=None, help="vLLM max_num_seqs (default: vLLM's)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=None)
    parser.add_argument("--enforce-eager", choices=("auto", "yes", "no"), default="auto",
                        help="vLLM eager mode; auto = eager on CPU, CUDA graphs on GPU")
    parser.add_argument("--prefix-caching", action="store_true",
                        help="keep vLLM's prefix and multimodal caches on (off by default: repeated or warm-up "
                             "images would be served from cache)")
    parser.add_argument("--natural-stop", action="store_true",
                        help="let samples stop at EOS instead of forcing --max-tokens tokens")
    parser.add_argument("--backends", default="transformers,vllm")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per backend subprocess")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child, args.spec)

    started = time.perf_counter()
    if args.warmup is None:
        args.warmup = args.batch_size
    measured, warm, cycled = _image_list(args.image_dir, args.images, args.warmup)
    prompt_text = _prompt_text(args.prompt)
    backends = [name.strip() for name in args.backends.split(",") if name.strip()]
    with tempfile.TemporaryDirectory(prefix="trsllava-bench-") as tmp:
        tmp = Path(tmp)
        model, tiny = args.model, args.model is None
        if args.dtype is None:
            args.dtype = "float32" if tiny else "auto"
        if tiny:
            model = str(tmp / "tiny-llava")
            path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
            done = subprocess.run([sys.executable, "-m", "trsllava.captioning.tiny_models", model, "0"],
                                  capture_output=True, text=True, check=False,
                                  env={**os.environ, **CHILD_ENV, "PYTHONPATH": path})
            if done.returncode != 0:
                sys.exit(f"building the tiny model failed:\n{done.stderr[-2000:]}")
            print(TINY_NOTE, flush=True)
        spec = {"model": model, "images": measured, "warmup_images": warm, "prompt_text": prompt_text,
                "max_tokens": args.max_tokens, "n": args.n, "batch_size": args.batch_size, "device": args.device,
                "dtype": args.dtype, "max_model_len": args.max_model_len, "max_num_seqs": args.max_num_seqs,
                "gpu_memory_utilization": args.gpu_memory_utilization, "enforce_eager": args.enforce_eager,
                "prefix_caching": args.prefix_caching, "repeats": max(1, args.repeats), "natural_stop": args.natural_stop}
        spec_file = tmp / "spec.json"
        spec_file.write_text(json.dumps(spec))
        logs = Path(tempfile.gettempdir())
        runs = {}
        for name in backends:
            python = args.vllm_python if name == "vllm" else args.python
            runs[name] = _run_child(python, name, spec_file, logs / f"captioning_throughput.{name}.log",
                                    args.timeout)

    hf, vl = runs.get("transformers", {}), runs.get("vllm", {})
    print(f"\n{len(measured)} images{' (cycled: fewer in the folder)' if cycled else ''}, prompt "
          f"{args.prompt!r}, n={args.n}, max_tokens={args.max_tokens} "
          f"({'natural stop at EOS' if args.natural_stop else 'forced: every sample max_tokens long'}), "
          f"transformers batch {args.batch_size}, warm-up {len(warm)} requests, fastest of {max(1, args.repeats)} "
          f"timed calls")
    header = f"{'backend':<13}{'device':>7}{'dtype':>9}{'load s':>8}{'warm s':>8}{'gen s':>8}" \
             f"{'images/s':>10}{'tokens':>8}{'tokens/s':>10}{'prompt tok':>11}  finish"
    print(header)
    for name, run in runs.items():
        if "error" in run:
            print(f"{name:<13} FAILED: {run['error']}\n{run.get('log_tail', '')}")
            continue
        d = run["describe"]
        print(f"{name:<13}{d['device']:>7}{d['dtype']:>9}{run['load_s']:>8.1f}{run['warmup_s']:>8.1f}"
              f"{run['generate_s']:>8.2f}{run['images_per_s']:>10.2f}{run['completion_tokens']:>8}"
              f"{run['tokens_per_s']:>10.1f}{run['prompt_tokens'] // max(1, run['requests']):>11}  "
              f"{run['finish_reasons']}")
    ratios = {"images_per_s": _ratio(vl.get("images_per_s"), hf.get("images_per_s")),
              "tokens_per_s": _ratio(vl.get("tokens_per_s"), hf.get("tokens_per_s")),
              "load_s": _ratio(vl.get("load_s"), hf.get("load_s"))}
    same_texts = None
    if "texts" in hf and "texts" in vl and args.n == 1:
        same_texts = sum(a == b for a, b in zip(hf["texts"], vl["texts"]))
    dtypes = {run["describe"]["dtype"] for run in runs.values() if "describe" in run}
    if len(dtypes) > 1:
        print(f"WARNING: the backends ran in different dtypes {sorted(dtypes)}: set --dtype")
    if ratios["images_per_s"]:
        print(f"vLLM / transformers: images/s x{ratios['images_per_s']:.2f}, tokens/s x{ratios['tokens_per_s']:.2f}"
              f" (load time x{ratios['load_s']:.2f})")
        if not args.natural_stop:
            print(f"equal work: every sample {args.max_tokens} tokens: transformers "
                  f"{hf.get('forced_length_ok')}, vLLM {vl.get('forced_length_ok')}")
        if same_texts is not None:
            print(f"greedy texts identical for {same_texts} of {len(measured)} images")
    if tiny:
        print("NOTE: " + TINY_NOTE)

    for run in runs.values():
        texts = run.pop("texts", None)
        if texts:
            run["first_texts"] = texts[:3]
    payload = {
        "benchmark": "captioning_throughput",
        "date": datetime.date.today().isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": args.model or "tiny random LLaVA (built into a temp folder)",
        "note": TINY_NOTE if tiny else None,
        "options": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
                    if key not in ("child", "spec")},
        "images": len(measured), "images_cycled": cycled, "prompt_text": prompt_text,
        "backends": runs, "ratios_vllm_over_transformers": ratios, "greedy_texts_identical": same_texts,
        "total_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}  (total {payload['total_s']:.0f} s)")
    return 0 if all("error" not in run for run in runs.values()) else 1


if __name__ == "__main__":  # vLLM starts its engine processes with spawn: keep the guard
    sys.exit(main())
