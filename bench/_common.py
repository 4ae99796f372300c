"""Helpers shared by the benchmark scripts (not part of the package)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

os.environ.setdefault(
    "HF_HUB_OFFLINE", "1"
)  # there is no model hub here: never download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
RSICD_JSON = Path("/work/shared/data/rsicd/dataset_rsicd.json")
CACHE_DIR = Path(os.environ.get("TRSLLAVA_CACHE", Path.home() / ".cache" / "trsllava"))
BENCH_CACHE = CACHE_DIR / "bench"
MINILM_ENTRY = {
    "type": "sentence-transformers",
    "model": "minilm",
    "device": "cpu",
    "batch_size": 64,
}

STAND_IN_NOTE = (
    "STAND-IN database texts: no VLM caption set exists for RSICD here, so every image's own 5 human "
    "captions serve as its 'generated' caption set (prompt 'stand-in', variant 0..4). This measures "
    "speed and memory only; recalls computed from it mean nothing."
)


def machine() -> dict:
    return {
        "date": datetime.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def write_results(name: str, payload: dict, path: Path | None = None) -> Path:
    path = Path(path) if path else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"benchmark": name, "machine": machine(), **payload},
            indent=2,
            default=_plain,
        )
        + "\n"
    )
    return path


def _plain(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    return str(value)


def rsicd_spec(
    gallery: str = "split", annotations: Path = RSICD_JSON, split: str = "test"
):
    from trsllava.datasets import load as dataset_load

    return dataset_load.DatasetSpec.from_config(
        "rsicd",
        {
            "format": "karpathy",
            "annotations": str(annotations),
            "split": split,
            "gallery": gallery,
        },
    )


def stand_in_captions(references):
    """The stand-in caption table: each image's human captions as its database texts."""
    import polars as pl

    from trsllava.tables import CAPTIONS, conform

    table = references.with_columns(
        pl.int_range(pl.len()).over("image_id").cast(pl.Int64).alias("variant"),
        pl.lit("stand-in").alias("captioner"),
        pl.lit("stand-in").alias("prompt"),
        pl.lit("import").alias("backend"),
    )
    return conform(table, CAPTIONS, "stand-in captions")


def unique_texts(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Unique texts in first-seen order and, per input text, its position among them."""
    import numpy as np

    index: dict[str, int] = {}
    inverse = np.fromiter(
        (index.setdefault(t, len(index)) for t in texts),
        dtype=np.int64,
        count=len(texts),
    )
    return list(index), inverse


# -- memory -------------------------------------------------------------------------------------
def rss_mb() -> float:
    """Current resident set size (VmRSS) in MiB."""
    return _status_kb("VmRSS") / 1024


def hwm_mb() -> float:
    """Peak resident set size of this process's address space (VmHWM) in MiB."""
    return _status_kb("VmHWM") / 1024


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return float("nan")


def table(headers: list[str], rows: list[list], aligns: str | None = None) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
        for i, h in enumerate(headers)
    ]
    aligns = aligns or "l" + "r" * (len(headers) - 1)

    def line(values):
        return "  ".join(
            v.ljust(w) if a == "l" else v.rjust(w)
            for v, w, a in zip(values, widths, aligns)
        )

    return "\n".join(
        [line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells]
    )
