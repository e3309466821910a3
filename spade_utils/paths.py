"""Where a run writes: the project folder, its ``results/`` and its cache, found from the working directory.

Nothing here looks at where the package itself is installed, so an installed (non-editable) ``spade_utils``
never writes into site-packages. The project folder is, in this order:

1. ``$SPADE_PROJECT_DIR`` when set and non-empty;
2. the nearest folder at or above the current working directory that holds a ``results/`` folder, a
   ``pyproject.toml`` file or a ``.git`` (so a notebook run from ``notebooks/`` of a clone writes into the
   clone's ``results/``, as ``make figures`` expects);
3. the current working directory.

``$SPADE_RESULTS_DIR`` and ``$SPADE_CACHE_DIR`` override the two folders directly.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PROJECT_MARKERS", "cache_dir", "is_committed_results", "project_dir", "results_root"]

PROJECT_MARKERS = ("results", "pyproject.toml", ".git")


def _env_path(name: str) -> Path | None:
    """The environment variable as an absolute path; None when unset or blank."""
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser().resolve() if value else None


def _has_repository_marker(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() or (folder / ".git").exists()


def _is_project(folder: Path) -> bool:
    return (folder / "results").is_dir() or _has_repository_marker(folder)


def is_committed_results(path: Path) -> bool:
    """True for a ``results/`` folder (or anything inside one) beside a ``pyproject.toml`` or ``.git``: the record
    of a project that only quick and paper runs may write, whichever working directory the run started from.
    (A ``results/`` folder alone does not make its parent a project here: any run's output folder has that name.)"""
    path = Path(path).expanduser().resolve()
    for folder in (path, *path.parents):
        if folder.name == "results" and _has_repository_marker(folder.parent):
            return True
    return False


def project_dir() -> Path:
    """The project folder (see the module docstring); an absolute path, not created."""
    override = _env_path("SPADE_PROJECT_DIR")
    if override is not None:
        return override
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if _is_project(folder):
            return folder
    return here


def results_root() -> Path:
    """``<project>/results``: the committed record of quick and paper runs (not created here)."""
    return project_dir() / "results"


def cache_dir() -> Path:
    """``$SPADE_CACHE_DIR`` if set, else ``<project>/data/cache`` (git-ignored in this repository); created on use."""
    path = _env_path("SPADE_CACHE_DIR") or project_dir() / "data" / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
