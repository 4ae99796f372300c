"""One captioning job: every configured prompt for one shard of a dataset's images, resumable.

Each finished (image, prompt) is appended to the shard's progress file (JSON Lines, flushed and
fsynced per batch) under a cache key covering the model and its revision, the prompt's hash, the
sampling parameters, the image file's bytes and the image loader's version and options (what the
model sees: ``trsllava.images``). Finished work is found by key in *every* progress file of the
captioner's progress folder, not only the shard's own: a rerun after a kill, with another number
of shards, another batch size or the images in another order captions only what no file holds. A
torn last line (a kill mid-write) is ignored and redone, and a key counts as finished only when
all of its samples are there. Sampled outputs are seeded per request from the key, so a resumed
shard writes the same texts as an uninterrupted one.

A bad image never kills the shard: a file that cannot be read or decoded (missing, truncated, not
an image) becomes rows of status ``unreadable``, and an image on which the backend itself fails
(alone in its call) rows of status ``error``, each with the reason, in the shard's output and the
quality report. They are not written to the progress file, so the next run of the shard tries
them again (a repaired file has new bytes, hence a new key, anyway). Only when
``SYSTEMIC_ERRORS`` images in a row fail in the backend does the shard stop: the model or the
server is broken, not the images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from ..errors import TrsllavaError
from ..failures import failure_report
from ..hashing import sha256_of
from ..images import ImageLoader
from .prompts import JOB_FAILURES, Prompt, parse_output
from .types import GenerationRequest

log = logging.getLogger(__name__)
IMAGE_FAILURES = JOB_FAILURES  # statuses of (image, prompt) jobs that produced no output
SYSTEMIC_ERRORS = 8  # backend failures in a row, each on an image alone, that stop the shard


def shard_images(images: pl.DataFrame, shard: int, shards: int) -> pl.DataFrame:
    """Deterministic round-robin split of the images sorted by id (balanced, stable)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in 0..{shards - 1}")
    return images.sort("image_id").gather_every(shards, offset=shard)


def cache_key(model: dict, prompt: Prompt, sampling: dict, image_sha256: str, loader: dict | None = None) -> str:
    """The job's key: model, revision, prompt hash, sampling, image bytes, the image loader's
    fingerprint (``ImageLoader.fingerprint``: version, options, longer-side cap) and the processor
    options when the backend reports any (they change the image tokens the model sees). Without
    processor options and loader the key is the one earlier versions computed."""
    fields = {"model": model.get("model_id"), "revision": model.get("model_revision"), "prompt": prompt.hash,
              "sampling": sampling, "image": image_sha256}
    if model.get("processor_options"):
        fields["processor_options"] = model["processor_options"]
    if loader is not None:
        fields["image_loader"] = loader
    material = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def drop_torn_tail(path: Path) -> None:
    """Cut a partial last line (a kill mid-write) so that appended rows start on a line of their own."""
    if not path.is_file():
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)
            log.warning("%s: dropped an incomplete last line (the job was interrupted while writing)", path)


def read_progress(path: Path) -> list[dict]:
    """Rows already finished; a torn final line from a killed writer is dropped."""
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: ignoring an incomplete line (the job was interrupted while writing)", path)
    return rows


def progress_files(progress_path: Path) -> list[Path]:
    """The shard's own progress file, then every other ``*.jsonl`` of its folder (other shard
    layouts, earlier runs), in name order."""
    others = sorted(p for p in Path(progress_path).parent.glob("*.jsonl") if p != Path(progress_path))
    return [Path(progress_path), *others]


def finished_rows(progress_path: Path, wanted: dict[str, set]) -> tuple[dict[str, list[dict]], dict[str, Path]]:
    """(rows by key, file of each key) of the keys in ``wanted`` whose samples (``wanted[key]``:
    the set of variants) are all present in one of the progress files; the first file that holds a
    key whole wins."""
    done, where = {}, {}
    for path in progress_files(progress_path):
        groups: dict[str, dict] = {}
        for row in read_progress(path):
            key = row.get("key")
            if key in wanted and key not in done:
                groups.setdefault(key, {}).setdefault(row.get("variant"), row)  # first copy of each sample
        for key, by_variant in groups.items():
            if set(by_variant) == wanted[key]:
                done[key] = [by_variant[v] for v in sorted(by_variant, key=lambda v: -1 if v is None else v)]
                where[key] = path
    return done, where


@dataclass
class _Job:
    key: str
    image_id: str
    path: str
    prompt: Prompt


