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


def expected_curve(n_region_pixels_at, n_steps=100):
    # the grid k / n_steps of the pixels, k = 0 ... n_steps, halves rounded up (independent of pixel_counts)
    counts = [int(np.floor(k * N / n_steps + 0.5)) for k in range(n_steps + 1)]
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
        insertion_deletion_auc(model, x, region[None], 0, n_steps=0)
    with pytest.raises(TypeError, match="n_steps"):
        insertion_deletion_auc(model, x, region[None], 0, n_steps=10.0)
    with pytest.raises(TypeError, match="model"):
        insertion_deletion_auc("model", x, region[None], 0)


def test_summarize_aucs_paired_difference():
    import pandas as pd

    from spade_utils.metrics import summarize_aucs

    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, 20)
    rows = [
        {"image": i, "method": "m", "explainer": "dense", "insertion": base[i], "deletion": 0.3}
        for i in range(20)
    ]
    rows += [
        {"image": i, "method": "m", "explainer": "SPADE", "insertion": base[i] + 0.1, "deletion": 0.3}
        for i in range(20)
    ]
    out = summarize_aucs(pd.DataFrame(rows)).set_index("explainer")
    assert out.loc["SPADE", "insertion_diff"] == pytest.approx(0.1)
    # the pairing removes the between-image spread: the interval of the difference is (almost) a point
    assert out.loc["SPADE", "insertion_diff_hi"] - out.loc["SPADE", "insertion_diff_lo"] < 1e-9
    assert out.loc["dense", "insertion_lo"] < out.loc["dense", "insertion"] < out.loc["dense", "insertion_hi"]
    assert out.loc["SPADE", "deletion_diff"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="baseline"):
        summarize_aucs(pd.DataFrame(rows), baseline="none")


# --------------------------------------------------------------------------------------------------
# the grid and the integration rule agree: exact areas on models whose curves are known
# --------------------------------------------------------------------------------------------------
class ShareModel(nn.Module):
    """Two classes; p(class 0) = 0.5 * g(f), f the share of pixels still nonzero in channel 0.

    The clean image (every pixel 1) has p = 0.5 g(1) = 0.5, so the insertion curve is g(f) and the deletion
    curve g(1 - f), whichever map ranks the pixels."""

    def __init__(self, power: int):
        super().__init__()
        self.power = power

    def forward(self, x):
        f = (x[:, 0] != 0).flatten(1).double().mean(1)
        p = 0.5 * f**self.power
        return torch.stack([p.log(), (1 - p).log()], dim=1)  # float64 logits: exact to ~1e-16


@pytest.mark.parametrize("n_steps", [2, 4, 10, 100])
def test_linear_curve_scores_its_exact_area_at_every_step_count(n_steps):
    # true insertion and deletion AUC are both 1/2; the old 0..(n-1)/n grid gave 0.25/0.75 at 2 steps
    x = torch.ones(2, 3, 20, 20)
    maps = torch.rand(2, 20, 20, generator=torch.Generator().manual_seed(n_steps))
    aucs = insertion_deletion_auc(ShareModel(1), x, maps, 0, n_steps=n_steps, device="cpu")
    np.testing.assert_allclose(aucs["insertion"], 0.5, atol=1e-12)
    np.testing.assert_allclose(aucs["deletion"], 0.5, atol=1e-12)


@pytest.mark.parametrize("n_steps", [3, 7])
def test_linear_curve_exact_also_when_the_grid_falls_between_pixels(n_steps):
    x = torch.ones(1, 3, 20, 20)  # 400 pixels: k/3 and k/7 of them are not whole pixels
    aucs = insertion_deletion_auc(ShareModel(1), x, torch.rand(1, 20, 20), 0, n_steps=n_steps, device="cpu")
    np.testing.assert_allclose([aucs["insertion"][0], aucs["deletion"][0]], 0.5, atol=1e-12)


