"""Results and cache folders follow the working directory (or environment variables), never the install location."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spade_utils import paths, plotting

PACKAGE = Path(paths.__file__).resolve().parent


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("SPADE_PROJECT_DIR", "SPADE_RESULTS_DIR", "SPADE_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_notebook_folder_of_a_project_writes_into_the_project(tmp_path, clean_env):
    (tmp_path / "results").mkdir()
    (tmp_path / "notebooks").mkdir()
    clean_env.chdir(tmp_path / "notebooks")
    assert paths.project_dir() == tmp_path.resolve()
    assert plotting.results_dir("quick") == tmp_path.resolve() / "results"
    assert paths.cache_dir() == tmp_path.resolve() / "data" / "cache"
    assert (tmp_path / "data" / "cache").is_dir()


def test_a_bare_folder_is_its_own_project(tmp_path, clean_env):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    clean_env.chdir(work)
    # only a marker-free chain above: the first marker found may be far up (e.g. /), so check what it returns is
    # the nearest folder with a marker or the cwd itself
    found = paths.project_dir()
    assert found == work.resolve() or any((found / m).exists() for m in paths.PROJECT_MARKERS)
    (work / "pyproject.toml").write_text("")
    assert paths.project_dir() == work.resolve()


def test_environment_variables_win(tmp_path, clean_env):
    clean_env.setenv("SPADE_PROJECT_DIR", str(tmp_path / "proj"))
    assert paths.project_dir() == (tmp_path / "proj").resolve()
    assert plotting.results_dir("paper") == (tmp_path / "proj" / "results").resolve()
    clean_env.setenv("SPADE_CACHE_DIR", str(tmp_path / "c"))
    assert paths.cache_dir() == (tmp_path / "c").resolve()
    clean_env.setenv("SPADE_RESULTS_DIR", str(tmp_path / "r"))
    assert plotting.results_dir("quick") == tmp_path / "r"


def test_nothing_resolves_into_the_installed_package(tmp_path):
    """A run from an unrelated folder (as after `pip install spade-utils`) writes beside it, not into the package."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPADE_")}
    (tmp_path / "pyproject.toml").write_text("")
    code = (
        "from spade_utils import paths, plotting; "
        "print(plotting.results_dir('quick')); print(paths.cache_dir())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    results, cache = (Path(line) for line in out.stdout.split())
    assert results == tmp_path.resolve() / "results" and cache == tmp_path.resolve() / "data" / "cache"
    for p in (results, cache):
        assert not p.is_relative_to(PACKAGE)


def test_a_smoke_run_cannot_reach_a_committed_record_from_another_directory(tmp_path, clean_env):
    """Found by trying: the guard only knew the results/ of the working directory's project."""
    project = tmp_path / "clone"
    (project / "results").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean_env.chdir(elsewhere)
    for target in (project / "results", project / "results" / "figures"):
        clean_env.setenv("SPADE_RESULTS_DIR", str(target))
        with pytest.raises(ValueError, match="committed results"):
            plotting.results_dir("smoke")
        assert plotting.results_dir("quick") == target.resolve()


def test_odd_environment_values(tmp_path, clean_env):
    clean_env.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "results").write_text("a file, not a folder")
    clean_env.chdir(tmp_path / "sub")
    assert paths.project_dir() != (tmp_path / "sub").resolve() or not (tmp_path / "sub" / "results").is_dir()
    clean_env.setenv("SPADE_PROJECT_DIR", "   ")  # blank: ignored
    assert paths.project_dir() != Path("   ").resolve()
    clean_env.setenv("SPADE_RESULTS_DIR", "rel_out")  # relative: made absolute against the working directory
    assert plotting.results_dir("quick") == (tmp_path / "sub" / "rel_out").resolve()


def test_a_plain_output_folder_named_results_is_not_a_committed_record(tmp_path, clean_env):
    """Found by CI: the smoke tests write into <tmp>/results, which the first guard took for a project's record."""
    out = tmp_path / "results"
    out.mkdir()
    clean_env.setenv("SPADE_RESULTS_DIR", str(out))
    assert plotting.results_dir("smoke") == out.resolve()
