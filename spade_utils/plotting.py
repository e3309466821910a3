"""House style for figures and the one place that saves figures and tables (into results/ for quick and paper runs)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

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


# --------------------------------------------------------------------------------------------
# figures of the notebooks (each returns the Figure; the notebooks save and show it)
# --------------------------------------------------------------------------------------------
UNEVEN_GID = "unequal-sparsity"  # gid of the bands that mark points the solvers reached at different sparsity
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _as_array(values, name: str) -> np.ndarray:
    """A tensor or array-like -> float numpy array; TypeError naming ``name`` otherwise."""
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an array or tensor of numbers, got {type(values).__name__}") from err


def _check_frame(frame, name: str, columns) -> None:
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks the columns {missing} (has {list(frame.columns)})")
    if frame.empty:
        raise ValueError(f"{name} is empty")


def _palette(n: int) -> list:
    import seaborn as sns

    return list(sns.color_palette("colorblind", max(n, 1)))


def _bare(ax) -> None:
    """No ticks, grid or spines: an axes that only shows an image."""
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


# --- the 2-D toy (notebook 01) ---------------------------------------------------------------
class ToyPanel(NamedTuple):
    """One panel of a toy figure: its ``title``, the feature-visualization ``points`` ((n, 2) array or tensor)
    and, optionally, the ``sample`` (x, y) a SPADE trace was built for (drawn as a red triangle)."""

    title: str
    points: Any
    sample: tuple[float, float] | None = None


def _check_regions(regions) -> dict:
    if not isinstance(regions, Mapping) or not regions:
        raise TypeError("regions must be a non-empty mapping name -> ((x, y), radius)")
    out = {}
    for name, value in regions.items():
        try:
            (cx, cy), radius = value
            out[name] = ((float(cx), float(cy)), float(radius))
        except (TypeError, ValueError) as err:
            raise TypeError(f"regions[{name!r}] must be ((x, y), radius), got {value!r}") from err
        if not out[name][1] > 0:
            raise ValueError(f"regions[{name!r}] needs a positive radius, got {out[name][1]}")
    return out


def _check_box(box) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in box)
    except (TypeError, ValueError) as err:
        raise TypeError(f"box must be a pair (low, high) of numbers, got {box!r}") from err
    if not lo < hi:
        raise ValueError(f"box must have low < high, got {box!r}")
    return lo, hi


def draw_discs(ax, regions, *, color: str = "k", lw: float = 1.0, ls: str = "--") -> list:
    """Outline each disc of ``regions`` (a mapping name -> ((x, y), radius), e.g. ``toy.REGIONS``) on ``ax``.

    The outlines are unfilled circles (dashed black by default) with ``gid`` ``"disc:<name>"``; returns the
    patches. TypeError/ValueError when a region is not ((x, y), radius) with a positive radius.
    """
    from matplotlib.patches import Circle

    patches = []
    for name, (centre, radius) in _check_regions(regions).items():
        circle = Circle(centre, radius, fill=False, ls=ls, lw=lw, color=color, zorder=4, gid=f"disc:{name}")
        ax.add_patch(circle)
        patches.append(circle)
    return patches


def toy_panels(rows, *, regions, box, background=None, size: float = 3.0) -> plt.Figure:
    """Panels of 2-D feature-visualization points over the toy's square, with the discs outlined.

    ``rows``: a sequence of rows, each a sequence of :class:`ToyPanel` (one row of panels may be given as a flat
    sequence of panels). Each panel draws, in the square ``box`` = (low, high) on both axes (equal aspect):
    the optional ``background`` = (points (m, 2), positive mask (m,)) as light dots (grey negatives, blue
    positives), the outline of each disc of ``regions`` (name -> ((x, y), radius), e.g. ``toy.REGIONS``) as a
    dashed circle, the panel's points as green crosses (unclipped at the square's edge, above the sample) and its
    sample, if any, as a red triangle. Axes are
    labelled x₁ (bottom row) and x₂ (left column); one legend below the panels names the marks.

    Returns the Figure. TypeError when a panel is not a ToyPanel or the inputs are not numbers; ValueError when
    ``rows`` is empty, points are not (n, 2), or ``box``/``regions`` are malformed.
    """
    from matplotlib.lines import Line2D

    if isinstance(rows, ToyPanel):
        raise TypeError("rows must be a sequence of rows of ToyPanel, got a single ToyPanel")
    rows = list(rows) if rows is not None else []
    if not rows:
        raise ValueError("rows must hold at least one panel")
    if all(isinstance(p, ToyPanel) for p in rows):
        rows = [rows]
    rows = [list(r) for r in rows]
    if any(not r for r in rows):
        raise ValueError("every row of rows must hold at least one panel")
    for r in rows:
        for p in r:
            if not isinstance(p, ToyPanel):
                raise TypeError(f"every panel must be a ToyPanel, got {type(p).__name__}")
    lo, hi = _check_box(box)
    regions = _check_regions(regions)
    points = [[_as_array(p.points, f"points of panel {p.title!r}") for p in r] for r in rows]
    for r, pr in zip(rows, points):
        for p, pts in zip(r, pr):
            if pts.ndim != 2 or pts.shape[1] != 2:
                raise ValueError(f"points of panel {p.title!r} must be (n, 2), got shape {pts.shape}")
    if background is not None:
        bg, positive = _as_array(background[0], "background points"), np.asarray(background[1], dtype=bool)
        if bg.ndim != 2 or bg.shape[1] != 2 or positive.shape != (len(bg),):
            raise ValueError("background must be (points (m, 2), positive mask (m,))")

    ncols = max(len(r) for r in rows)
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(size * ncols, size * len(rows) + 0.5), squeeze=False, layout="constrained"
    )
    for i, (r, pr) in enumerate(zip(rows, points)):
        for j in range(ncols):
            ax = axes[i, j]
            if j >= len(r):
                ax.set_axis_off()
                continue
            if background is not None:
                ax.scatter(*bg[~positive].T, s=1, c="0.85", rasterized=True)
                ax.scatter(*bg[positive].T, s=1, c="#9ecae1", rasterized=True)
            draw_discs(ax, regions)
            # points on the square's edge stay whole (clip_on=False); they are drawn over the sample
            ax.scatter(*pr[j].T, marker="x", s=18, c="tab:green", lw=1, zorder=6, clip_on=False, gid="points")
            if r[j].sample is not None:
                sx, sy = r[j].sample
                ax.scatter([sx], [sy], marker="^", s=90, c="red", edgecolors="k", zorder=5, gid="sample")
            ax.set(xlim=(lo, hi), ylim=(lo, hi), aspect="equal")
            ax.set_title(r[j].title, fontsize=10)
            if i == len(rows) - 1 or j >= len(rows[i + 1]):
                ax.set_xlabel("$x_1$")
            if j == 0:
                ax.set_ylabel("$x_2$")
    handles = [
        Line2D([], [], marker="x", ls="", c="tab:green", label="feature visualization"),
        Line2D([], [], marker="^", ls="", mfc="red", mec="k", ms=9, label="sample"),
        Line2D([], [], ls="--", c="k", lw=1, label="positive discs"),
    ]
    if background is not None:
        handles += [
            Line2D([], [], marker="o", ls="", c="#9ecae1", ms=4, label="positive point"),
            Line2D([], [], marker="o", ls="", c="0.85", ms=4, label="negative point"),
        ]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    return fig


def sweep_figure(
    data,
    *,
    x: str,
    y: str,
    hue: str,
    style: str,
    hue_labels: Mapping | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
    reference: float | None = None,
    size: tuple[float, float] = (6.5, 3.8),
) -> plt.Figure:
    """One line per (``hue``, ``style``) pair of ``data`` (a DataFrame), ``y`` against ``x``: colour by ``hue``
    (e.g. the scenario), line style and marker by ``style`` (e.g. the solver).

    Markers of the second and later styles are hollow, so two lines that coincide stay visible. The legend
    has two parts: the colours (labelled through ``hue_labels``, value -> text, when given) and the line styles
    (in black). ``ylim`` sets the y range (for shares use ``(0, 1)``: a small margin is added so points at the
    ends are not cut); ``reference`` draws a dotted vertical line at that x (e.g. the recipe's sparsity).

    Returns the Figure. TypeError when ``data`` is not a DataFrame; ValueError when a column is missing, the
    table is empty, or ``ylim`` is not (low, high) with low < high.
    """
    from matplotlib.lines import Line2D

    _check_frame(data, "data", [x, y, hue, style])
    if ylim is not None:
        lo, hi = _check_box(ylim)
    hues = list(dict.fromkeys(data[hue]))
    styles = list(dict.fromkeys(data[style]))
    colours = dict(zip(hues, _palette(len(hues))))
    labels = dict(hue_labels or {})
    fig, ax = plt.subplots(figsize=size, layout="constrained")
    for (h, s), part in data.groupby([hue, style], sort=False):
        k = styles.index(s)
        part = part.sort_values(x)
        ax.plot(
            part[x],
            part[y],
            color=colours[h],
            ls=_LINESTYLES[k % len(_LINESTYLES)],
            marker=_MARKERS[k % len(_MARKERS)],
            mfc=colours[h] if k == 0 else "none",
            ms=7 if k == 0 else 9,
            label=f"{labels.get(h, h)}, {s}",
        )
    if reference is not None:
        ax.axvline(reference, c="0.6", lw=1, ls=":", gid="reference")
    if ylim is not None:
        pad = 0.03 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set(xlabel=xlabel or x, ylabel=ylabel or y)
    if title:
        ax.set_title(title)
    handles = [Line2D([], [], color=colours[h], lw=2.5, label=str(labels.get(h, h))) for h in hues]
    handles += [
        Line2D(
            [],
            [],
            color="k",
            ls=_LINESTYLES[k % len(_LINESTYLES)],
            marker=_MARKERS[k % len(_MARKERS)],
            mfc="k" if k == 0 else "none",
            label=str(s),
        )
        for k, s in enumerate(styles)
    ]
    ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return fig


# --- solvers (notebook 02) --------------------------------------------------------------------
def layer_error_grid(
    errors,
    *,
    mark=(),
    methods=None,
    ncols: int = 2,
    title: str | None = None,
    ylabel: str = r"$\|WX-\widehat WX\|^2 / \|WX\|^2$",
    size: tuple[float, float] = (4.8, 3.0),
) -> plt.Figure:
    """Relative reconstruction error against target sparsity, one panel per layer, one line per method.

    ``errors``: a DataFrame with columns ``layer``, ``sparsity``, ``method``, ``rel_error`` (one row per layer,
    target and method; panels follow the order of first appearance of ``layer``). Log y axis. ``methods`` fixes
    the order (and subset) of the methods. ``mark``: (layer, sparsity) pairs where the solvers did not reach the
    same sparsity (e.g. SparseGPT's per-block floor on a depthwise convolution); each is drawn as a grey
    band (``gid`` :data:`UNEVEN_GID`) behind the points, so the reader does not compare unlike points, and the
    legend says what the band means.

    Returns the Figure. TypeError/ValueError for a missing column, an empty table, a method not in the table,
    ``ncols`` < 1, or a marked layer not in the table.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    _check_frame(errors, "errors", ["layer", "sparsity", "method", "rel_error"])
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    layers = list(dict.fromkeys(errors["layer"]))
    present = list(dict.fromkeys(errors["method"]))
    methods = present if methods is None else list(methods)
    unknown = [m for m in methods if m not in present]
    if unknown:
        raise ValueError(f"methods {unknown} are not in errors (has {present})")
    marks: dict = {}
    for pair in mark:
        try:
            layer, sparsity = pair
        except (TypeError, ValueError) as err:
            raise TypeError(f"mark must hold (layer, sparsity) pairs, got {pair!r}") from err
        if layer not in layers:
            raise ValueError(f"marked layer {layer!r} is not in errors")
        marks.setdefault(layer, []).append(float(sparsity))
    colours = dict(zip(methods, _palette(len(methods))))
    targets = np.sort(errors["sparsity"].unique().astype(float))
    half = 0.35 * (np.diff(targets).min() if len(targets) > 1 else 0.05)
    nrows = -(-len(layers) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, layout="constrained"
    )
    for k, ax in enumerate(axes.flat):
        if k >= len(layers):
            ax.set_axis_off()
            continue
        layer = layers[k]
        sub = errors[errors["layer"] == layer]
        for i, m in enumerate(methods):
            d = sub[sub["method"] == m].sort_values("sparsity")
            ax.plot(
                d["sparsity"],
                d["rel_error"],
                color=colours[m],
                ls=_LINESTYLES[i % len(_LINESTYLES)],
                marker=_MARKERS[i % len(_MARKERS)],
                ms=4,
                label=m,
            )
        for s in marks.get(layer, []):
            ax.axvspan(s - half, s + half, color="0.85", lw=0, zorder=0, gid=UNEVEN_GID)
        ax.set_yscale("log")
        ax.set_title(str(layer), fontsize=9)
        ax.set_xlabel("target sparsity")
        ax.set_ylabel(ylabel)
    handles: list[Any] = [
        Line2D(
            [],
            [],
            color=colours[m],
            ls=_LINESTYLES[i % len(_LINESTYLES)],
            marker=_MARKERS[i % len(_MARKERS)],
            label=m,
        )
        for i, m in enumerate(methods)
    ]
    if marks:
        handles.append(Patch(fc="0.85", label="solvers reached different sparsities:\nnot comparable"))
    fig.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def trace_settings_figure(
    n_augment,
    dampening,
    per_layer,
    *,
    all_views: int | None = None,
    layer_label=None,
    title: str | None = None,
) -> plt.Figure:
    """What the number of views, the dampening and a per-block schedule do to a trace, in three columns.

    - ``n_augment``: columns ``n_augment``, ``mean_rel_error``, ``agreement`` and optionally
      ``mean_rel_error_on_all_views`` (the error on the statistics of ``all_views`` views);
    - ``dampening``: columns ``percdamp``, ``mean_rel_error``, ``agreement``;
    - ``per_layer``: columns ``schedule``, ``layer``, ``rel_error`` (one row per layer of each schedule's trace,
      layers in depth order). A schedule named ``"uniform (for X)"`` shares the colour of ``X`` and is dashed.

    The first two columns have two panels each, on a shared log x axis: the mean layer relative error on a
    linear axis that starts at 0 (so a spread of a few percent looks like one), and the top-1 agreement on
    [0, 1] below it; no twin axes. The third column plots each layer's error (log y) for each schedule.
    ``layer_label`` (callable, layer name -> tick label) shortens the layer names.

    Returns the Figure. TypeError/ValueError when a table is not a DataFrame, lacks a column or is empty.
    """
    _check_frame(n_augment, "n_augment", ["n_augment", "mean_rel_error", "agreement"])
    _check_frame(dampening, "dampening", ["percdamp", "mean_rel_error", "agreement"])
    _check_frame(per_layer, "per_layer", ["schedule", "layer", "rel_error"])
    if layer_label is not None and not callable(layer_label):
        raise TypeError("layer_label must be a callable (layer name -> label) or None")

    fig = plt.figure(figsize=(13, 4.6), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=(2, 1))
    views_label = f"on all {all_views} views" if all_views else "on all views"
    panels: tuple[tuple[str, str, Any, str, list[tuple[str, str | None]]], ...] = (
        ("Number of augmentations", "augmented views N", n_augment, "n_augment",
         [("mean_rel_error", "on own views"), ("mean_rel_error_on_all_views", views_label)]),
        ("Dampening", "dampening (fraction of mean diag H)", dampening, "percdamp",
         [("mean_rel_error", None)]),
    )  # fmt: skip
    for col, (name, xlabel, frame, x, series) in enumerate(panels):
        frame = frame.sort_values(x)
        err = fig.add_subplot(grid[0, col])
        agree = fig.add_subplot(grid[1, col], sharex=err)
        top = 0.0
        for k, (column, label) in enumerate(series):
            if column not in frame:
                continue
            err.plot(frame[x], frame[column], marker=_MARKERS[k], ls=_LINESTYLES[k], label=label)
            top = max(top, float(frame[column].max()))
        err.set_xscale("log")
        err.set_ylim(0, 1.15 * top if top > 0 else 1)
        err.set_ylabel("mean layer\nrelative error")
        err.set_title(name)
        err.tick_params(labelbottom=False)
        if len([c for c, _ in series if c in frame]) > 1:
            err.legend(fontsize=8, loc="lower left")
        agree.plot(frame[x], frame["agreement"], marker="^", color="0.3")
        agree.set_ylim(-0.05, 1.05)
        agree.set_yticks([0, 0.5, 1])
        agree.set_ylabel("top-1\nagreement")
        agree.set_xlabel(xlabel)
        if x == "n_augment":
            values = [int(v) for v in frame[x]]
            agree.set_xticks(values, [str(v) for v in values])
            agree.xaxis.set_minor_formatter(plt.NullFormatter())

    ax = fig.add_subplot(grid[:, 2])
    layers = list(dict.fromkeys(per_layer["layer"]))
    depth = {name: i for i, name in enumerate(layers)}
    schedules = list(dict.fromkeys(per_layer["schedule"]))
    bases = list(dict.fromkeys(str(s).removeprefix("uniform (for ").removesuffix(")") for s in schedules))
    colours = dict(zip(bases, _palette(len(bases))))
    for sched in schedules:
        d = per_layer[per_layer["schedule"] == sched]
        uniform = str(sched).startswith("uniform (for ")
        base = str(sched).removeprefix("uniform (for ").removesuffix(")")
        ax.plot(
            [depth[n] for n in d["layer"]],
            d["rel_error"],
            ls="--" if uniform else "-",
            marker="s" if uniform else "o",
            mfc="none" if uniform else colours.get(base),
            color=colours.get(base),
            ms=5,
            label=sched,
        )
    ax.set_yscale("log")
    ax.set_xticks(range(len(layers)), [layer_label(n) if layer_label else n for n in layers])
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    ax.set_ylabel("layer relative error")
    ax.legend(fontsize=7, loc="best")
    ax.set_title("Uniform vs per-block sparsity")
    if title:
        fig.suptitle(title)
    return fig


# --- images (notebook 03) ---------------------------------------------------------------------
def labelled_image_grid(rows, *, column_titles, row_titles=None, size: float = 2.4) -> plt.Figure:
    """Rows of images with one header of column titles (above the first row only) and a title above each row.

    ``rows``: a sequence of rows, each a sequence of images (anything :func:`to_display` takes), all rows as long
    as ``column_titles``. ``row_titles``: one string per row (e.g. a photo, its class and a measured distance),
    drawn as the title of the row's sub-figure. Returns the Figure. TypeError when ``rows`` is not a sequence of
    sequences; ValueError when it is empty or a row's length or the number of row titles does not match.
    """
    if not isinstance(rows, Sequence) or not all(isinstance(r, Sequence) for r in rows):
        raise TypeError("rows must be a sequence of rows, each a sequence of images")
    if not rows:
        raise ValueError("rows must hold at least one row")
    column_titles = [str(t) for t in column_titles]
    bad = [i for i, r in enumerate(rows) if len(r) != len(column_titles)]
    if bad:
        raise ValueError(f"rows {bad} do not have one image per column title ({len(column_titles)})")
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"row_titles must have one title per row ({len(rows)}), got {len(row_titles)}")
    ncols = len(column_titles)
    fig = plt.figure(figsize=(size * ncols, (size + 0.45) * len(rows) + 0.3), layout="constrained")
    subfigs = np.atleast_1d(np.asarray(fig.subfigures(len(rows), 1), dtype=object))
    for i, (sub, row) in enumerate(zip(subfigs, rows)):
        axes = np.atleast_1d(sub.subplots(1, ncols))
        for j, (ax, image) in enumerate(zip(axes, row)):
            _bare(ax)
            ax.imshow(to_display(image))
            if i == 0:
                ax.set_title(column_titles[j], fontsize=10)
        if row_titles is not None:
            sub.suptitle(str(row_titles[i]), fontsize=10, fontweight="bold")
    return fig


def saliency_grid(
    maps,
    photos,
    *,
    methods,
    explainers,
    quantile: float = 0.995,
    cmap: str = "bwr",
    size: float = 1.5,
) -> plt.Figure:
    """Saliency maps of several explainers (dense, traces) side by side, one colour scale per method.

    ``maps``: a mapping ``(photo, method, explainer) -> (H, W)`` signed map (tensor or array); ``photos``: a
    mapping photo name -> the image the maps explain (shown in the first column, on the first row of each
    photo's block of ``len(explainers)`` rows). One header row names the columns ("input" and the methods);
    each row is labelled with its explainer (and each block with its photo). Every map of one method, across
    all rows, shares one symmetric colour range ±v, v = the ``quantile`` of |value| over all those maps (larger
    values are clipped), so maps of the dense network and of a trace can be compared by colour; a colour bar
    under each column gives the range.

    Returns the Figure. TypeError when ``maps``/``photos`` are not mappings; ValueError when a map is missing or
    not 2-D, ``methods``/``explainers``/``photos`` are empty, or ``quantile`` is not in (0, 1].
    """
    if not isinstance(maps, Mapping) or not isinstance(photos, Mapping):
        raise TypeError("maps and photos must be mappings")
    methods, explainers, names = list(methods), list(explainers), list(photos)
    if not methods or not explainers or not names:
        raise ValueError("methods, explainers and photos must each be non-empty")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    arrays = {}
    for n in names:
        for m in methods:
            for e in explainers:
                if (n, m, e) not in maps:
                    raise ValueError(f"maps has no entry for (photo, method, explainer) = {(n, m, e)!r}")
                a = _as_array(maps[n, m, e], f"maps[{(n, m, e)!r}]")
                if a.ndim != 2:
                    raise ValueError(f"maps[{(n, m, e)!r}] must be (H, W), got shape {a.shape}")
                arrays[n, m, e] = a
    scale = {}
    for m in methods:
        values = np.concatenate([np.abs(arrays[n, m, e]).ravel() for n in names for e in explainers])
        scale[m] = max(float(np.quantile(values, quantile)), 1e-12)

    nrows, ncols = len(names) * len(explainers), 1 + len(methods)
    fig = plt.figure(figsize=(size * ncols + 0.6, size * nrows + 0.8), layout="constrained")
    grid = fig.add_gridspec(nrows + 1, ncols, height_ratios=[1] * nrows + [0.08])
    images = {}
    for b, n in enumerate(names):
        for k, e in enumerate(explainers):
            r = b * len(explainers) + k
            ax = fig.add_subplot(grid[r, 0])
            _bare(ax)
            if k == 0:
                ax.imshow(to_display(photos[n]))
                ax.set_ylabel(str(n), fontsize=9)
            else:
                ax.set_axis_off()
            if r == 0:
                ax.set_title("input", fontsize=9)
            for j, m in enumerate(methods):
                ax = fig.add_subplot(grid[r, 1 + j])
                _bare(ax)
                images[m] = ax.imshow(arrays[n, m, e], cmap=cmap, vmin=-scale[m], vmax=scale[m])
                if r == 0:
                    ax.set_title(str(m), fontsize=9)
                if j == 0:
                    ax.set_ylabel(str(e), fontsize=8)
    for j, m in enumerate(methods):
        cax = fig.add_subplot(grid[nrows, 1 + j])
        bar = fig.colorbar(images[m], cax=cax, orientation="horizontal")
        bar.set_ticks([-scale[m], 0, scale[m]], labels=[f"{-scale[m]:.2g}", "0", f"{scale[m]:.2g}"])
        bar.ax.tick_params(labelsize=6)
    return fig


def auc_interval_figure(auc_table, *, columns: Sequence[str], methods: Sequence[str]) -> plt.Figure:
    """Insertion and deletion AUC with their intervals, one panel each: per saliency method (x, in the order of
    ``methods``) one point per explainer column (in the order of ``columns``, side by side), its error bar
    from ``<metric>_lo`` to ``<metric>_hi``. ``auc_table``: one row per (explainer, method), as
    :func:`spade_utils.metrics.summarize_aucs` returns. Raises TypeError/ValueError naming the argument for a
    table without those columns or a (column, method) pair it lacks."""
    metrics = ("insertion", "deletion")
    _check_frame(
        auc_table,
        "auc_table",
        ["explainer", "method", *[f"{m}{s}" for m in metrics for s in ("", "_lo", "_hi")]],
    )
    if isinstance(columns, str) or isinstance(methods, str):
        raise TypeError("columns and methods must be lists of names, not one string")
    columns, methods = list(columns), list(methods)
    if auc_table.duplicated(["explainer", "method"]).any():
        raise ValueError("auc_table has more than one row for some (explainer, method)")
    for m in metrics:
        est, lo, hi = (auc_table[f"{m}{s}"].to_numpy(float) for s in ("", "_lo", "_hi"))
        # a NaN bound (too few values to resample) compares False either way and passes
        if not (np.isfinite(est) & ~(lo > est) & ~(hi < est)).all():
            raise ValueError(f"auc_table: {m} must be finite and within [{m}_lo, {m}_hi]")
    have = set(zip(auc_table["explainer"], auc_table["method"]))
    missing = [(c, m) for c in columns for m in methods if (c, m) not in have]
    if not columns or not methods or missing:
        raise ValueError(f"columns/methods: auc_table has no row for {missing[:4] or 'an empty selection'}")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.7 / len(columns)
    for ax, metric in zip(axes, metrics):
        for k, explainer in enumerate(columns):
            sub = auc_table[auc_table["explainer"] == explainer].set_index("method").loc[methods]
            ax.errorbar(
                np.arange(len(methods)) + (k - (len(columns) - 1) / 2) * width,
                sub[metric],
                yerr=[sub[metric] - sub[f"{metric}_lo"], sub[f"{metric}_hi"] - sub[metric]],
                fmt="o",
                capsize=3,
                label=explainer,
            )
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
        ax.set_title(f"{metric} AUC ({'higher' if metric == 'insertion' else 'lower'} is better)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
