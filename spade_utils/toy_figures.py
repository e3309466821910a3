"""Notebook 01's panels of the 2-D toy: logit maps and the first layer's units, with the concept discs drawn.

They take arrays (a logit grid, each unit's line and whether it survived), not networks, so this module needs
nothing from the experiment code; :mod:`spade_utils.toy` computes what they show.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import SymLogNorm

from .plotting import _check_box, draw_discs

__all__ = ["logit_maps", "training_points", "unit_lines"]


def _panels(n: int, width: float, height: float):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, axes[0]


def training_points(points, labels, *, box, regions, size: float = 4.2) -> plt.Figure:
    """The training set: ``points`` (n, 2) coloured by ``labels`` (n, 0/1 or bool; negatives grey, positives
    blue), the concept discs of ``regions`` outlined, axes limited to ``box``. Raises ValueError naming the
    argument for mismatched shapes or labels other than 0/1."""
    points, raw = np.asarray(points, float), np.asarray(labels)
    if raw.dtype != bool and not (raw.dtype.kind in "iuf" and np.isin(raw, (0, 1)).all()):
        raise ValueError("labels must be 0/1 or bool")
    labels = raw.astype(bool)
    if points.ndim != 2 or points.shape[1] != 2 or labels.shape != (len(points),):
        raise ValueError(
            f"points must be (n, 2) and labels (n,), got points {points.shape} and labels {labels.shape}"
        )
    lo, hi = _check_box(box)
    fig, (ax,) = _panels(1, size, size)
    ax.scatter(*points[~labels].T, s=1, c="0.75", label=f"negative ({int((~labels).sum())})")
    ax.scatter(*points[labels].T, s=1, c="tab:blue", label=f"positive ({int(labels.sum())})")
    draw_discs(ax, regions)
    ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", title="training points", xlabel="x₁", ylabel="x₂")
    ax.legend(loc="upper right", markerscale=8)
    fig.tight_layout()
    return fig


def logit_maps(
    maps: Mapping[str, np.ndarray],
    *,
    box,
    regions,
    boundary: bool = False,
    size: float = 4.3,
) -> plt.Figure:
    """One panel per entry of ``maps`` (title -> logit grid of shape (n, n), rows = y from ``box[0]`` up): a
    diverging map on a symmetric-log scale (linear within ±1, so the sign change stays visible next to logits in
    the hundreds), the concept discs of ``regions`` outlined, and with ``boundary`` the zero-logit contour (the
    decision boundary). Each panel has its own colour bar. Raises TypeError/ValueError naming the argument for
    an empty mapping or a grid that is not square."""
    if not isinstance(maps, Mapping) or not maps:
        raise TypeError("maps must be a non-empty mapping title -> (n, n) logit grid")
    lo, hi = _check_box(box)
    fig, axes = _panels(len(maps), size, size * 0.9)
    for ax, (title, z) in zip(axes, maps.items()):
        z = np.asarray(z, dtype=float)
        if z.ndim != 2 or z.shape[0] != z.shape[1]:
            raise ValueError(f"maps[{title!r}] must be a square (n, n) grid, got shape {z.shape}")
        lim = max(float(np.abs(z).max()), 1e-12)
        im = ax.imshow(
            z,
            origin="lower",
            extent=(lo, hi, lo, hi),
            cmap="RdBu_r",
            norm=SymLogNorm(1.0, vmin=-lim, vmax=lim),
        )
        ax.grid(False)
        if boundary:
            grid = np.linspace(lo, hi, z.shape[0])
            ax.contour(grid, grid, z, [0], colors="k", linewidths=1)
        draw_discs(ax, regions)
        fig.colorbar(im, ax=ax, shrink=0.8, label="output logit")
        ax.set(title=title, aspect="equal", xlabel="x₁", ylabel="x₂")
    fig.tight_layout()
    return fig


def unit_lines(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    box,
    regions,
    markers: Mapping[str, tuple[float, float]] | None = None,
    size: float = 4.0,
) -> plt.Figure:
    """One panel per entry of ``panels`` (title -> (lines, alive)): each first-layer unit's line
    ``a·x + b·y + c = 0`` (``lines`` of shape (k, 3)), purple when the unit survived (``alive``, k bools) and
    light grey when it was pruned away; the concept discs outlined; ``markers[title]`` (a point, e.g. the
    sample a trace was built for) as a red triangle. Raises ValueError naming the argument for mismatched
    shapes."""
    if not isinstance(panels, Mapping) or not panels:
        raise TypeError("panels must be a non-empty mapping title -> (lines, alive)")
    lo, hi = _check_box(box)
    markers = dict(markers or {})
    xs = np.linspace(lo, hi, 2)
    fig, axes = _panels(len(panels), size, size * 1.05)
    for ax, (title, (lines, alive)) in zip(axes, panels.items()):
        lines, alive = np.asarray(lines, float), np.asarray(alive, bool)
        if lines.ndim != 2 or lines.shape[1] != 3 or alive.shape != (lines.shape[0],):
            raise ValueError(
                f"panels[{title!r}] must be (lines (k, 3), alive (k,)), got {lines.shape} and {alive.shape}"
            )
        draw_discs(ax, regions)
        for (a, b, c), keep in zip(lines, alive):
            style = dict(c="tab:purple", lw=1.2) if keep else dict(c="0.85", lw=0.6)
            if abs(b) > abs(a):
                ax.plot(xs, -(a * xs + c) / b, **style)
            else:
                ax.plot(-(b * xs + c) / a, xs, **style)
        if title in markers:
            ax.scatter(*markers[title], marker="^", s=90, c="red", edgecolors="k", zorder=5)
        ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal", xlabel="x₁", ylabel="x₂")
        ax.set_title(f"{title}: {int(alive.sum())} of {len(alive)} first-layer units kept", fontsize=10)
    fig.tight_layout()
    return fig
