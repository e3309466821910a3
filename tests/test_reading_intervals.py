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


def test_interval_helpers_refuse_what_they_would_misread():
    assert not excludes_zero(math.nan, -1.0) and not excludes_zero(1.0, math.nan)  # NaN: not resolved
    with pytest.raises(ValueError, match="above"):
        excludes_zero(5.0, -5.0)
    with pytest.raises(TypeError, match="low"):
        excludes_zero(None, 1.0)
    with pytest.raises(ValueError, match="above"):
        interval_text(0.5, 0.7, 0.3)
    with pytest.raises(ValueError, match="estimate"):
        interval_text(math.nan, 0.1, 0.3)
    with pytest.raises(TypeError, match="digits"):
        interval_text(0.5, 0.1, 0.9, digits=1.9)
    with pytest.raises(TypeError, match="signed"):
        interval_text(0.5, 0.1, 0.9, signed="no")


def test_interval_cells_refuse_duplicates_gaps_and_bad_orders():
    table = summarize_scores(_scores(), cluster="source")
    with pytest.raises(ValueError, match="more than one row"):
        interval_cells(pd.concat([table, table.iloc[:1]]), index="variant", columns="method")
    with pytest.raises(ValueError, match="lacks some"):
        interval_cells(table.iloc[1:], index="variant", columns="method")
    with pytest.raises(TypeError, match="order"):
        interval_cells(table, index="variant", columns="method", order=["SPADE", "SPADE"])
    with pytest.raises(ValueError, match="order: the table has no"):
        interval_cells(table, index="variant", columns="method", order=["SPADE", "zz"])
    with pytest.raises(TypeError, match="table"):
        interval_cells(table.to_dict(), index="variant", columns="method")


@pytest.mark.parametrize(
    "patterns, n, error",
    [
        ((p for p in ["a", "b", "c"]), 2, TypeError),  # a generator would be used up by the check
        (["a", "a", "fc"], 2, ValueError),
        (["a", "b", "c", "fc"], 7.5, TypeError),
        (["a", "b", "fc"], True, TypeError),
    ],
)
def test_block_groups_refuse_inputs_they_would_misread(patterns, n, error):
    with pytest.raises(error):
        block_groups(patterns, n)


def test_round_robin_refuses_sources_without_a_reliable_identity():
    assert round_robin(["1", 1, "1"], 3) == [0, 1, 2]  # a name and an id are different sources
    for bad in ([1.0, 1.0], [math.nan, math.nan], "xyz", [True, 1]):
        with pytest.raises(TypeError, match="sources"):
            round_robin(bad, 2)
