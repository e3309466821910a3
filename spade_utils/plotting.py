"""House style for figures and the one place that saves figures and tables (into results/ for quick and paper runs)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from .paths import is_committed_results, results_root

PROFILES = ("smoke", "quick", "paper")
RECORD_PROFILES = ("quick", "paper")  # the only profiles whose output may land in the committed results/


def results_dir(profile: str) -> Path:
    """The folder a notebook run in ``profile`` saves its figures and tables into.

    - ``$SPADE_RESULTS_DIR`` when set and non-empty (the tests point it at a temporary folder);
    - else, for ``quick`` and ``paper``, the committed ``results/`` of the project folder
      (:func:`spade_utils.paths.results_root`: found from the working directory, never the install location);
    - else (``smoke``) ``<tempdir>/spade-results-smoke`` (``tempfile.gettempdir()``, so ``$TMPDIR``).

    A smoke run never writes the committed record: ValueError when ``$SPADE_RESULTS_DIR`` points into the
    committed ``results/`` with ``profile="smoke"`` (that of the working directory's project, or any ``results/``
    whose parent is a project folder: :func:`spade_utils.paths.is_committed_results`). ValueError when ``profile`` is not one of
    ``("smoke", "quick", "paper")``, TypeError when it is not a string.
    """
    if not isinstance(profile, str):
        raise TypeError(f"profile must be a str, one of {PROFILES}, got {type(profile).__name__}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    override = os.environ.get("SPADE_RESULTS_DIR", "").strip()
    committed = results_root()
    if override:
        path = Path(override).expanduser().resolve()
        if profile not in RECORD_PROFILES and (path.is_relative_to(committed) or is_committed_results(path)):
            raise ValueError(
                f"SPADE_RESULTS_DIR={override!r} is the committed results/ folder, which only "
                f"{' and '.join(RECORD_PROFILES)} runs may write; unset it or point it elsewhere for a {profile} run"
            )
        return path
    if profile in RECORD_PROFILES:
        return committed
    return Path(tempfile.gettempdir()) / f"spade-results-{profile}"


def set_style() -> None:
    """Clean, readable defaults shared by every notebook."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "axes.titlesize": 11,
            "axes.titleweight": "bold",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "image.interpolation": "nearest",
        }
    )


def save_figure(fig: plt.Figure, name: str, *, profile: str) -> Path:
    """Save ``fig`` as ``<results_dir(profile)>/figures/<name>.png`` and return the path.

    ``profile`` (required: the notebook's PROFILE) decides the folder, see :func:`results_dir`; a smoke run
    never writes the committed ``results/``.
    """
    path = results_dir(profile) / "figures" / f"{Path(name).stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def save_table(table, name: str, *, profile: str) -> Path:
    """Save a pandas DataFrame as ``<results_dir(profile)>/tables/<name>.csv`` and return the path.

    ``profile`` as for :func:`save_figure`.
    """
    path = results_dir(profile) / "tables" / f"{Path(name).stem}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, float_format="%.6g")
    return path


def to_display(image) -> np.ndarray:
    """A CxHxW / 1xCxHxW tensor (ImageNet-normalised or in [0, 1]) or HxW(xC) array -> HxWxC floats in [0, 1]."""
    if isinstance(image, torch.Tensor):
        x = image.detach().float().cpu()
        if x.dim() == 4:
            x = x[0]
        if x.dim() == 3 and x.shape[0] in (1, 3):
            if x.min() < 0 or x.max() > 1:  # normalised: undo it
                from .data import denormalize

                x = denormalize(x) if x.shape[0] == 3 else (x - x.min()) / (x.max() - x.min() + 1e-12)
            x = x.permute(1, 2, 0)
        return x.clamp(0, 1).numpy()
    return np.asarray(image)


def image_grid(
    images,
    *,
    titles=None,
    row_labels=None,
    ncols: int | None = None,
    size: float = 2.2,
    cmap=None,
):
    """Show a list (or list of rows) of images without axes; returns the figure."""
    rows = images if images and isinstance(images[0], (list, tuple)) else None
    if rows is None:
        ncols = ncols or len(images)
        rows = [list(images[i : i + ncols]) for i in range(0, len(images), ncols)]
    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(size * ncols, size * len(rows)), squeeze=False)
    flat_titles = list(titles) if titles is not None else None
    k = 0
    for i, row in enumerate(rows):
        for j in range(ncols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row) and row[j] is not None:
                ax.imshow(to_display(row[j]), cmap=cmap)
                if flat_titles is not None and k < len(flat_titles):
                    ax.set_title(flat_titles[k], fontsize=9)
            k += 1
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=10)
    fig.tight_layout()
    return fig
