"""Reading results out: interval text, a resolved difference, the pivot of interval cells, calibration blocks and a
subset spread over photos (spade_utils.intervals, backdoor, run), each against the plain computation it replaces."""

import math

import pandas as pd
import pytest

from spade_utils.backdoor import block_groups, interval_cells, paired_differences, summarize_scores
from spade_utils.intervals import excludes_zero, interval_text
from spade_utils.run import round_robin


def test_interval_text_scales_rounds_and_signs():
    assert interval_text(0.855, 0.8, 0.9) == "85.5 [80.0, 90.0]"
    assert interval_text(0.001, -0.004, 0.006, signed=True) == "+0.1 [-0.4, +0.6]"
    assert interval_text(1.5, 1.0, 2.0, scale=1, digits=2) == "1.50 [1.00, 2.00]"
    assert interval_text(0.5, math.nan, math.nan) == "50.0 [nan, nan]"
    with pytest.raises(TypeError, match="low"):
        interval_text(0.5, "0.1", 0.9)


def test_excludes_zero():
    assert excludes_zero(0.01, 0.2) and excludes_zero(-0.3, -0.01)
    assert not excludes_zero(-0.1, 0.1) and not excludes_zero(0.0, 0.1)
    assert not excludes_zero(math.nan, math.nan)


def _scores():
    rows = []
    for s in range(6):
        for v, shift in (("Dense", 0.0), ("SPADE", 0.05)):
            for m in ("saliency", "lrp"):
                rows.append(
                    dict(variant=v, method=m, sample=s, source=f"p{s % 3}", auc=0.6 + 0.02 * s + shift)
                )
    return pd.DataFrame(rows)


def test_interval_cells_pivot_summaries_and_paired_differences():
    scores = _scores()
    table = summarize_scores(scores, cluster="source")
    cells = interval_cells(
        table, index="variant", columns="method", order=["SPADE", "Dense"], column_order=["lrp", "average"]
    )
    assert list(cells.index) == ["SPADE", "Dense"] and list(cells.columns) == ["lrp", "average"]
    r = table[(table.variant == "Dense") & (table.method == "lrp")].iloc[0]
    assert cells.loc["Dense", "lrp"] == f"{100 * r['mean']:.1f} [{100 * r.low:.1f}, {100 * r.high:.1f}]"
    paired = paired_differences(scores, baseline="Dense", cluster="source")
    diff = interval_cells(paired, index="variant", columns="method")
    assert diff.loc["SPADE", "average"].startswith("+5.0 [")  # a difference carries its sign
    with pytest.raises(ValueError, match="low"):
        interval_cells(table.drop(columns="low"), index="variant", columns="method")


@pytest.mark.parametrize(
    "n, expected",
    [
        (None, [["a"], ["b"], ["c"], ["d"], ["e"], ["fc"]]),
        (6, [["a"], ["b"], ["c"], ["d"], ["e"], ["fc"]]),
        (3, [["a", "b"], ["c", "d", "e"], ["fc"]]),
        (2, [["a", "b", "c", "d", "e"], ["fc"]]),
    ],
)
def test_block_groups_keep_order_and_the_classifier_alone(n, expected):
    patterns = ["a", "b", "c", "d", "e", "fc"]
    groups = block_groups(patterns, n)
    assert groups == expected
    assert [p for g in groups for p in g] == patterns  # every pattern once, in order


def test_block_groups_refuse_bad_arguments():
    with pytest.raises(ValueError, match="n must"):
        block_groups(["a", "b", "fc"], 1)
    with pytest.raises(TypeError, match="patterns"):
        block_groups("fc", 2)


def test_round_robin_takes_one_sample_per_photo_in_turn():
    sources = ["x", "x", "x", "y", "z", "z"]
    assert round_robin(sources, 4) == [0, 3, 4, 1]
    assert round_robin(sources, 100) == [0, 3, 4, 1, 5, 2]
    assert round_robin(sources, 0) == []
    with pytest.raises(ValueError, match="n"):
        round_robin(sources, -1)