@dataclass
class ShardRun:
    """Caption ``images`` with every prompt through ``backend`` (``.generate(list[GenerationRequest])
    -> list[GenerationResult]``, ``.describe()``). ``loader`` turns files into pixels (default:
    the default ``ImageOptions`` and the backend's ``max_image_side``)."""

    backend: object
    prompts: list[Prompt]
    sampling: dict  # what the backend was configured with (max_tokens, temperature, seed, ...)
    batch_size: int = 4
    loader: ImageLoader | None = None
    _errors_in_a_row: int = dataclasses.field(default=0, init=False, repr=False)

    def __post_init__(self):
        if self.loader is None:
            self.loader = ImageLoader(max_side=getattr(self.backend, "max_image_side", None))

    def run(self, images: pl.DataFrame, progress_path: Path) -> list[dict]:
        """Rows of every (image, prompt, sample) of ``images``: finished ones (from any progress
        file, else captioned now and appended to ``progress_path``) and failed ones."""
        model = self.backend.describe()
        loader = self.loader.fingerprint()
        jobs, failures = [], []
        for image_id, path in images.select("image_id", "path").iter_rows():
            if path is None:
                raise TrsllavaError(f"image '{image_id}' has no file: captioning needs the dataset's `images` folder")
            try:
                sha = sha256_of(path)
            except OSError as exc:
                reason = f"image {path}: " + ("file not found" if isinstance(exc, FileNotFoundError) else f"cannot be read: {exc}")
                failures += self._failed([_Job("", image_id, path, p) for p in self.prompts], "unreadable", reason, model)
                continue
            jobs += [_Job(cache_key(model, p, self.sampling, sha, loader), image_id, path, p) for p in self.prompts]
        wanted = {job.key: set(range(job.prompt.variants)) if job.prompt.variants > 1 else {None} for job in jobs}
        done, where = finished_rows(progress_path, wanted)
        pending = [job for job in jobs if job.key not in done]
        log.info("shard: %d image x prompt jobs to run, %d already finished", len(pending), len(jobs) - len(pending))
        elsewhere = sum(1 for path in where.values() if path != Path(progress_path))
        if elsewhere:
            log.info("shard: %d finished jobs found in other progress files of %s (another shard layout or an "
                     "earlier run): reused", elsewhere, Path(progress_path).parent)
        progress_path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(progress_path)
        with open(progress_path, "a", encoding="utf-8") as out, tqdm(total=len(pending), desc="captioning", unit="job") as bar:
            for start in range(0, len(pending), self.batch_size):
                batch = pending[start : start + self.batch_size]
                rows, failed = self._caption_batch(batch, model)
                out.write("".join(json.dumps(row) + "\n" for row in rows))
                out.flush()
                os.fsync(out.fileno())
                failures += failed
                bar.update(len(batch))
        for image_id, rows in _by_image(failures).items():
            log.warning("image %s: %s: %s", image_id, rows[0]["status"], rows[0]["detail"])
        # rows of earlier settings (other sampling or processor options) stay in the files but are not results
        done, _ = finished_rows(progress_path, wanted)
        return [row for job in jobs if job.key in done for row in done[job.key]] + failures

    def _request(self, seed_material: str, job: _Job, n: int, image) -> GenerationRequest:
        # seeded per request: the same image and settings give the same samples however jobs are batched
        seed = int(hashlib.sha256(seed_material.encode()).hexdigest()[:8], 16)
        return GenerationRequest(image_path=job.path, prompt_text=job.prompt.text, n=n, json_schema=job.prompt.schema,
                                 seed=seed, image=image)

    def _caption_batch(self, batch: list[_Job], model: dict) -> tuple[list[dict], list[dict]]:
        """(finished rows, failed rows) of the batch's jobs: the images are loaded (a file that
        cannot be is a failure of its jobs), one backend call runs them, one more the retries of
        invalid JSON."""
        pixels, failures, runnable = {}, [], []
        for job in batch:
            if job.path not in pixels:
                try:
                    pixels[job.path] = self.loader.load(job.path)
                except TrsllavaError as error:
                    pixels[job.path] = error
            if isinstance(pixels[job.path], TrsllavaError):
                failures += self._failed([job], "unreadable", str(pixels[job.path]), model)
            else:
                runnable.append(job)
        results = self._generate([self._request(job.key, job, job.prompt.variants, pixels[job.path]) for job in runnable])
        rows, retries = [], []
        for job, result in zip(runnable, results):
            if isinstance(result, Exception):
                failures += self._failed([job], "error", f"{type(result).__name__}: {_one_line(result)}", model)
                continue
            for variant, (raw, finish) in enumerate(zip(result.texts, result.finish_reasons)):
                parsed = parse_output(job.prompt, raw, finish)
                rows.append(self._row(job.key, job.image_id, job.prompt, variant, raw, finish, parsed, 1, model))
                if parsed.status == "invalid_json":  # one retry, as a fresh single sample
                    retries.append((len(rows) - 1, self._request(f"{job.key}/retry/{variant}", job, 1, pixels[job.path])))
        if retries:
            for (position, _), result in zip(retries, self._generate([r for _, r in retries])):
                if isinstance(result, Exception):  # the first answer stands (invalid JSON)
                    continue
                old = rows[position]
                prompt = next(p for p in self.prompts if p.id == old["prompt"])
                raw, finish = result.texts[0], result.finish_reasons[0]
                parsed = parse_output(prompt, raw, finish)
                rows[position] = self._row(old["key"], old["image_id"], prompt, old["variant"] or 0, raw, finish, parsed, 2, model)
        return rows, failures

    def _generate(self, requests: list[GenerationRequest]) -> list:
        """One result per request, or the exception it raised when run alone: a failing call is
        split into single requests, so one bad image fails alone. ``SYSTEMIC_ERRORS`` failures in a
        row stop the shard (finished work is in the progress file)."""
        if not requests:
            return []
        try:
            results = list(self.backend.generate(requests))
            self._errors_in_a_row = 0
            return results
        except Exception as error:  # noqa: BLE001 - isolated below, request by request
            if len(requests) == 1:
                return [self._count_error(requests[0], error)]
            log.warning("backend call of %d requests failed (%s: %s); running them one at a time", len(requests),
                        type(error).__name__, _one_line(error))
        results = []
        for request in requests:
            try:
                results.append(self.backend.generate([request])[0])
                self._errors_in_a_row = 0
            except Exception as error:  # noqa: BLE001
                results.append(self._count_error(request, error))
        return results

    def _count_error(self, request: GenerationRequest, error: Exception) -> Exception:
        self._errors_in_a_row += 1
        if self._errors_in_a_row >= SYSTEMIC_ERRORS:
            raise TrsllavaError(
                f"captioning stopped: the backend failed on {self._errors_in_a_row} images in a row, each alone (last: "
                f"{request.image_path}: {type(error).__name__}: {_one_line(error)}); the model or its server is broken, "
                "not the images. Finished captions are kept in the progress files"
            ) from error
        return error

    def _failed(self, jobs: list[_Job], status: str, detail: str, model: dict) -> list[dict]:
        """The rows of jobs that produced no output: one per job, variant None, no text."""
        return [{
            "key": job.key or None, "image_id": job.image_id, "prompt": job.prompt.id, "prompt_hash": job.prompt.hash,
            "variant": None, "raw": "", "finish_reason": None, "status": status, "detail": detail, "attempts": 1,
            "fields": [], "model_id": model.get("model_id"), "model_revision": model.get("model_revision"),
            "backend": model.get("backend"),
        } for job in jobs]

    @staticmethod
    def _row(key, image_id, prompt: Prompt, variant, raw, finish, parsed, attempts, model) -> dict:
        return {
            "key": key, "image_id": image_id, "prompt": prompt.id, "prompt_hash": prompt.hash,
            "variant": variant if prompt.variants > 1 else None, "raw": raw, "finish_reason": finish,
            "status": parsed.status, "detail": parsed.detail, "attempts": attempts,
            "fields": [[field, text] for field, text in parsed.fields.items()],
            "model_id": model.get("model_id"), "model_revision": model.get("model_revision"),
            "backend": model.get("backend"),
        }


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _by_image(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["image_id"], []).append(row)
    return grouped


