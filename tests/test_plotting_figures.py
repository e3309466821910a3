"""The notebook figures of spade_utils.plotting: what each one draws (limits, marks, legends), not only that it runs."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.patches import Circle

from spade_utils import plotting
from spade_utils.plotting import ToyPanel

REGIONS = {"large": ((4.0, 4.0), 2.0), "small": ((1.0, 1.0), 0.5)}
BOX = (0.0, 9.0)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _data_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.axison]


# --- toy ----------------------------------------------------------------------------------------
def _toy_rows(n_rows=2):
    rng = np.random.default_rng(0)
    return [
        [
            ToyPanel(f"dense (seed {r})", rng.uniform(3, 5, (20, 2))),
            ToyPanel("SPADE, scenario 1", torch.full((10, 2), 4.0), sample=(4.0, 4.0)),
            ToyPanel("SPADE, scenario 2", rng.uniform(0.8, 1.2, (15, 2)), sample=(1.0, 1.0)),
        ]
        for r in range(n_rows)
    ]


def test_toy_panels_outline_the_discs_and_label_the_axes():
    bg = np.random.default_rng(1).uniform(0, 9, (300, 2))
    positive = np.hypot(*(bg - 4).T) < 2
    fig = plotting.toy_panels(_toy_rows(2), regions=REGIONS, box=BOX, background=(bg, positive))
    axes = _data_axes(fig)
    assert len(axes) == 6
    for k, ax in enumerate(axes):
        circles = {p.get_gid(): p for p in ax.patches if isinstance(p, Circle)}
        assert set(circles) == {"disc:large", "disc:small"}
        for name, (centre, radius) in REGIONS.items():
            assert circles[f"disc:{name}"].center == pytest.approx(centre)
            assert circles[f"disc:{name}"].get_radius() == pytest.approx(radius)
            assert not circles[f"disc:{name}"].get_fill()
        assert ax.get_xlim() == pytest.approx(BOX) and ax.get_ylim() == pytest.approx(BOX)
        # x1 under the bottom row, x2 left of the first column
        assert ax.get_xlabel() == ("$x_1$" if k >= 3 else "")
        assert ax.get_ylabel() == ("$x_2$" if k % 3 == 0 else "")
        points = [c for c in ax.collections if c.get_gid() == "points"]
        assert len(points) == 1
        samples = [c for c in ax.collections if c.get_gid() == "sample"]
        assert len(samples) == (0 if k % 3 == 0 else 1)
    assert axes[4].get_title() == "SPADE, scenario 1"
    assert np.allclose([c for c in axes[4].collections if c.get_gid() == "sample"][0].get_offsets(), [[4, 4]])
    legend_text = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"feature visualization", "sample", "positive discs"} <= set(legend_text)


def test_toy_panels_one_flat_row_and_bad_input():
    fig = plotting.toy_panels(_toy_rows(1)[0], regions=REGIONS, box=BOX)
    assert len(_data_axes(fig)) == 3
    assert [ax.get_xlabel() for ax in _data_axes(fig)] == ["$x_1$"] * 3
    with pytest.raises(ValueError, match="rows"):
        plotting.toy_panels([], regions=REGIONS, box=BOX)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        plotting.toy_panels([ToyPanel("bad", np.zeros((4, 3)))], regions=REGIONS, box=BOX)
    with pytest.raises(TypeError, match="ToyPanel"):
        plotting.toy_panels([["not a panel"]], regions=REGIONS, box=BOX)
    with pytest.raises(ValueError, match="radius"):
        plotting.toy_panels(_toy_rows(1), regions={"x": ((0, 0), 0.0)}, box=BOX)
    with pytest.raises(ValueError, match="box"):
        plotting.toy_panels(_toy_rows(1), regions=REGIONS, box=(9, 0))


def test_sweep_figure_colour_per_scenario_style_per_solver():
    rows = [
        {"sparsity": s, "scenario": sc, "solver": so, "share": v}
        for sc in ("scenario 1", "scenario 2")
        for so in ("sparsegpt", "obc")
        for s, v in ((0.0, 0.0), (0.5, 1.0), (0.9, 0.4))
    ]
    fig = plotting.sweep_figure(
        pd.DataFrame(rows),
        x="sparsity",
        y="share",
        hue="scenario",
        style="solver",
        hue_labels={"scenario 1": "scenario 1 (large disc)"},
        ylim=(0, 1),
        reference=0.5,
    )
    ax = fig.axes[0]
    data_lines = [ln for ln in ax.get_lines() if ln.get_label() and not ln.get_label().startswith("_")]
    assert len(data_lines) == 4
    by_label = {ln.get_label(): ln for ln in data_lines}
    colour = {k: matplotlib.colors.to_hex(ln.get_color()) for k, ln in by_label.items()}
    style = {k: ln.get_linestyle() for k, ln in by_label.items()}
    # one colour per scenario, one line style per solver
    assert colour["scenario 1 (large disc), sparsegpt"] == colour["scenario 1 (large disc), obc"]
    assert colour["scenario 2, sparsegpt"] == colour["scenario 2, obc"]
    assert colour["scenario 1 (large disc), obc"] != colour["scenario 2, obc"]
    assert style["scenario 1 (large disc), sparsegpt"] == style["scenario 2, sparsegpt"]
    assert style["scenario 1 (large disc), obc"] == style["scenario 2, obc"]
    assert style["scenario 2, sparsegpt"] != style["scenario 2, obc"]
    lo, hi = ax.get_ylim()
    assert lo <= 0 and hi >= 1 and hi - lo < 1.2  # the whole [0, 1] range, no zoom
    assert [ln for ln in ax.get_lines() if ln.get_gid() == "reference"][0].get_xdata()[0] == 0.5
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["scenario 1 (large disc)", "scenario 2", "sparsegpt", "obc"]
    with pytest.raises(ValueError, match="lacks the columns"):
        plotting.sweep_figure(pd.DataFrame(rows), x="sparsity", y="nope", hue="scenario", style="solver")
    with pytest.raises(TypeError, match="DataFrame"):
        plotting.sweep_figure(rows, x="sparsity", y="share", hue="scenario", style="solver")


# --- solvers --------------------------------------------------------------------------------------
def _errors():
    rows = []
    for layer in ("1x1 conv (a)", "depthwise conv (b)", "classifier (c)"):
        for m, scale in (("magnitude", 1.0), ("sparsegpt", 0.3), ("obc", 0.1)):
            for s in (0.5, 0.9, 0.95, 0.99):
                rows.append({"layer": layer, "sparsity": s, "method": m, "rel_error": scale * s**4})
    return pd.DataFrame(rows)


def test_layer_error_grid_marks_unequal_sparsity():
    mark = [("depthwise conv (b)", 0.95), ("depthwise conv (b)", 0.99)]
    fig = plotting.layer_error_grid(_errors(), mark=mark, title="t")
    axes = _data_axes(fig)
    assert len(axes) == 3 and not fig.axes[3].axison  # 2 x 2 grid, the spare panel off
    for ax in axes:
        assert ax.get_yscale() == "log"
        assert len(ax.get_lines()) == 3
        assert ax.get_xlabel() == "target sparsity"
    bands = {ax.get_title(): [p for p in ax.patches if p.get_gid() == plotting.UNEVEN_GID] for ax in axes}
    assert len(bands["depthwise conv (b)"]) == 2 and not bands["1x1 conv (a)"] and not bands["classifier (c)"]
    for band, (_, s) in zip(bands["depthwise conv (b)"], mark):
        x0, x1 = band.get_x(), band.get_x() + band.get_width()  # data coordinates along x
        assert (
            x0 < s < x1 and x1 - x0 < 0.04
        )  # centred on the point, narrower than the gap to the next target
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:3] == ["magnitude", "sparsegpt", "obc"] and "not comparable" in legend[3]
    # without marks: no band, no band legend entry
    fig = plotting.layer_error_grid(_errors(), methods=["obc", "sparsegpt"])
    assert not any(p.get_gid() == plotting.UNEVEN_GID for ax in fig.axes for p in ax.patches)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["obc", "sparsegpt"]
    with pytest.raises(ValueError, match="not in errors"):
        plotting.layer_error_grid(_errors(), mark=[("nope", 0.9)])
    with pytest.raises(ValueError, match="methods"):
        plotting.layer_error_grid(_errors(), methods=["lbfgs"])


def _settings_frames():
    aug = pd.DataFrame(
        {
            "n_augment": [16, 32, 64, 128],
            "mean_rel_error": [0.107, 0.109, 0.1095, 0.110],
            "mean_rel_error_on_all_views": [0.126, 0.118, 0.113, 0.110],
            "agreement": [0.375, 0.5625, 0.3125, 0.4375],
        }
    )
    damp = pd.DataFrame(
        {
            "percdamp": [0.001, 0.003, 0.01, 0.03, 0.1],
            "mean_rel_error": [0.1122, 0.1113, 0.1099, 0.1085, 0.1095],
            "agreement": [0.5, 0.56, 0.44, 0.5, 0.69],
        }
    )
    layers = ["_blocks.13._expand_conv", "_blocks.13._project_conv", "_fc"]
    per_layer = pd.DataFrame(
        [
            {"schedule": s, "layer": n, "rel_error": 0.01 * (k + 1) * (i + 1)}
            for k, s in enumerate(["sparser", "uniform (for sparser)"])
            for i, n in enumerate(layers)
        ]
    )
    return aug, damp, per_layer


def test_trace_settings_figure_error_axes_start_at_zero_without_twins():
    aug, damp, per_layer = _settings_frames()
    fig = plotting.trace_settings_figure(
        aug, damp, per_layer, all_views=128, layer_label=lambda n: n.replace("_blocks.", "b")
    )
    assert len(fig.axes) == 5  # error + agreement for two settings, one per-layer panel: no twin axes
    err_aug, agree_aug, err_damp, agree_damp, layers = fig.axes
    for err, frame in ((err_aug, aug), (err_damp, damp)):
        lo, hi = err.get_ylim()
        assert lo == 0 and hi >= frame.filter(like="mean_rel_error").to_numpy().max()
        assert err.get_xscale() == "log"
    for agree in (agree_aug, agree_damp):
        lo, hi = agree.get_ylim()
        assert lo <= 0 and hi >= 1
        assert "agreement" in agree.get_ylabel()
    assert len(err_aug.get_lines()) == 2 and len(err_damp.get_lines()) == 1
    assert [t.get_text() for t in err_aug.get_legend().get_texts()] == ["on own views", "on all 128 views"]
    assert err_aug.get_shared_x_axes().joined(err_aug, agree_aug)
    assert layers.get_yscale() == "log"
    assert [t.get_text() for t in layers.get_xticklabels()] == [
        "b13._expand_conv",
        "b13._project_conv",
        "_fc",
    ]
    solid, dashed = layers.get_lines()
    assert solid.get_color() == dashed.get_color() and dashed.get_linestyle() == "--"
    with pytest.raises(ValueError, match="agreement"):
        plotting.trace_settings_figure(aug.drop(columns="agreement"), damp, per_layer)


# --- images ---------------------------------------------------------------------------------------
def test_labelled_image_grid_one_header_and_row_titles():
    rows = [[np.zeros((8, 8, 3)), torch.rand(3, 8, 8), np.ones((8, 8, 3))] for _ in range(3)]
    titles = ["dense seed 0", "dense seed 1", "SPADE"]
    row_titles = [f"photo {i}: ratio {i + 0.5:.2f}" for i in range(3)]
    fig = plotting.labelled_image_grid(rows, column_titles=titles, row_titles=row_titles)
    assert len(fig.subfigs) == 3
    for i, sub in enumerate(fig.subfigs):
        assert sub._suptitle.get_text() == row_titles[i]
        assert [ax.get_title() for ax in sub.axes] == (titles if i == 0 else ["", "", ""])
        assert all(len(ax.images) == 1 for ax in sub.axes)
    with pytest.raises(ValueError, match="column title"):
        plotting.labelled_image_grid([[np.zeros((4, 4))]], column_titles=titles)
    with pytest.raises(ValueError, match="row_titles"):
        plotting.labelled_image_grid(rows, column_titles=titles, row_titles=["one"])


def test_saliency_grid_shares_one_colour_scale_per_method():
    photos = {"cat": torch.rand(3, 16, 16), "cup": np.random.default_rng(0).random((16, 16, 3))}
    methods, explainers = ["saliency", "lrp"], ["dense", "SPADE"]
    rng = np.random.default_rng(1)
    maps = {
        (n, m, e): rng.normal(size=(16, 16)) * (10.0 if m == "lrp" else 1.0) * (2.0 if e == "SPADE" else 1.0)
        for n in photos
        for m in methods
        for e in explainers
    }
    maps["cat", "saliency", "dense"] = torch.from_numpy(maps["cat", "saliency", "dense"])
    fig = plotting.saliency_grid(maps, photos, methods=methods, explainers=explainers, quantile=0.99)
    grid_axes = [ax for ax in fig.axes if ax.get_subplotspec().rowspan.start < 4]
    images = [(ax, im) for ax in grid_axes for im in ax.images]
    assert len(images) == 4 * 2 + 2  # every map, plus each photo once
    for j, m in enumerate(methods):
        values = np.concatenate(
            [np.abs(np.asarray(maps[n, m, e])).ravel() for n in photos for e in explainers]
        )
        v = np.quantile(values, 0.99)
        clims = [ax.images[0].get_clim() for ax in grid_axes if ax.get_subplotspec().colspan.start == 1 + j]
        assert len(clims) == 4  # every row of this method's column ...
        assert all(c == pytest.approx((-v, v)) for c in clims)  # ... on the one symmetric range of its maps
    # one header row: titles only on the first row
    titled = [ax.get_title() for ax in grid_axes if ax.get_title()]
    assert titled == ["input", "saliency", "lrp"]
    assert all(ax.get_subplotspec().rowspan.start == 0 for ax in grid_axes if ax.get_title())
    # the photo column shows each photo once, on its block's first row, labelled with its name
    photo_axes = [ax for ax in grid_axes if ax.get_subplotspec().colspan.start == 0 and ax.images]
    assert [ax.get_ylabel() for ax in photo_axes] == ["cat", "cup"]
    assert [ax.get_subplotspec().rowspan.start for ax in photo_axes] == [0, 2]
    row_labels = [ax.get_ylabel() for ax in grid_axes if ax.get_subplotspec().colspan.start == 1]
    assert row_labels == ["dense", "SPADE", "dense", "SPADE"]
    assert len(fig.axes) - len(grid_axes) == len(methods)  # one colour bar per method
    with pytest.raises(ValueError, match="no entry"):
        plotting.saliency_grid(maps, photos, methods=["gradcam"], explainers=explainers)
    with pytest.raises(ValueError, match="quantile"):
        plotting.saliency_grid(maps, photos, methods=methods, explainers=explainers, quantile=0)
    with pytest.raises(TypeError, match="mappings"):
        plotting.saliency_grid(list(maps), photos, methods=methods, explainers=explainers)


def test_auc_interval_figure_draws_each_column_and_method_with_its_interval():
    rows = []
    for i, e in enumerate(("dense", "FastSPADE")):
        for j, m in enumerate(("saliency", "lrp")):
            row = dict(explainer=e, method=m)
            for metric, v in (("insertion", 0.4 + 0.1 * i + 0.01 * j), ("deletion", 0.1 + 0.02 * j)):
                row.update({metric: v, f"{metric}_lo": v - 0.05, f"{metric}_hi": v + 0.02})
            rows.append(row)
    table = pd.DataFrame(rows)
    fig = plotting.auc_interval_figure(table, columns=["dense", "FastSPADE"], methods=["lrp", "saliency"])
    ins = fig.axes[0]
    points = [c for c in ins.containers]
    assert len(points) == 2  # one error-bar series per column
    for container, explainer in zip(points, ("dense", "FastSPADE")):
        y = container.lines[0].get_ydata()
        sub = table[table.explainer == explainer].set_index("method").loc[["lrp", "saliency"]]
        assert np.allclose(y, sub["insertion"])  # methods in the order asked
        segs = container.lines[2][0].get_segments()
        assert np.allclose([s[:, 1] for s in segs], sub[["insertion_lo", "insertion_hi"]].to_numpy())
    assert [t.get_text() for t in ins.get_xticklabels()] == ["lrp", "saliency"]
    plt.close(fig)
    with pytest.raises(ValueError, match="no row"):
        plotting.auc_interval_figure(table, columns=["dense", "SPADE"], methods=["lrp"])
    with pytest.raises(ValueError, match="more than one row"):
        plotting.auc_interval_figure(pd.concat([table, table.iloc[:1]]), columns=["dense"], methods=["lrp"])
    with pytest.raises(ValueError, match="within"):
        plotting.auc_interval_figure(table.assign(insertion_lo=0.99), columns=["dense"], methods=["lrp"])
    with pytest.raises(TypeError, match="columns"):
        plotting.auc_interval_figure(table, columns="dense", methods=["lrp"])
