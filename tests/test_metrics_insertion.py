import numpy as np
import pytest
import torch
from torch import nn

from spade_utils.metrics import (
    curve_auc,
    insertion_deletion_auc,
    insertion_deletion_curves,
    pixel_ranks,
)

H = W = 8
N = H * W


class RegionModel(nn.Module):
    """Two classes; p(class 0) = 0.01 + 0.98 * (share of the region R's pixels that are still 1 in channel 0)."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x):
        share = (x[:, 0] * self.region).flatten(1).sum(1) / self.region.sum()
        p = 0.01 + 0.98 * share
        return torch.stack([p.log(), (1 - p).log()], dim=1)


@pytest.fixture
def setup():
    region = torch.zeros(H, W)
    region[:4, :4] = 1  # 16 of the 64 pixels decide the class
    x = torch.ones(1, 3, H, W)
    return RegionModel(region).eval(), x, region


def expected_curve(n_region_pixels_at):
    counts = np.round(np.arange(100) / 100 * N).astype(int)
    share = np.array([n_region_pixels_at(c) for c in counts]) / 16
    return np.clip((0.01 + 0.98 * share) / 0.99, 0, 1)


def test_perfect_map_exact_curves(setup):
    model, x, region = setup
    perfect = region[None] + 0.001 * torch.rand(1, H, W, generator=torch.Generator().manual_seed(0))
    ins = insertion_deletion_curves(model, x, perfect, 0, mode="insertion", device="cpu")
    dele = insertion_deletion_curves(model, x, perfect, 0, mode="deletion", device="cpu")
    # insertion keeps the top c pixels: all in R until R is used up; deletion removes them
    np.testing.assert_allclose(ins[0], expected_curve(lambda c: min(c, 16)), atol=1e-5)
    np.testing.assert_allclose(dele[0], expected_curve(lambda c: 16 - min(c, 16)), atol=1e-5)
    aucs = insertion_deletion_auc(model, x, perfect, 0, device="cpu")
    np.testing.assert_allclose(aucs["insertion"], curve_auc(ins), atol=1e-12)
    np.testing.assert_allclose(aucs["deletion"], curve_auc(dele), atol=1e-12)


def test_good_map_beats_random_and_inverted(setup):
    model, x, region = setup
    noise = torch.rand(3, H, W, generator=torch.Generator().manual_seed(1))
    maps = torch.stack([region + 0.01 * noise[0], noise[1], -region + 0.01 * noise[2]])
    aucs = insertion_deletion_auc(model, x.expand(3, -1, -1, -1), maps, [0, 0, 0], device="cpu")
    assert aucs["insertion"][0] > aucs["insertion"][1] > aucs["insertion"][2]
    assert aucs["deletion"][0] < aucs["deletion"][1] < aucs["deletion"][2]
    assert aucs["insertion"][0] > 0.8 and aucs["deletion"][0] < 0.2


def test_channel_maps_are_summed_and_batch_matches_items(setup):
    model, x, region = setup
    maps = torch.randn(4, 3, H, W, generator=torch.Generator().manual_seed(2))
    xs = x.expand(4, -1, -1, -1).clone()
    batch = insertion_deletion_auc(model, xs, maps, 0, device="cpu", batch_size=7)
    for i in range(4):
        one = insertion_deletion_auc(model, xs[i : i + 1], maps[i].sum(0, keepdim=True), 0, device="cpu")
        np.testing.assert_allclose(batch["insertion"][i], one["insertion"][0], atol=1e-9)
        np.testing.assert_allclose(batch["deletion"][i], one["deletion"][0], atol=1e-9)


def test_scores_are_clipped_and_first_steps_are_the_empty_and_full_image(setup):
    model, x, region = setup
    inverted = RegionModel(region)  # class 1 grows as R is removed: deletion ratio would exceed 1
    curves = insertion_deletion_curves(inverted, x, region[None], 1, mode="deletion", device="cpu")
    assert curves.max() <= 1 and curves.min() >= 0 and curves[0, 0] == pytest.approx(1.0)
    assert (curves[0, 20:] == 1).all()
    ins = insertion_deletion_curves(model, x, region[None], 0, mode="insertion", device="cpu")
    assert ins[0, 0] == pytest.approx(0.01 / 0.99, rel=1e-4)  # step 0 keeps nothing: every pixel is 0


def test_pixel_ranks_and_auc_helpers():
    s = torch.tensor([[[0.1, 0.9], [0.5, 0.9]]])
    assert pixel_ranks(s).tolist() == [[[3, 0], [2, 1]]]  # ties keep raster order
    assert curve_auc(np.ones(100)) == pytest.approx(1.0)
    assert curve_auc(np.linspace(0, 1, 100)) == pytest.approx(0.5)


def test_model_left_in_training_mode_untouched(setup):
    model, x, region = setup
    model.train()
    insertion_deletion_auc(model, x, region[None], 0, n_steps=5, device="cpu")
    assert model.training


def test_bad_input(setup):
    model, x, region = setup
    with pytest.raises(ValueError, match="saliency"):
        insertion_deletion_auc(model, x, torch.rand(1, 4, 4), 0)
    with pytest.raises(ValueError, match="target"):
        insertion_deletion_auc(model, x, region[None], [0, 1])
    with pytest.raises(ValueError, match="mode"):
        insertion_deletion_curves(model, x, region[None], 0, mode="both")
    with pytest.raises(ValueError, match="n_steps"):
        insertion_deletion_auc(model, x, region[None], 0, n_steps=1)
    with pytest.raises(TypeError, match="model"):
        insertion_deletion_auc("model", x, region[None], 0)


def test_summarize_aucs_paired_difference():
    import pandas as pd

    from spade_utils.metrics import summarize_aucs

    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, 20)
    rows = [{"image": i, "method": "m", "explainer": "dense", "insertion": base[i], "deletion": 0.3} for i in range(20)]
    rows += [{"image": i, "method": "m", "explainer": "SPADE", "insertion": base[i] + 0.1, "deletion": 0.3}
             for i in range(20)]
    out = summarize_aucs(pd.DataFrame(rows)).set_index("explainer")
    assert out.loc["SPADE", "insertion_diff"] == pytest.approx(0.1)
    # the pairing removes the between-image spread: the interval of the difference is (almost) a point
    assert out.loc["SPADE", "insertion_diff_hi"] - out.loc["SPADE", "insertion_diff_lo"] < 1e-9
    assert out.loc["dense", "insertion_lo"] < out.loc["dense", "insertion"] < out.loc["dense", "insertion_hi"]
    assert out.loc["SPADE", "deletion_diff"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="baseline"):
        summarize_aucs(pd.DataFrame(rows), baseline="none")
