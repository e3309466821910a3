"""Notebook 04's figures (spade_utils.trojan_figures) draw the numbers they are given: the plotted means and
paired differences are read back from the artists, Dense and SPADE get different hues, the maps of one method
share a colour scale within a row and carry the trigger outline and their own AUC."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_hex

from spade_utils.trojan_figures import VARIANT_COLORS, trojan_auc_figure, trojan_map_grid

VARIANTS = ["Dense", "FastSPADE (SparseGPT)", "SPADE (OBC)"]
METHODS = ["saliency", "lrp"]


def _tables():
    rows, prs = [], []
    for k, v in enumerate(VARIANTS):
        for j, m in enumerate(METHODS + ["average"]):
            mean = 0.6 + 0.1 * k + 0.01 * j
            rows.append(dict(variant=v, method=m, mean=mean, low=mean - 0.05, high=mean + 0.04))
            if v != "Dense":
                for mp, d in (("auc", 0.02 * k), ("auc_signed", -0.01 * k)):
                    prs.append(dict(variant=v, method=m, diff=d, low=d - 0.01, high=d + 0.015, map=mp))
    return pd.DataFrame(rows), pd.DataFrame(prs)


def test_auc_figure_plots_the_table_and_the_paired_differences():
    table, paired = _tables()
    fig = trojan_auc_figure(table, paired, variants=VARIANTS, methods=METHODS)
    ax, bx = fig.axes
    lines = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    assert len(lines) == len(VARIANTS)
    for ln, v in zip(lines, VARIANTS):
        want = 100 * table[table.variant == v].set_index("method").loc[METHODS + ["average"], "mean"]
        assert ln.get_ydata() == pytest.approx(want.to_numpy())
        assert to_hex(ln.get_color()) == VARIANT_COLORS[v]
    assert VARIANT_COLORS["Dense"] != VARIANT_COLORS["SPADE (OBC)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == METHODS + ["average"]
    xs = sorted(float(ln.get_xdata()[0]) for ln in bx.get_lines() if ln.get_marker() in ("o", "s"))
    avg = paired[paired.method == "average"]
    assert xs == pytest.approx(sorted(100 * avg["diff"]))
    plt.close(fig)


def test_auc_figure_refuses_what_the_table_lacks():
    table, paired = _tables()
    with pytest.raises(ValueError, match="variants"):
        trojan_auc_figure(table, paired, variants=["Dense", "Nope"], methods=METHODS)
    with pytest.raises(ValueError, match="paired"):
        trojan_auc_figure(table, paired.drop(columns="map"), variants=VARIANTS, methods=METHODS)
    with pytest.raises(TypeError, match="table"):
        trojan_auc_figure(table.to_dict(), paired, variants=VARIANTS, methods=METHODS)


def test_map_grid_shares_a_scale_per_method_draws_outlines_and_aucs():
    g = torch.Generator().manual_seed(0)
    s, h = 2, 16
    images = torch.rand(s, 3, h, h, generator=g)
    masks = torch.zeros(s, h, h, dtype=torch.bool)
    masks[:, 2:7, 3:9] = True
    maps = {
        (v, m): torch.randn(s, h, h, generator=g) * (k + 1) for k, v in enumerate(VARIANTS) for m in METHODS
    }
    aucs = {key: [0.5 + 0.1 * i for i in range(s)] for key in maps}
    fig = trojan_map_grid(images, masks, maps, aucs, methods=METHODS, variants=VARIANTS)
    axes = fig.axes
    ncols = 1 + len(METHODS) * len(VARIANTS)
    assert len(axes) == s * ncols
    for i in range(s):
        row = axes[i * ncols : (i + 1) * ncols]
        for col, ax in enumerate(row):
            assert any(isinstance(c, LineCollection) or hasattr(c, "get_paths") for c in ax.collections)
            if col == 0:
                continue
            v, m = [(v, m) for m in METHODS for v in VARIANTS][col - 1]
            top = max(float(maps[(w, m)][i].abs().max()) for w in VARIANTS)
            assert ax.images[0].get_clim()[1] == pytest.approx(top, rel=1e-6)
            assert ax.texts[0].get_text() == f"AUC {100 * aucs[(v, m)][i]:.0f}"
    plt.close(fig)
    with pytest.raises(ValueError, match="lack"):
        trojan_map_grid(images, masks, {}, aucs, methods=METHODS, variants=VARIANTS)
    with pytest.raises(ValueError, match="masks"):
        trojan_map_grid(images, masks[:, :4], maps, aucs, methods=METHODS, variants=VARIANTS)
