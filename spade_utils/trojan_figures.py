"""The figures of the backdoor experiment (notebook 04): Trojan AUC per method and variant with the paired test
beside it, and saliency maps with the trigger's outline and each map's own Trojan AUC.

One colour per model variant everywhere (:data:`VARIANT_COLORS`), so Dense and SPADE are never two shades of the
same hue, and the paired differences (the test behind "SPADE raises Trojan AUC") sit next to the unpaired means
they qualify.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch

from .plotting import _check_frame as _frame
from .plotting import to_display

__all__ = ["VARIANT_COLORS", "trojan_auc_figure", "trojan_map_grid"]

VARIANT_COLORS = {
    "Clean original": "#8c8c8c",
    "Dense": "#1f5fa8",
    "Sparse FC": "#3a9a3a",
    "FastSPADE (SparseGPT)": "#e08a00",
    "SPADE (OBC)": "#c0262d",
}
_EXTRA = ("#7b3fa0", "#1b9e9e", "#a65628", "#e377c2")


def _colors(variants: Sequence[str]) -> dict[str, str]:
    extra = iter(_EXTRA * (1 + len(variants) // len(_EXTRA)))
    return {v: VARIANT_COLORS.get(v) or next(extra) for v in variants}


def _names(values, name: str, allowed: set) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"{name} must be a non-empty list of names")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"{name} {unknown} are not in the table (it has {sorted(allowed)})")
    return list(values)


def trojan_auc_figure(
    table: pd.DataFrame,
    paired: pd.DataFrame,
    *,
    variants: Sequence[str],
    methods: Sequence[str],
    baseline: str = "Dense",
) -> plt.Figure:
    """Left: mean Trojan AUC (x100) with its 95% interval per saliency method and variant, and the average over
    methods in its own column; right: each variant minus ``baseline`` on the same samples (average over methods,
    paired bootstrap interval), for the absolute and the signed map.

    table: :func:`spade_utils.backdoor.summarize_scores` output (columns variant, method, mean, low, high; method
    "average" for the average). paired: :func:`spade_utils.backdoor.paired_differences` output with a ``map``
    column ("auc" for the absolute-or-signed Trojan AUC, "auc_signed" for the signed map). AUCs are fractions;
    both panels show points (x100). Raises TypeError/ValueError naming the argument for missing columns,
    variants or methods not in ``table``."""
    _frame(table, "table", ["variant", "method", "mean", "low", "high"])
    _frame(paired, "paired", ["variant", "method", "diff", "low", "high", "map"])
    variants = _names(variants, "variants", set(table.variant))
    methods = _names(methods, "methods", set(table.method) - {"average"})
    if "average" not in set(table.method):
        raise ValueError("table has no 'average' rows (summarize_scores adds them)")
    colors = _colors(variants)
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(12.5, 4.2), gridspec_kw={"width_ratios": [3.2, 1.3], "wspace": 0.35}
    )
    columns = methods + ["average"]
    xs_of = {m: i + (0.6 if m == "average" else 0.0) for i, m in enumerate(columns)}
    width = 0.8 / len(variants)
    for k, v in enumerate(variants):
        d = table[table.variant == v].set_index("method")
        present = [m for m in columns if m in d.index]
        xs = [xs_of[m] + (k - (len(variants) - 1) / 2) * width for m in present]
        mean = 100 * d.loc[present, "mean"].to_numpy(float)
        err = [
            mean - 100 * d.loc[present, "low"].to_numpy(float),
            100 * d.loc[present, "high"].to_numpy(float) - mean,
        ]
        ax.errorbar(xs, mean, yerr=err, fmt="o", ms=4.5, capsize=2, color=colors[v], label=v)
    ax.axvline((xs_of["average"] + xs_of[methods[-1]]) / 2, color="0.75", lw=0.8)
    ax.axhline(50, color="0.6", lw=0.8, ls=":")
    ax.set_xticks([xs_of[m] for m in columns], columns, rotation=30, ha="right")
    ax.set_ylabel("Trojan AUC ×100 (mean, 95% CI)")
    ax.set_title("Trojan AUC per saliency method (intervals: photos, then crops)", fontsize=10)
    ax.legend(fontsize=8, ncol=min(3, len(variants)), loc="lower left")
    others = [v for v in variants if v != baseline]
    avg = paired[paired.method == "average"]
    for j, (m, style) in enumerate((("auc", "o"), ("auc_signed", "s"))):
        for i, v in enumerate(others):
            r = avg[(avg.variant == v) & (avg["map"] == m)]
            if r.empty:
                continue
            r = r.iloc[0]
            y = i + (j - 0.5) * 0.3
            bx.errorbar(
                100 * r["diff"],
                y,
                xerr=[[100 * (r["diff"] - r["low"])], [100 * (r["high"] - r["diff"])]],
                fmt=style,
                ms=5,
                capsize=2,
                color=colors[v],
                mfc=colors[v] if m == "auc" else "white",
            )
    bx.axvline(0, color="0.4", lw=0.8)
    bx.set_yticks(range(len(others)), others, fontsize=8)
    bx.invert_yaxis()
    bx.set_xlabel(f"minus {baseline}, paired (points ×100)")
    bx.set_title("average over methods:\n● absolute map  ○ signed map", fontsize=9)
    return fig


def _as_maps(maps, name: str) -> torch.Tensor:
    t = torch.as_tensor(maps).detach().float().cpu()
    if t.dim() != 3:
        raise ValueError(f"{name} must be (samples, H, W) maps, got shape {tuple(t.shape)}")
    return t


def trojan_map_grid(
    images,
    masks,
    maps: Mapping[tuple[str, str], object],
    aucs: Mapping[tuple[str, str], Sequence[float]],
    *,
    methods: Sequence[str],
    variants: Sequence[str],
    row_titles: Sequence[str] | None = None,
    size: float = 1.9,
) -> plt.Figure:
    """One row per sample: the triggered image with the trigger's outline, then ``|map|`` of every method x
    variant with the same outline and the map's Trojan AUC (x100) in its corner.

    images: (S, 3, H, W) in [0, 1]; masks: (S, H, W) bool, True on the trigger; maps[(variant, method)]: (S', H, W)
    with S' >= S (the first S are drawn); aucs[(variant, method)]: the maps' Trojan AUCs, fractions. Within a
    row, the maps of one method share one colour scale (the largest ``|map|`` over its variants), so a trace's
    map is never brightened by being scaled on its own. Raises TypeError/ValueError naming the argument for
    mismatched shapes or a (variant, method) without a map or AUC."""
    images = torch.as_tensor(images).detach().float().cpu()
    masks = torch.as_tensor(masks).detach().bool().cpu()
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (S, 3, H, W), got {tuple(images.shape)}")
    if masks.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(
            f"masks must be (S, H, W) = {(images.shape[0], *images.shape[2:])}, got {tuple(masks.shape)}"
        )
    methods, variants = list(methods), list(variants)
    if not methods or not variants:
        raise ValueError("methods and variants must be non-empty")
    keys = [(v, m) for m in methods for v in variants]
    missing = [k for k in keys if k not in maps or k not in aucs]
    if missing:
        raise ValueError(f"maps/aucs lack {missing}")
    n = images.shape[0]
    tensors = {k: _as_maps(maps[k], f"maps[{k}]")[:n].abs() for k in keys}
    for k, t in tensors.items():
        if t.shape != masks.shape:
            raise ValueError(
                f"maps[{k}] must hold at least {n} maps of {tuple(masks.shape[1:])}, got {tuple(t.shape)}"
            )
        if len(aucs[k]) < n:
            raise ValueError(f"aucs[{k}] has {len(aucs[k])} values for {n} samples")
    if row_titles is not None and len(row_titles) != n:
        raise ValueError(f"row_titles must have {n} entries, got {len(row_titles)}")
    ncols = 1 + len(keys)
    fig, axes = plt.subplots(n, ncols, figsize=(size * ncols, size * n + 0.5), squeeze=False)
    colors = _colors(variants)
    for i in range(n):
        outline = masks[i].float().numpy()
        ax = axes[i, 0]
        ax.imshow(to_display(images[i]))
        ax.contour(outline, levels=[0.5], colors="cyan", linewidths=0.9)
        if row_titles is not None:
            ax.set_ylabel(row_titles[i], fontsize=8)
        for m in methods:
            top = max(float(tensors[(v, m)][i].max()) for v in variants) + 1e-12
            for v in variants:
                a = axes[i, 1 + keys.index((v, m))]
                a.imshow(tensors[(v, m)][i].numpy(), cmap="magma", vmin=0, vmax=top)
                a.contour(outline, levels=[0.5], colors="cyan", linewidths=0.7)
                a.text(
                    0.03,
                    0.04,
                    f"AUC {100 * float(aucs[(v, m)][i]):.0f}",
                    transform=a.transAxes,
                    fontsize=7,
                    color="white",
                    bbox=dict(facecolor=colors[v], edgecolor="none", pad=1.2, alpha=0.9),
                )
    for j in range(ncols):
        axes[0, j].set_title(
            "triggered image" if j == 0 else f"{keys[j - 1][1]}\n{keys[j - 1][0]}", fontsize=8
        )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.tight_layout()
    return fig
