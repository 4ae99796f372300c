"""A user's own experiment file runs exactly what it names: `--configfile my.yaml` replaces the
shipped config.yaml instead of being merged into it (Snakemake's default merge would silently add the
sample, SmolVLM, CLIP and the default fusion), with the schema's defaults filled in."""

import pytest
import yaml

from test_workflow import ROOT, snakemake
from trsllava.errors import TrsllavaError
from trsllava.workflow_checks import check_snakemake_version


def planned_jobs(result) -> dict[str, int]:
    return {line.split()[0]: int(line.split()[1]) for line in result.stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}


@pytest.fixture
def user_dir(tmp_path):
    """A working directory holding the shipped config.yaml (as a user's clone does) and my.yaml."""
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    mine = {"results": str(tmp_path / "out"), "datasets": {"mine": {"format": "builtin"}},
            "captioners": {"claude": {"backend": "import", "files": {"mine": "builtin"}}},
            "encoders": {"bm25": {"type": "bm25"}}}
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(mine))
    return tmp_path


def test_a_user_experiment_file_plans_only_its_own_jobs(user_dir):
    plan = planned_jobs(snakemake(user_dir, "-n", "--quiet", "rules", "--configfile", str(user_dir / "my.yaml")))
    assert plan == {"prepare_dataset": 1, "import_captions": 1, "embed_references": 1, "embed_captions": 1,
                    "build_index": 1, "evaluate": 1, "ablation": 1, "draw_figures": 1, "manifest": 1, "all": 1,
                    "total": 10}, plan


def test_the_user_file_gets_the_schema_defaults_and_runs(user_dir):
    snakemake(user_dir, "--cores", "2", "--configfile", str(user_dir / "my.yaml"))
    import polars as pl

    ablation = pl.read_csv(user_dir / "out" / "ablation.csv")
    assert set(ablation["dataset"]) == {"mine"} and set(ablation["encoder"]) == {"bm25"}
    assert set(ablation["aggregation"]) == {"max", "mean", "rrf"}  # the schema's default aggregations
    assert not (user_dir / "results").exists()  # nothing of the shipped experiment ran


def test_naming_both_files_builds_on_the_shipped_experiment(user_dir):
    plan = planned_jobs(snakemake(user_dir, "-n", "--quiet", "rules", "--configfile", str(user_dir / "config.yaml"),
                                  str(user_dir / "my.yaml")))
    # the shipped SmolVLM captioner is back (a dry run shows the plan up to its fetch checkpoint)
    assert plan.get("fetch_captioner_model") == 1, plan


@pytest.mark.parametrize("version, broken", [("9.5.0", False), ("9.5.1", True), ("9.11.4", True), ("9.14.7", True),
                                             ("9.14.8", False), ("9.27.1", False)])
def test_snakemake_releases_that_drop_schema_defaults_in_cluster_jobs_are_refused(version, broken):
    if broken:
        with pytest.raises(TrsllavaError, match=r"snakemake>=9.14.8,<10") as error:
            check_snakemake_version(version)
        assert "3614" in str(error.value) and "3921" in str(error.value)
    else:
        check_snakemake_version(version)


def test_pyproject_and_envs_exclude_the_same_releases():
    import tomllib

    from packaging.specifiers import SpecifierSet

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    spec = next(d for d in pyproject["project"]["dependencies"] if d.startswith("snakemake"))
    allowed = SpecifierSet(spec[len("snakemake"):])
    for version, ok in (("9.5.0", True), ("9.5.1", False), ("9.10.1", False), ("9.14.7", False), ("9.14.8", True),
                        ("9.27.1", True), ("10.0.0", False)):
        assert (version in allowed) is ok, (spec, version)
    env = yaml.safe_load((ROOT / "envs" / "workflow.yaml").read_text())
    pinned = [line for entry in env["dependencies"] if isinstance(entry, dict) for line in entry["pip"]
              if line.startswith("snakemake") and not line.startswith("snakemake-")]
    assert pinned == [spec], pinned
