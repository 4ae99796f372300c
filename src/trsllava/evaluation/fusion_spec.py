"""The ``fusions:`` entries of config, checked. Standard library only: the Snakefile imports it to
stop a bad fusion at start, before any job, with the key named."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TrsllavaError

METHODS = ("rrf",)


@dataclass(frozen=True)
class FusionSpec:
    name: str
    encoders: tuple[str, ...]
    weights: tuple[float, ...]
    k: float = 60.0
    method: str = "rrf"


def fusion_spec(config: dict, name: str) -> FusionSpec:
    """The fusion ``name`` of config, checked against the config's encoders."""
    fusions = config.get("fusions") or {}
    if name not in fusions:
        raise TrsllavaError(f"config: fusion '{name}' is not defined under fusions")
    entry = fusions[name] or {}
    where = f"config: fusions.{name}"
    encoders = list(entry.get("encoders") or [])
    known = list(config.get("encoders") or {})
    unknown = [e for e in encoders if e not in known]
    if unknown:
        raise TrsllavaError(f"{where}.encoders names unknown encoder(s) {unknown}; known (under encoders): {known}. Define them under encoders, or drop the fusion")
    if len(encoders) < 2 or len(set(encoders)) != len(encoders):
        raise TrsllavaError(f"{where}.encoders needs at least two distinct encoders, got {encoders}")
    if name in known:
        raise TrsllavaError(f"{where}: the name '{name}' is already an encoder's; a fusion needs a name of its own")
    method = entry.get("method", "rrf")
    if method not in METHODS:
        raise TrsllavaError(f"{where}.method '{method}' is not one of {list(METHODS)}")
    weights = entry.get("weights")
    weights = [1.0] * len(encoders) if weights is None else [float(w) for w in weights]
    if len(weights) != len(encoders):
        raise TrsllavaError(f"{where}.weights has {len(weights)} value(s) for {len(encoders)} encoders {encoders}")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise TrsllavaError(f"{where}.weights must be non-negative and not all zero, got {weights}")
    k = float(entry.get("k", (config.get("evaluation") or {}).get("rrf_k", 60)))
    if k < 0:
        raise TrsllavaError(f"{where}.k must be >= 0, got {k}")
    return FusionSpec(name, tuple(encoders), tuple(weights), k, method)


def check_fusions(config: dict) -> list[FusionSpec]:
    """Every fusion of config, checked (raises TrsllavaError naming the key of the first problem)."""
    return [fusion_spec(config, name) for name in config.get("fusions") or {}]
