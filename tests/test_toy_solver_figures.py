"""Notebook 01's toy panels (spade_utils.toy_figures) and notebook 02's solver figures
(spade_utils.solver_figures) draw exactly the arrays and tables they are given: values are read back from the
artists."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from spade_utils.solver_figures import (
    optimum_ratio_boxplots,
    sensitivity_figure,
    solve_time_figure,
    stage_times_figure,
)
from spade_utils.toy_figures import logit_maps, training_points, unit_lines

BOX = (-2.0, 10.0)
REGIONS = {"large": ((2.0, 2.0), 2.0), "small": ((7.0, 7.0), 1.0)}


def test_logit_maps_show_the_grids_the_discs_and_the_boundary_on_request():
    g = np.random.default_rng(0)
    maps = {"a": g.normal(size=(21, 21)) * 50, "b": g.normal(size=(21, 21))}
    fig = logit_maps(maps, box=BOX, regions=REGIONS, boundary=True)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["a", "b"]
    for ax, z in zip(panels, maps.values()):
        assert np.array_equal(np.asarray(ax.images[0].get_array()), z)
        assert sorted(p.get_gid() for p in ax.patches) == ["disc:large", "disc:small"]
        assert ax.images[0].get_extent() == [*BOX, *BOX]
        assert ax.collections  # the zero contour
    plain = logit_maps({"a": maps["a"]}, box=BOX, regions=REGIONS)
    assert not [ax for ax in plain.axes if ax.images][0].collections
    plt.close("all")
    with pytest.raises(ValueError, match="square"):
        logit_maps({"x": np.zeros((3, 4))}, box=BOX, regions=REGIONS)
    with pytest.raises(TypeError, match="maps"):
        logit_maps({}, box=BOX, regions=REGIONS)


def test_training_points_draw_each_class_in_its_colour_with_the_discs():
    pts = np.array([[0.0, 0.0], [1.0, 2.0], [7.0, 7.0], [3.0, 3.0]])
    labels = np.array([0, 1, 1, 0])
    fig = training_points(pts, labels, box=BOX, regions=REGIONS)
    ax = fig.axes[0]
    neg, pos = ax.collections[:2]
    assert np.array_equal(neg.get_offsets(), pts[[0, 3]])
    assert np.array_equal(pos.get_offsets(), pts[[1, 2]])
    assert to_hex(pos.get_facecolor()[0]) == to_hex("tab:blue")
    assert sorted(p.get_gid() for p in ax.patches) == ["disc:large", "disc:small"]
    assert ax.get_xlim() == BOX and ax.get_ylim() == BOX
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["negative (2)", "positive (2)"]
    plt.close(fig)
    with pytest.raises(ValueError, match="labels"):
        training_points(pts, labels[:3], box=BOX, regions=REGIONS)
    for bad in (np.array(["0", "1", "1", "0"]), np.array([0, 2, 1, -1]), np.array([0.3, 1, 1, np.nan])):
        with pytest.raises(ValueError, match="labels"):  # astype(bool) would call them all positive
            training_points(pts, bad, box=BOX, regions=REGIONS)


def test_unit_lines_draw_every_unit_and_grey_out_the_pruned_ones():
    lines = np.array([[1.0, 2.0, -3.0], [2.0, -0.5, 1.0], [0.0, 1.0, -4.0]])
    alive = np.array([True, False, True])
    fig = unit_lines({"trace": (lines, alive)}, box=BOX, regions=REGIONS, markers={"trace": (7.0, 7.0)})
    ax = fig.axes[0]
    drawn = ax.get_lines()
    assert len(drawn) == 3
    for (a, b, c), keep, ln in zip(lines, alive, drawn):
        x, y = ln.get_xdata(), ln.get_ydata()
        assert np.allclose(a * x + b * y + c, 0)  # the unit's own line
        assert to_hex(ln.get_color()) == (to_hex("tab:purple") if keep else to_hex("0.85"))
    assert ax.get_title() == "trace: 2 of 3 first-layer units kept"
    assert ax.collections  # the sample's marker
    plt.close(fig)
    with pytest.raises(ValueError, match="panels"):
        unit_lines({"t": (lines, alive[:2])}, box=BOX, regions=REGIONS)


def _timing():
    rows = []
    for m, base, p in (("sparsegpt", 1e-3, 2), ("obc", 1e-3, 2.5), ("straight", 1e-4, 3)):
        rows += [dict(method=m, cols=d, seconds=base * (d / 64) ** p) for d in (64, 128, 256)]
    return pd.DataFrame(rows)


def test_solve_time_figure_plots_the_times_and_guides_through_the_anchor():
    timing = _timing()
    labels = {"sparsegpt": "SparseGPT", "obc": "OBC", "straight": "straightforward"}
    fig = solve_time_figure(
        timing, labels=labels, styles={"straight": "o--"}, slopes=[("O(d^3)", 3, "straight")], title="t"
    )
    ax = fig.axes[0]
    by_label = {ln.get_label(): ln for ln in ax.get_lines()}
    for m, name in labels.items():
        d = timing[timing.method == m]
        assert np.allclose(by_label[name].get_ydata(), d.seconds)
    assert by_label["straightforward"].get_linestyle() == "--"
    guide = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"][0]
    ref = timing[timing.method == "straight"].iloc[-1]
    assert np.allclose(guide.get_ydata(), ref.seconds * (np.array([64, 128, 256]) / ref.cols) ** 3)
    plt.close(fig)
    with pytest.raises(ValueError, match="labels lacks"):
        solve_time_figure(timing, labels={"obc": "OBC"})


def test_optimum_ratio_boxplots_one_panel_per_input_kind_on_a_log_scale():
    g = np.random.default_rng(1)
    tiny = pd.DataFrame(
        [
            dict(inputs=k, sparsity=s, method=m, ratio=1 + g.random())
            for k in ("gaussian", "correlated")
            for s in (0.5, 0.75)
            for m in ("magnitude", "obc")
            for _ in range(4)
        ]
    )
    fig = optimum_ratio_boxplots(tiny, methods=["magnitude", "obc"], title="t")
    assert len(fig.axes) == 2
    assert {ax.get_title() for ax in fig.axes} == {"gaussian inputs", "correlated inputs"}
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    assert sum(ax.get_legend() is not None for ax in fig.axes) == 1
    plt.close(fig)
    with pytest.raises(ValueError, match="ratio"):
        optimum_ratio_boxplots(tiny.drop(columns="ratio"), methods=["obc"], title="t")


def test_stage_times_figure_stacks_the_stages_in_order():
    timings = pd.DataFrame({"stage": ["augment", "statistics", "solve"], "seconds": [1.5, 4.0, 2.5]})
    fig = stage_times_figure(timings, title="t")
    bars = fig.axes[0].patches
    assert [b.get_x() for b in bars] == [0.0, 1.5, 5.5]
    assert [b.get_width() for b in bars] == [1.5, 4.0, 2.5]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [
        "augment (1.5 s)",
        "statistics (4.0 s)",
        "solve (2.5 s)",
    ]
    plt.close(fig)
    for bad in ([1.0, -1.0, 2.0], [1.0, np.nan, 2.0], [1.0, np.inf, 2.0]):
        with pytest.raises(ValueError, match="timings"):
            stage_times_figure(timings.assign(seconds=bad))


def test_sensitivity_figure_draws_each_solver_sorted_and_the_dense_logit():
    summary = pd.DataFrame(
        {
            "solver": ["obc", "obc", "sparsegpt", "sparsegpt"],
            "global_sparsity": [0.9, 0.5, 0.5, 0.9],
            "agreement": [0.4, 1.0, 0.9, 0.3],
            "logit": [5.0, 9.0, 8.5, 4.0],
        }
    )
    fig = sensitivity_figure(summary, dense_logit=10.0, n_views=16, class_name="tabby")
    left, right = fig.axes
    obc = [ln for ln in left.get_lines() if ln.get_label() == "obc"][0]
    assert list(obc.get_xdata()) == [0.5, 0.9] and list(obc.get_ydata()) == [1.0, 0.4]
    dense = [ln for ln in right.get_lines() if ln.get_label() == "dense"][0]
    assert list(dense.get_ydata()) == [10.0, 10.0]
    assert left.get_ylabel() == "top-1 agreement (16 views)"
    plt.close(fig)
    with pytest.raises(ValueError, match="summary"):
        sensitivity_figure(summary.drop(columns="logit"), dense_logit=1.0, n_views=1, class_name="x")
    with pytest.raises(TypeError, match="dense_logit"):
        sensitivity_figure(summary, dense_logit="x", n_views=16, class_name="tabby")
    with pytest.raises(ValueError, match="n_views"):
        sensitivity_figure(summary, dense_logit=1.0, n_views=-2, class_name="tabby")
    with pytest.raises(ValueError, match="summary"):
        sensitivity_figure(summary.assign(agreement=80.0), dense_logit=1.0, n_views=16, class_name="tabby")
