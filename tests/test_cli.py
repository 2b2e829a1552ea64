"""The `selftrain` command: help that explains, and errors that say what to fix (exit code 2, no traceback)."""

import subprocess
import sys

import pytest

from conftest import ROOT
from selftrain.cli import main

SELFTRAIN = [sys.executable, "-m", "selftrain.cli"]


def cli(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*SELFTRAIN, *args], cwd=cwd, capture_output=True, text=True)


def sub_help(capsys, *args: str) -> str:
    """A subcommand's --help, in this process (a subprocess per command costs seconds of imports)."""
    with pytest.raises(SystemExit):
        main([*args, "--help"])
    return capsys.readouterr().out


def test_help_lists_every_stage_and_its_uris(capsys):
    out = cli("--help").stdout
    stages = (
        "prepare",
        "train-teacher",
        "infer",
        "filter-balance",
        "train-student",
        "train-mpl",
        "train-reduced-mpl",
        "train-generation",
        "evaluate",
        "promote",
        "record-lineage",
        "report",
        "lineage",
        "twomoons",
        "summary",
        "plan",
    )
    for stage in stages:
        assert stage in out
    infer = sub_help(capsys, "infer")
    assert (
        "--teacher URI" in infer
        and "promotion record" in infer
        and "no augmentation" in infer
        and "--set KEY=VALUE" in infer
    )
    assert "--generation NAME" in sub_help(capsys, "train-student")
    mpl = sub_help(capsys, "train-mpl")
    assert "--resume URI" in mpl and "resumes from there when" in mpl


def test_missing_input_artifact_is_a_clear_error(tmp_path):
    r = cli(
        "train-teacher",
        "--data",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "t"),
        "--promoted",
        str(tmp_path / "p.json"),
    )
    assert r.returncode == 2
    assert "artifact '" in r.stderr and "not found: run the stage that produces it first" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "t").exists()


def test_bad_override_names_the_key(tmp_path):
    r = cli("prepare", "--set", "data.labeled_per_class=-3", "--out", str(tmp_path / "d"))
    assert r.returncode == 2 and "data.labeled_per_class: Input should be greater than 0 (got -3)" in r.stderr


def test_reproduce_refuses_a_rev_that_is_an_option_and_a_repo_that_is_not_there(tmp_path):
    """`--rev=--output=FILE` reached git as an option and made it write FILE; a missing --repo was a traceback."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for cmd in (
        ["git", "init", "-q"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
    ):
        subprocess.run(cmd, cwd=repo, check=True)
    proc = cli("reproduce", "deadbeef", "--rev=--output=written-by-git", "--repo", str(repo), cwd=tmp_path)
    assert proc.returncode == 2 and "--rev '--output=written-by-git' is not a revision" in proc.stderr
    assert not (tmp_path / "written-by-git").exists() and not (repo / "written-by-git").exists()
    proc = cli("reproduce", "gen1", "--repo", str(tmp_path / "nonexistent"), cwd=tmp_path)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr and "Traceback" not in proc.stderr
