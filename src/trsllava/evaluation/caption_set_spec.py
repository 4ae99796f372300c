"""The ``caption_sets:`` block of config, checked. Standard library only: the Snakefile imports it to
stop a bad entry at start, with the key named.

    caption_sets:
      joined: true            # <prompt>/joined: the fields of each variant joined into one text (default false)
      fusions:                # weighted score fusion of caption sets, one more `prompt` row each
        rsrt+style:
          sets: [rsrt/one_sentence, rsicd_style]
          weights: [1, 1]     # default all 1; normalised to sum to 1 (a weighted mean of scores)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TrsllavaError


@dataclass(frozen=True)
class CaptionSetFusionSpec:
    name: str
    sets: tuple[str, ...]
    weights: tuple[float, ...]  # positive, summing to 1


def joined_enabled(config: dict) -> bool:
    return bool((config.get("caption_sets") or {}).get("joined", False))


def caption_set_fusion_specs(config: dict) -> list[CaptionSetFusionSpec]:
    """Every entry of ``caption_sets.fusions``, checked (raises TrsllavaError naming the key)."""
    block = config.get("caption_sets") or {}
    specs = []
    for name, entry in (block.get("fusions") or {}).items():
        where = f"config: caption_sets.fusions.{name}"
        entry = entry or {}
        sets = entry.get("sets")
        if not isinstance(sets, list) or len(sets) < 2 or len(set(sets)) != len(sets) or not all(isinstance(s, str) for s in sets):
            raise TrsllavaError(f"{where}.sets needs two or more distinct caption set labels (e.g. rsrt/feature, rsicd_style), got {sets!r}")
        weights = entry.get("weights")
        weights = [1.0] * len(sets) if weights is None else weights
        if not isinstance(weights, list) or len(weights) != len(sets):
            raise TrsllavaError(f"{where}.weights needs one number per set ({len(sets)}), got {weights!r}")
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 for w in weights):
            raise TrsllavaError(f"{where}.weights must all be > 0 (leave a set out instead of weighting it 0), got {weights}")
        total = float(sum(weights))
        if "/" in name:
            raise TrsllavaError(f"{where}: a fusion's name may not contain '/' (it would look like a field of a prompt)")
        specs.append(CaptionSetFusionSpec(str(name), tuple(sets), tuple(float(w) / total for w in weights)))
    return specs
