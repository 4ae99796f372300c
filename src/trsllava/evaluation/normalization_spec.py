"""The ``normalization:`` list of config, checked: which hubness-aware scorings are evaluated.

Standard library only: the Snakefile imports it to stop a bad entry at start, before any job, with
the key named. The scorings themselves live in ``hubness.py``.

An entry is a method name (its default parameters) or a mapping::

    normalization:
      - none
      - csls                                    # k = 10
      - {method: inverted-softmax, beta: 2}
      - {method: qb-norm, beta: 2, k: 1}
      - {method: qb-norm, beta: 2, k: 1, bank: transductive}   # labelled qb-norm-transductive(...)

  method    none | csls | inverted-softmax | qb-norm
  k         csls: neighbours of a gallery item in the query bank (Conneau et al., 2018);
            qb-norm: how many top gallery items of each bank query form the activation set
            (Bogolin et al., 2022)
  beta      inverse temperature of inverted-softmax and qb-norm, on scores divided by the bank's
            score standard deviation (scale-free: one value serves cosine and BM25 scores)
  bank      query-bank (default: statistics from the dataset's query bank, not the evaluated
            queries) or transductive (the evaluated queries themselves; the label says so)
  i2t_bank  how the query bank stands in for image-to-text queries: captions (each bank text is a
            pseudo-query; default) or images (each bank image, represented by its bank captions
            and aggregated like the evaluated images' texts, is a pseudo-query)
  directions  which directions are normalised (default [t2i, i2t]); the other keeps its raw scores
            under the same label (e.g. [t2i]: labelled "..., t2i only")
  name      the label in the ablation's ``normalization`` column (default: method and parameters)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TrsllavaError

NONE = "none"
METHODS = (NONE, "csls", "inverted-softmax", "qb-norm")
BANKS = ("query-bank", "transductive")
I2T_BANKS = ("captions", "images")
DEFAULT_I2T_BANK = "captions"
PARAMETERS = {NONE: (), "csls": ("k",), "inverted-softmax": ("beta",), "qb-norm": ("beta", "k")}
DEFAULTS = {"csls": {"k": 10}, "inverted-softmax": {"beta": 2.0}, "qb-norm": {"beta": 2.0, "k": 1}}
KEYS = ("method", "k", "beta", "bank", "i2t_bank", "directions", "name")
DIRECTIONS = ("t2i", "i2t")


@dataclass(frozen=True)
class NormalizationSpec:
    """One hubness-aware scoring: ``method`` with its parameters and where its statistics come from."""

    label: str
    method: str = NONE
    k: int = 0
    beta: float = 0.0
    bank: str = "query-bank"
    i2t_bank: str = DEFAULT_I2T_BANK
    directions: tuple[str, ...] = DIRECTIONS

    @property
    def transductive(self) -> bool:
        return self.bank == "transductive"

    @property
    def needs_query_bank(self) -> bool:
        return self.method != NONE and not self.transductive

    def normalises(self, direction: str) -> bool:
        return self.method != NONE and direction in self.directions


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def normalization_spec(entry, index: int) -> NormalizationSpec:
    """Entry ``index`` of ``normalization:`` (a method name or a mapping), checked."""
    where = f"config: normalization[{index}]"
    if isinstance(entry, str):
        entry = {"method": entry}
    if not isinstance(entry, dict):
        raise TrsllavaError(f"{where}: expected a method name or a mapping, got {entry!r}")
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise TrsllavaError(f"{where}: unknown key(s) {unknown}; allowed: {list(KEYS)}")
    method = entry.get("method")
    if method not in METHODS:
        raise TrsllavaError(f"{where}.method is {method!r}; known: {list(METHODS)}")
    extra = sorted(key for key in ("k", "beta") if key in entry and key not in PARAMETERS[method])
    if extra:
        raise TrsllavaError(f"{where}: method {method} takes no {extra}; its parameters: {list(PARAMETERS[method])}")
    params = {**DEFAULTS.get(method, {}), **{key: entry[key] for key in PARAMETERS[method] if key in entry}}
    k = params.get("k", 0)
    if "k" in params and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise TrsllavaError(f"{where}.k must be an integer >= 1, got {k!r}")
    beta = params.get("beta", 0.0)
    if "beta" in params:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
            raise TrsllavaError(f"{where}.beta must be a number > 0, got {beta!r}")
        params["beta"] = beta = float(beta)
    bank = entry.get("bank", "query-bank")
    if bank not in BANKS:
        raise TrsllavaError(f"{where}.bank is {bank!r}; known: {list(BANKS)}")
    if method == NONE and bank != "query-bank":
        raise TrsllavaError(f"{where}: method none uses no bank")
    i2t_bank = entry.get("i2t_bank", DEFAULT_I2T_BANK)
    if i2t_bank not in I2T_BANKS:
        raise TrsllavaError(f"{where}.i2t_bank is {i2t_bank!r}; known: {list(I2T_BANKS)}")
    if i2t_bank != DEFAULT_I2T_BANK and (method == NONE or bank == "transductive"):
        raise TrsllavaError(f"{where}.i2t_bank applies to a query bank only (not to method none or bank transductive)")
    directions = entry.get("directions", list(DIRECTIONS))
    if not isinstance(directions, list) or not directions or any(d not in DIRECTIONS for d in directions) \
            or len(set(directions)) != len(directions):
        raise TrsllavaError(f"{where}.directions must be a non-empty list of {list(DIRECTIONS)}, got {directions!r}")
    if method == NONE and "directions" in entry:
        raise TrsllavaError(f"{where}: method none normalises no direction")
    directions = tuple(d for d in DIRECTIONS if d in directions)
    if i2t_bank != DEFAULT_I2T_BANK and "i2t" not in directions:
        raise TrsllavaError(f"{where}.i2t_bank is set but i2t is not among its directions")
    label = entry.get("name")
    if label is None:
        parts = [f"{key}={_number(params[key])}" for key in PARAMETERS[method]]
        if i2t_bank != DEFAULT_I2T_BANK:
            parts.append(f"i2t={i2t_bank}")
        if directions != DIRECTIONS:
            parts.append(f"{directions[0]} only")
        label = method + ("-transductive" if bank == "transductive" else "") + (f"({','.join(parts)})" if parts else "")
    elif not isinstance(label, str) or not label.strip():
        raise TrsllavaError(f"{where}.name must be a non-empty string, got {label!r}")
    elif bank == "transductive" and "transductive" not in label:
        raise TrsllavaError(f"{where}.name {label!r}: a transductive normalization's label must say 'transductive'")
    return NormalizationSpec(label, method, int(k), float(beta), bank, i2t_bank, directions)


def check_normalizations(config: dict) -> list[NormalizationSpec]:
    """Every entry of ``normalization:`` (default ``[none]``), checked; labels must be distinct."""
    entries = config.get("normalization")
    entries = [NONE] if entries is None else entries
    if not isinstance(entries, list) or not entries:
        raise TrsllavaError(f"config: normalization must be a non-empty list, got {entries!r}")
    specs = [normalization_spec(entry, index) for index, entry in enumerate(entries)]
    seen: dict[str, int] = {}
    for index, spec in enumerate(specs):
        if spec.label in seen:
            raise TrsllavaError(
                f"config: normalization[{index}] has the label '{spec.label}' of normalization[{seen[spec.label]}]; "
                "give one of them another parameter or a `name`"
            )
        seen[spec.label] = index
    return specs


def needs_query_bank(config: dict) -> bool:
    """Whether any normalization takes its statistics from the query bank."""
    return any(spec.needs_query_bank for spec in check_normalizations(config))


def several_normalizations(config: dict) -> bool:
    """True when config evaluates more than one normalization: only then is the mR-by-normalization
    figure drawn (one row of `none` says nothing the heatmap does not)."""
    return len(config.get("normalization") or [NONE]) > 1