def test_quadratic_curve_matches_the_trapezoid_error_and_converges():
    # insertion curve f^2, deletion (1 - f)^2: exact area 1/3; the trapezoid on the grid k/n overestimates a
    # parabola by exactly h^2/6 = 1/(6 n^2) (400 pixels: every n below is a divisor, the grid is exact)
    x = torch.ones(1, 3, 20, 20)
    errors = []
    for n in (2, 4, 10, 100):
        aucs = insertion_deletion_auc(ShareModel(2), x, torch.rand(1, 20, 20), 0, n_steps=n, device="cpu")
        for mode in ("insertion", "deletion"):
            assert aucs[mode][0] == pytest.approx(1 / 3 + 1 / (6 * n**2), abs=1e-12)
        errors.append(aucs["insertion"][0] - 1 / 3)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 2e-5


def test_curves_span_the_whole_grid():
    from spade_utils.metrics import curve_fractions, pixel_counts

    x = torch.ones(1, 3, 20, 20)
    ins = insertion_deletion_curves(ShareModel(1), x, torch.rand(1, 20, 20), 0, n_steps=4, device="cpu")
    dele = insertion_deletion_curves(
        ShareModel(1), x, torch.rand(1, 20, 20), 0, n_steps=4, mode="deletion", device="cpu"
    )
    np.testing.assert_allclose(curve_fractions(4), [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(ins[0], curve_fractions(4), atol=1e-12)  # no pixel ... every pixel
    np.testing.assert_allclose(dele[0], 1 - curve_fractions(4), atol=1e-12)
    assert pixel_counts(3, 400).tolist() == [0, 133, 267, 400]
    assert pixel_counts(100, 64)[-1] == 64 and pixel_counts(2, 5).tolist() == [0, 3, 5]  # 2.5 rounds up
    # the area is numpy's trapezoid over the given x positions
    c = np.random.default_rng(0).random((3, 7))
    xs = np.sort(np.r_[0, np.random.default_rng(1).random(5), 1])
    np.testing.assert_allclose(curve_auc(c, xs), [np.sum((r[1:] + r[:-1]) / 2 * np.diff(xs)) for r in c])
    with pytest.raises(ValueError, match="NaN"):
        curve_auc([0.0, np.nan, 1.0])
    with pytest.raises(ValueError, match="fractions"):
        curve_auc([0.0, 1.0], [1.0, 0.0])


# --------------------------------------------------------------------------------------------------
# a score relative to a near-zero baseline, and targets, are refused
# --------------------------------------------------------------------------------------------------
class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1) + 0 * x.flatten(1)[:, :1]


def test_near_zero_clean_probability_is_refused(setup):
    _, x, region = setup
    tiny = FixedLogits([0.0, -69.0])  # p(class 1) ~ 1e-30: it scored insertion 1.0 and deletion 1.0
    with pytest.raises(ValueError, match="min_clean_prob"):
        insertion_deletion_auc(tiny, x, region[None], 1, device="cpu")
    # a class the model does predict is scored, and the threshold is the caller's to set
    out = insertion_deletion_auc(tiny, x, region[None], 1, device="cpu", min_clean_prob=1e-31)
    assert out["insertion"][0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="min_clean_prob"):
        insertion_deletion_auc(tiny, x, region[None], 0, device="cpu", min_clean_prob=0.0)


def test_one_logit_and_non_tensor_outputs_are_refused(setup):
    _, x, region = setup
    with pytest.raises(ValueError, match="logit"):
        insertion_deletion_auc(FixedLogits([3.0]), x, region[None], 0, device="cpu")

    class Pair(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :2], None

    with pytest.raises(TypeError, match="logits tensor"):
        insertion_deletion_auc(Pair(), x, region[None], 0, device="cpu")


@pytest.mark.parametrize(
    "target, error",
    [
        (-1, ValueError),
        ([3.7], TypeError),
        (2, ValueError),
        ([5], ValueError),
        (True, TypeError),
        (torch.tensor([0.0]), TypeError),
        ("0", TypeError),
        (np.array([-1]), ValueError),
    ],
)
def test_targets_are_class_indices_of_the_model(setup, target, error):
    model, x, region = setup  # a 2-class model
    with pytest.raises(error, match="target"):
        insertion_deletion_auc(model, x, region[None], target, device="cpu")


def test_targets_accepted_as_int_array_and_tensor(setup):
    model, x, region = setup
    ref = insertion_deletion_auc(model, x, region[None], 0, n_steps=4, device="cpu")
    for t in (np.int64(0), np.array([0]), torch.tensor(0), torch.tensor([0]), [0]):
        got = insertion_deletion_auc(model, x, region[None], t, n_steps=4, device="cpu")
        np.testing.assert_allclose(got["insertion"], ref["insertion"])


def test_empty_and_nan_images_are_refused(setup):
    model, x, region = setup
    with pytest.raises(ValueError, match="x is empty"):
        insertion_deletion_auc(model, x[:0], region[None][:0], [], device="cpu")
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x"):
        insertion_deletion_auc(model, bad, region[None], 0, device="cpu")


# --------------------------------------------------------------------------------------------------
# the model: its dtype and device, its flags left as found
# --------------------------------------------------------------------------------------------------
class DtypeStrict(nn.Module):
    """RegionModel behind a float64 layer that refuses inputs not in its own dtype."""

    def __init__(self, region):
        super().__init__()
        self.scale = nn.Linear(1, 1, bias=False).double()
        with torch.no_grad():
            self.scale.weight.fill_(1.0)
        self.inner = RegionModel(region)

    def forward(self, x):
        assert x.dtype == self.scale.weight.dtype, f"fed {x.dtype}"
        return self.inner(self.scale(x[..., None])[..., 0])


def test_inputs_are_cast_to_the_models_dtype(setup):
    model, x, region = setup
    strict = DtypeStrict(region)
    got = insertion_deletion_auc(strict, x, region[None], 0, n_steps=8, device=None)
    ref = insertion_deletion_auc(model, x, region[None], 0, n_steps=8, device="cpu")
    np.testing.assert_allclose(got["insertion"], ref["insertion"], atol=1e-6)
    np.testing.assert_allclose(got["deletion"], ref["deletion"], atol=1e-6)
    assert strict.scale.weight.dtype == torch.float64


def test_per_module_training_flags_left_as_found(setup):
    _, x, region = setup
    strict = DtypeStrict(region).eval()
    strict.inner.train()  # mixed flags: model.train(False) at the end would flatten them
    insertion_deletion_auc(strict, x, region[None], 0, n_steps=4, device="cpu")
    assert not strict.training and strict.inner.training and not strict.scale.training


def test_summarize_aucs_with_photo_clusters():
    import pandas as pd

    from spade_utils.metrics import summarize_aucs

    rng = np.random.default_rng(0)
    photos = np.repeat([f"p{k}" for k in range(6)], 5)
    effect = dict(zip([f"p{k}" for k in range(6)], rng.normal(scale=0.1, size=6)))
    base = rng.uniform(0.2, 0.6, 30)
    rows = [
        {
            "image": i,
            "photo": photos[i],
            "method": "m",
            "explainer": "dense",
            "insertion": base[i],
            "deletion": 0.3,
        }
        for i in range(30)
    ]
    rows += [
        {
            "image": i,
            "photo": photos[i],
            "method": "m",
            "explainer": "SPADE",
            "insertion": base[i] + 0.05 + effect[photos[i]] + 0.01 * rng.normal(),
            "deletion": 0.3,
        }
        for i in range(30)
    ]
    table = pd.DataFrame(rows)
    clustered = summarize_aucs(table, cluster="photo").set_index("explainer")
    naive = summarize_aucs(table).set_index("explainer")
    assert clustered.loc["SPADE", "n_clusters"] == 6 and clustered.loc["SPADE", "n_images"] == 30
    assert clustered.loc["SPADE", "insertion_diff"] == pytest.approx(naive.loc["SPADE", "insertion_diff"])
    width = {
        name: t.loc["SPADE", "insertion_diff_hi"] - t.loc["SPADE", "insertion_diff_lo"]
        for name, t in (("clustered", clustered), ("naive", naive))
    }
    assert width["clustered"] > 2 * width["naive"]  # items of one photo are not independent
    # one image per group: no interval (NaN bounds), the mean still reported
    one = summarize_aucs(table[table["image"] == 0]).set_index("explainer")
    assert np.isnan(one.loc["SPADE", "insertion_diff_lo"]) and one.loc["SPADE", "n_images"] == 1
    assert one.loc["SPADE", "insertion_diff"] == pytest.approx(table.insertion[30] - table.insertion[0])
    with pytest.raises(ValueError, match="baseline lacks"):
        summarize_aucs(table[~((table["explainer"] == "dense") & (table["image"] == 3))])
    with pytest.raises(ValueError, match="photo"):
        summarize_aucs(table.drop(columns="photo"), cluster="photo")


@pytest.mark.gpu
def test_a_cuda_model_is_fed_on_its_device_and_left_there(setup):
    model, x, region = setup
    strict = DtypeStrict(region).cuda()
    ref = insertion_deletion_auc(model, x, region[None], 0, n_steps=8, device="cpu")
    got = insertion_deletion_auc(strict, x, region[None], 0, n_steps=8, device=None)  # x stays on the CPU
    np.testing.assert_allclose(got["insertion"], ref["insertion"], atol=1e-6)
    on_cpu = insertion_deletion_auc(strict, x, region[None], 0, n_steps=8, device="cpu")  # runs on a copy
    np.testing.assert_allclose(on_cpu["deletion"], ref["deletion"], atol=1e-6)
    assert strict.scale.weight.is_cuda


def _brute_force_aucs(model, x, saliency, target, n_steps):
    """Insertion/deletion AUC written out pixel by pixel: an independent implementation of the RISE protocol.

    Pixels ranked by the channel-summed saliency (highest first); insertion starts from the zero (mean) image and
    copies the top-c pixels of x, deletion zeroes them; the target probability relative to the intact image,
    clipped to [0, 1], is integrated by the trapezoid rule over c / N, c = round(k N / n_steps), k = 0 ... n_steps.
    """
    _, _, h, w = x.shape
    n = h * w
    order = np.argsort(-saliency.sum(0).flatten().numpy(), kind="stable")
    with torch.no_grad():
        clean = torch.softmax(model(x), 1)[0, target].item()
    out = {}
    for mode in ("insertion", "deletion"):
        xs, ys = [], []
        for k in range(n_steps + 1):
            c = int(np.floor(k * n / n_steps + 0.5))
            keep = np.zeros(n, dtype=bool)
            keep[order[:c]] = True
            if mode == "deletion":
                keep = ~keep
            img = x.clone()
            img[0][:, ~torch.from_numpy(keep).view(h, w)] = 0.0
            with torch.no_grad():
                p = torch.softmax(model(img), 1)[0, target].item()
            xs.append(c / n)
            ys.append(min(max(p / clean, 0.0), 1.0))
        out[mode] = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(n_steps))
    return out


@pytest.mark.parametrize("n_steps", [3, 10, 64])
def test_random_cnn_matches_a_pixel_by_pixel_implementation(n_steps):
    g = torch.Generator().manual_seed(n_steps)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5)
        )
        .double()
        .eval()
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    x = torch.randn(1, 3, H, W, generator=g, dtype=torch.float64)
    sal = torch.randn(3, H, W, generator=g, dtype=torch.float64)
    target = int(model(x).argmax())
    got = insertion_deletion_auc(model, x, sal[None], target, n_steps=n_steps, device="cpu")
    want = _brute_force_aucs(model, x, sal, target, n_steps)
    for mode in ("insertion", "deletion"):
        assert got[mode][0] == pytest.approx(want[mode], abs=1e-9), mode
