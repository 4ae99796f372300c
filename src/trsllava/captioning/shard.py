"""One captioning job: every configured prompt for one shard of a dataset's images, resumable.

Each finished (image, prompt) is appended to the shard's progress file (JSON Lines, flushed and
fsynced per batch) under a cache key covering the model and its revision, the prompt's hash, the
sampling parameters and the image's bytes. A killed job rerun with the same settings skips every
key already in the file, so no finished caption is recomputed or lost; a torn last line (a kill
mid-write) is ignored and redone. Sampled outputs are seeded per request from the key, so a
resumed shard writes the same texts as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from ..errors import TrsllavaError
from ..hashing import sha256_of
from .prompts import Prompt, parse_output
from .types import GenerationRequest

log = logging.getLogger(__name__)


def shard_images(images: pl.DataFrame, shard: int, shards: int) -> pl.DataFrame:
    """Deterministic round-robin split of the images sorted by id (balanced, stable)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in 0..{shards - 1}")
    return images.sort("image_id").gather_every(shards, offset=shard)


def cache_key(model: dict, prompt: Prompt, sampling: dict, image_sha256: str) -> str:
    """The job's key: model, revision, prompt hash, sampling, image bytes, and the processor options
    when the backend reports any (they change the image tokens the model sees). Without processor
    options the key is the one earlier versions computed, so their progress files stay valid."""
    fields = {"model": model.get("model_id"), "revision": model.get("model_revision"), "prompt": prompt.hash,
              "sampling": sampling, "image": image_sha256}
    if model.get("processor_options"):
        fields["processor_options"] = model["processor_options"]
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


@dataclass
class ShardRun:
    backend: object  # has .generate(list[GenerationRequest]) -> list[GenerationResult], .describe(), .seed
    prompts: list[Prompt]
    sampling: dict  # what the backend was configured with (max_tokens, temperature, seed, ...)
    batch_size: int = 4

    def run(self, images: pl.DataFrame, progress_path: Path) -> list[dict]:
        model = self.backend.describe()
        done = {row["key"] for row in read_progress(progress_path)}
        pending, current = [], set()
        for image_id, path in images.select("image_id", "path").iter_rows():
            if path is None:
                raise TrsllavaError(f"image '{image_id}' has no file: captioning needs the dataset's `images` folder")
            sha = sha256_of(path)
            for prompt in self.prompts:
                key = cache_key(model, prompt, self.sampling, sha)
                current.add(key)
                if key not in done:
                    pending.append((key, image_id, path, prompt))
        log.info("shard: %d image x prompt jobs to run, %d already finished", len(pending), len(current) - len(pending))
        progress_path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(progress_path)
        with open(progress_path, "a", encoding="utf-8") as out, tqdm(total=len(pending), desc="captioning", unit="job") as bar:
            for start in range(0, len(pending), self.batch_size):
                batch = pending[start : start + self.batch_size]
                lines = [json.dumps(row) for row in self._caption_batch(batch, model)]
                out.write("".join(line + "\n" for line in lines))
                out.flush()
                os.fsync(out.fileno())
                bar.update(len(batch))
        # rows of earlier settings (other sampling or processor options) stay in the file but are not results
        return [row for row in read_progress(progress_path) if row["key"] in current]

    def _request(self, seed_material: str, path: str, prompt: Prompt, n: int) -> GenerationRequest:
        # seeded per request: the same image and settings give the same samples however jobs are batched
        seed = int(hashlib.sha256(seed_material.encode()).hexdigest()[:8], 16)
        return GenerationRequest(image_path=path, prompt_text=prompt.text, n=n, json_schema=prompt.schema, seed=seed)

    def _caption_batch(self, batch, model: dict) -> list[dict]:
        """One backend call for the batch's jobs, then one call for the retries of invalid JSON."""
        results = self.backend.generate([self._request(key, path, prompt, prompt.variants) for key, _, path, prompt in batch])
        rows, retries = [], []
        for (key, image_id, path, prompt), result in zip(batch, results):
            for variant, (raw, finish) in enumerate(zip(result.texts, result.finish_reasons)):
                parsed = parse_output(prompt, raw, finish)
                rows.append(self._row(key, image_id, prompt, variant, raw, finish, parsed, 1, model))
                if parsed.status == "invalid_json":  # one retry, as a fresh single sample
                    retries.append((len(rows) - 1, self._request(f"{key}/retry/{variant}", path, prompt, 1)))
        if retries:
            for (position, _), result in zip(retries, self.backend.generate([r for _, r in retries])):
                old = rows[position]
                prompt = next(p for p in self.prompts if p.id == old["prompt"])
                raw, finish = result.texts[0], result.finish_reasons[0]
                parsed = parse_output(prompt, raw, finish)
                rows[position] = self._row(old["key"], old["image_id"], prompt, old["variant"] or 0, raw, finish, parsed, 2, model)
        return rows

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


def merge_rows(rows: list[dict], captioner: str, prompts: dict[str, Prompt], sampling: dict, versions: dict,
               source: str, fields_mode: str = "fields") -> tuple[pl.DataFrame, dict]:
    """Finished rows of all shards -> the merged caption table (tables.CAPTIONS) and quality report."""
    from ..tables import CAPTIONS, conform
    from .prompts import ParsedOutput, database_texts, quality_report

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
    status = pl.DataFrame(
        [{k: r[k] for k in ("image_id", "prompt", "variant", "status", "detail", "attempts")} | {"text": r["raw"]} for r in rows],
        schema={"image_id": pl.String, "prompt": pl.String, "variant": pl.Int64, "status": pl.String,
                "detail": pl.String, "attempts": pl.Int64, "text": pl.String},
    )
    return table, quality_report(status)
