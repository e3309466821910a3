"""Notebook 02's solver figures: how far each solver lands from the brute-force optimum on tiny layers, how
a layer's solve time grows with its width, beside the slopes the algorithms predict, where a trace's time goes,
and how a trace's prediction follows its sparsity target."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .plotting import _check_frame as _frame

__all__ = ["optimum_ratio_boxplots", "sensitivity_figure", "solve_time_figure", "stage_times_figure"]


def optimum_ratio_boxplots(tiny: pd.DataFrame, *, methods: Sequence[str], title: str) -> plt.Figure:
    """One panel per kind of inputs (column ``inputs``): box plots of ``ratio`` (a solver's loss over the
    brute-force optimum, >= 1) per ``sparsity`` and ``method`` (in the order of ``methods``), log scale, the
    optimum marked at 1. Raises TypeError/ValueError naming the argument for a table without those columns."""
    _frame(tiny, "tiny", ["inputs", "sparsity", "ratio", "method"])
    kinds = list(tiny.groupby("inputs").groups)
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.8), sharey=True, squeeze=False)
    for k, (ax, kind) in enumerate(zip(axes[0], kinds)):
        sns.boxplot(
            data=tiny[tiny.inputs == kind],
            x="sparsity",
            y="ratio",
            hue="method",
            hue_order=list(methods),
            ax=ax,
            fliersize=2,
            linewidth=0.8,
        )
        ax.set_yscale("log")
        ax.axhline(1, color="k", lw=0.8, ls=":")
        ax.set_title(f"{kind} inputs")
        ax.set_ylabel("loss / brute-force optimum")
        if k and ax.get_legend() is not None:
            ax.get_legend().remove()
    fig.suptitle(title, y=1.02)
    return fig


def solve_time_figure(
    timing: pd.DataFrame,
    *,
    labels: Mapping[str, str],
    styles: Mapping[str, str] | None = None,
    slopes: Sequence[tuple[str, float, str]] = (),
    title: str = "",
) -> plt.Figure:
    """Seconds per layer against input columns ``d`` (log-log), one line per ``method`` of ``timing`` (columns
    method, cols, seconds) labelled by ``labels``, drawn with ``styles[method]`` (a matplotlib format such as
    ``"o--"``; default ``"o-"``); each ``(text, power, method)`` of ``slopes`` adds a dotted
    guide ``∝ d^power`` through that method's widest point. Raises TypeError/ValueError naming the argument for
    a table without those columns or a method without a label."""
    _frame(timing, "timing", ["method", "cols", "seconds"])
    missing = sorted(set(timing.method) - set(labels))
    if missing:
        raise ValueError(f"labels lacks the methods {missing}")
    fig, ax = plt.subplots(figsize=(5.8, 4))
    for m, d in timing.groupby("method", sort=False):
        d = d.sort_values("cols")
        ax.loglog(d.cols, d.seconds, (styles or {}).get(m, "o-"), label=labels[m])
    widths = np.unique(timing.cols.to_numpy(float))
    for text, power, anchor in slopes:
        ref = timing[timing.method == anchor].sort_values("cols")
        if ref.empty:
            raise ValueError(f"slopes: no timing for the anchor method {anchor!r}")
        ref = ref.iloc[-1]
        guide = ref.seconds * (widths / ref.cols) ** power
        ax.loglog(widths, guide, ls=":", color="gray")
        ax.annotate(
            text,
            (widths[-2] if len(widths) > 1 else widths[-1], guide[-2 if len(widths) > 1 else -1]),
            color="gray",
            fontsize=9,
        )
    ax.set_xlabel("input columns d")
    ax.set_ylabel("seconds per layer")
    ax.set_title(title)
    ax.legend()
    return fig


def stage_times_figure(timings: pd.DataFrame, *, title: str = "") -> plt.Figure:
    """One horizontal bar of a trace's wall time, split into its stages in the order of ``timings`` (columns
    stage, seconds; e.g. ``SpadeTrace.timings`` as rows), each segment labelled with its seconds. Raises
    TypeError/ValueError naming the argument for a table without those columns or a negative time."""
    _frame(timings, "timings", ["stage", "seconds"])
    seconds = pd.to_numeric(timings.seconds, errors="coerce").to_numpy(float)
    if not (np.isfinite(seconds).all() and (seconds >= 0).all()):
        raise ValueError("timings: seconds must be finite numbers >= 0")
    fig, ax = plt.subplots(figsize=(6, 1.6))
    left = np.concatenate([[0.0], np.cumsum(seconds)[:-1]])
    for start, stage, sec in zip(left, timings.stage, seconds):
        ax.barh(0, sec, left=start, label=f"{stage} ({sec:.1f} s)")
    ax.set_yticks([])
    ax.set(xlabel="seconds", title=title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.6), ncol=3, frameon=False)
    return fig


def sensitivity_figure(
    summary: pd.DataFrame, *, dense_logit: float, n_views: int, class_name: str, title: str = ""
) -> plt.Figure:
    """Two panels against the traced layers' global sparsity, one line per ``solver`` of ``summary`` (columns
    solver, global_sparsity, agreement, logit): the top-1 agreement with the dense network over ``n_views``
    views (0-1), and the centre crop's logit of ``class_name`` beside the dense network's (``dense_logit``,
    dotted). Raises TypeError/ValueError naming the argument for a table without those columns."""
    _frame(summary, "summary", ["solver", "global_sparsity", "agreement", "logit"])
    if isinstance(dense_logit, bool) or not isinstance(dense_logit, (int, float, np.number)):
        raise TypeError(f"dense_logit must be a number, got {type(dense_logit).__name__}")
    if isinstance(n_views, bool) or not isinstance(n_views, (int, np.integer)) or n_views < 1:
        raise ValueError(f"n_views must be an int >= 1, got {n_views!r}")
    values = summary[["global_sparsity", "agreement"]].to_numpy(dtype=float, na_value=np.nan)
    if summary.solver.isna().any() or not ((values >= 0) & (values <= 1)).all():
        raise ValueError(
            "summary: every row needs a solver, and sparsity and agreement are fractions in [0, 1]"
        )
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for m, d in summary.groupby("solver", sort=False):
        d = d.sort_values("global_sparsity")
        axes[0].plot(d.global_sparsity, d.agreement, "o-", label=m)
        axes[1].plot(d.global_sparsity, d.logit, "o-", label=m)
    axes[1].axhline(dense_logit, color="k", ls=":", lw=0.8, label="dense")
    axes[0].set_ylim(-0.05, 1.05)
    axes[0].set_ylabel(f"top-1 agreement ({n_views} views)")
    axes[1].set_ylabel(f"logit of '{class_name}' (centre crop)")
    for ax in axes:
        ax.set_xlabel("global sparsity of the traced layers")
        ax.legend(fontsize=8)
    fig.suptitle(title, y=1.03)
    fig.tight_layout()
    return fig
