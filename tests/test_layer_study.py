"""The notebook-02 experiment helpers: statistics snapshots match the trace, weights are restored, tables."""

import pandas as pd
import pytest
import torch
from torch import nn

from spade_utils.augment import ImageAugmenter
from spade_utils.layer_study import (
    error_vs_sparsity,
    power_law_exponent,
    random_problem,
    ratio_table,
    record_statistics,
    schedule_sparsity,
    solve_layers,
    solve_time_vs_columns,
    swapped_weights,
    sweep_traces,
    tiny_problem_study,
)
from spade_utils.spade import spade_trace


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


def _image():
    return torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(1))


def test_snapshots_give_the_traces_weights():
    model, aug = _tiny_net(), ImageAugmenter(24)
    stats = record_statistics(
        model, _image(), ["0", "2", "6"], [8, 16], augment=aug, batch_size=8, progress=False
    )
    assert sorted(stats) == [8, 16] and stats[8]["2"].shape == (8, 9, 9)
    for n in (8, 16):
        trace = spade_trace(
            model,
            _image(),
            layers=["0", "2", "6"],
            sparsity=0.5,
            n_augment=n,
            augment=aug,
            batch_size=8,
            seed=0,
            progress=False,
            device="cpu",
        )
        sparse, records = solve_layers(model, stats[n], 0.5)
        for name, w in trace.sparse_weights.items():
            torch.testing.assert_close(sparse[name], w, rtol=1e-5, atol=1e-6)
        pd.testing.assert_series_equal(records["rel_error"], trace.records["rel_error"], rtol=1e-4)


def test_checkpoints_must_follow_batches():
    with pytest.raises(ValueError):
        record_statistics(
            _tiny_net(), _image(), "0", [5, 16], augment=ImageAugmenter(24), batch_size=8, progress=False
        )


def test_swapped_weights_restore_bit_for_bit_even_after_error():
    model = _tiny_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparse = {"6": torch.zeros(5, 8)}
    with pytest.raises(RuntimeError), swapped_weights(model, sparse):
        assert float(model[6].weight.detach().abs().sum()) == 0.0
        raise RuntimeError("boom")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_sweep_traces_and_schedule():
    model, aug = _tiny_net(), ImageAugmenter(24)
    stats = record_statistics(model, _image(), ["0", "6"], [8], augment=aug, batch_size=8, progress=False)
    views = aug(_image(), 4, torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = model(views).argmax(1)
    settings = [
        dict(n_augment=8, sparsity=0.0, label="dense"),
        dict(n_augment=8, sparsity={"0": 0.5, "6": 0.9}),
    ]
    summary, per_layer = sweep_traces(model, stats, settings, views, ref, progress=False)
    assert summary.loc[0, "top1_agrees"] and summary.loc[0, "agreement"] == 1.0
    assert summary.loc[0, "mean_rel_error"] == 0.0
    expected = schedule_sparsity(model, ["0", "6"], {"0": 0.5, "6": 0.9})
    assert summary.loc[1, "global_sparsity"] == pytest.approx(expected, abs=0.02)
    assert len(per_layer) == 4
    with pytest.raises(ValueError):
        sweep_traces(model, stats, settings, views, ref[:2], progress=False)
    with pytest.raises(ValueError):
        sweep_traces(model, stats, [dict(n_augment=64, sparsity=0.5)], views, ref, progress=False)


def test_tiny_study_ratios_and_ratio_table():
    df = tiny_problem_study(3, sparsities=(0.5,), correlated=(True,), progress=False)
    assert len(df) == 9 and (df["ratio"] >= 1 - 1e-9).all()
    W, H = random_problem(6, 12, seed=0, dtype=torch.float32)
    errs = error_vs_sparsity(
        W, H, [0.5, 0.75], ["magnitude", "sparsegpt", "obc"], layer="toy", progress=False
    )
    table = ratio_table(errs)
    assert list(table.columns) == ["layer", "0.5", "0.75"] and table.loc[0, "layer"] == "toy"
    with pytest.raises(ValueError):
        error_vs_sparsity(W, H, [0.5], {"x": {"method": "nope"}}, progress=False)
    # a 1x5 problem at 0.7: SparseGPT floors 3.5 zeros to 3, OBC rounds to 4 -> different problems, no ratio
    W, H = random_problem(1, 5, seed=0, dtype=torch.float32)
    errs = error_vs_sparsity(W, H, [0.7], ["sparsegpt", "obc"], layer="odd", progress=False)
    assert errs.achieved_sparsity.nunique() == 2
    assert ratio_table(errs)["0.7"].isna().all()
    assert ratio_table(errs, equal_sparsity=False)["0.7"].notna().all()


def test_timing_table_and_exponent():
    df = solve_time_vs_columns([8, 16], rows=4, methods={"sparsegpt": None, "obc": 8}, progress=False)
    assert len(df) == 3 and (df["seconds"] > 0).all()
    fake = pd.DataFrame({"cols": [10, 100, 1000], "seconds": [1e-3, 1.0, 1e3]})
    assert power_law_exponent(fake) == pytest.approx(3.0)
