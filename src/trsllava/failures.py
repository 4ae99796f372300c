"""Per-image failures of a stage that reads images (captioning, the CLIP baseline): one report
format and one rule.

A stage lists the images it could not process, each with a status and the reason, in a report
(``<captioner>.quality.json`` under ``images``; ``quality.json`` beside the CLIP embeddings) and
carries on. The stage that consumes its output then refuses, in one line naming the report, when
more than ``max_failure_share`` of the images failed (default 5%): a few bad files are a fact of
real archives, a large share means a wrong folder, format or model and numbers not worth reading.
"""

from __future__ import annotations

from pathlib import Path

from .errors import TrsllavaError

DEFAULT_MAX_FAILURE_SHARE = 0.05


def failure_report(failures: dict[str, tuple[str, str]], n_images: int, max_share: float) -> dict:
    """``failures``: image id -> (status, reason). The report: image count, failed count and
    share, the threshold, and the failures sorted by image id."""
    share = len(failures) / n_images if n_images else 0.0
    return {
        "images": n_images,
        "failed_images": len(failures),
        "failed_share": round(share, 6),
        "max_failure_share": float(max_share),
        "failures": [{"image_id": image, "status": status, "reason": reason}
                     for image, (status, reason) in sorted(failures.items())],
    }


def check_failure_share(report: dict, what: str, key: str, report_path: Path) -> None:
    """Raise ``TrsllavaError`` (one line naming ``report_path`` and the config ``key``) when the
    report's failed share exceeds its ``max_failure_share``."""
    failed, total, allowed = report["failed_images"], report["images"], report["max_failure_share"]
    if total and failed / total > allowed:
        raise TrsllavaError(
            f"{what}: {failed} of {total} images ({failed / total:.1%}) could not be read or processed, more than "
            f"{key} ({allowed:.1%}); the images and reasons are listed in {report_path} (fix or remove them, or raise {key})"
        )