def image_failures(rows: list[dict], n_images: int, max_share: float) -> dict:
    """The quality report's ``images`` section (``failures.failure_report``): images with a job
    that produced no output (``IMAGE_FAILURES``), each with its first status and reason."""
    failed = _by_image([r for r in rows if r["status"] in IMAGE_FAILURES])
    return failure_report({image: (group[0]["status"], group[0]["detail"]) for image, group in failed.items()},
                          n_images, max_share)


def merge_rows(rows: list[dict], captioner: str, prompts: dict[str, Prompt], sampling: dict, versions: dict,
               source: str, fields_mode: str = "fields") -> tuple[pl.DataFrame, dict]:
    """Finished rows of all shards -> the merged caption table (tables.CAPTIONS) and quality report."""
    from ..tables import CAPTIONS, conform
    from .prompts import ParsedOutput, database_texts

    table_rows = []
    for row in rows:
        parsed = ParsedOutput(fields={field: text for field, text in row["fields"]}, status=row["status"], detail=row["detail"])
        for field, text in database_texts(prompts[row["prompt"]], parsed, fields_mode):
            table_rows.append({
                "image_id": row["image_id"], "captioner": captioner, "prompt": row["prompt"], "variant": row["variant"],
                "field": field, "text": text, "backend": row["backend"], "model_id": row["model_id"],
                "model_revision": row["model_revision"], "prompt_hash": row["prompt_hash"],
                "sampling": json.dumps(sampling, sort_keys=True), "source": source, "versions": json.dumps(versions, sort_keys=True),
            })
    table = conform(pl.DataFrame(table_rows, schema=CAPTIONS), CAPTIONS, captioner).sort(
        ["image_id", "prompt", "variant", "field"], nulls_last=True
    )
    return table, quality_of_rows(rows)


def quality_of_rows(rows: list[dict]) -> dict:
    """The per-prompt quality report (``prompts.quality_report``) of finished and failed rows."""
    from .prompts import quality_report

    status = pl.DataFrame(
        [{k: r[k] for k in ("image_id", "prompt", "variant", "status", "detail", "attempts")} | {"text": r["raw"]} for r in rows],
        schema={"image_id": pl.String, "prompt": pl.String, "variant": pl.Int64, "status": pl.String,
                "detail": pl.String, "attempts": pl.Int64, "text": pl.String},
    )
    return quality_report(status)
