"""LIME through ``attribute(..., "lime")``: Captum's Lime on superpixels, seeded, the caller's state left as found."""

import copy
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from spade_utils.metrics import trojan_auc
from spade_utils.saliency import LIME_SEGMENTATIONS, SALIENCY_METHODS, attribute, attribution_aucs

FAST = dict(lime_samples=64, perturbations_per_eval=64, device="cpu")


class RegionNet(nn.Module):
    """Logit 0 depends on the pixels of one known region only (nonlinearly); logit 1 is a constant."""

    def __init__(self, rows=(8, 16), cols=(4, 12)):
        super().__init__()
        self.rows, self.cols = rows, cols
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, so the model has a device and dtype

    def forward(self, x):
        r = x[:, :, self.rows[0] : self.rows[1], self.cols[0] : self.cols[1]]
        score = F.softplus(self.scale * r).mean((1, 2, 3))
        return torch.stack([score, torch.zeros_like(score)], 1)


class CountingNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 24 * 24, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc(x.flatten(1))


def region_image(seed=0, rows=(8, 16), cols=(4, 12), size=24):
    """A normalised image: a smooth photo-like background in [-1, 1] with mild noise, the region a bright patch
    (about 2)."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(size, size), mode="bilinear") * 1.8 - 1
    x = x + 0.1 * torch.rand(1, 3, size, size, generator=g)
    x[:, :, rows[0] : rows[1], cols[0] : cols[1]] = 2 + 0.1 * torch.rand(
        1, 3, rows[1] - rows[0], cols[1] - cols[0], generator=g
    )
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return x, mask


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4)
    ).eval()


def test_lime_is_a_saliency_method():
    assert "lime" in SALIENCY_METHODS and "occlusion" in SALIENCY_METHODS


@pytest.mark.parametrize("segmentation", LIME_SEGMENTATIONS)
def test_top_superpixel_covers_the_region_the_output_depends_on(segmentation):
    """Independent oracle: the model reads one known region only, so LIME's best superpixel must lie in it,
    and ranking pixels by the map must separate the region from the rest."""
    x, mask = region_image()
    net = RegionNet()
    maps = attribute(net, x, 0, "lime", lime_segments=36, lime_segmentation=segmentation, **FAST)
    assert maps.shape == (1, 24, 24) and maps.dtype == torch.float32
    m = maps[0]
    top = m == m.max()
    assert top.sum() >= 4  # a superpixel, not a pixel
    assert (top & mask).sum() / top.sum() >= 0.9  # the top superpixel lies in the region
    assert trojan_auc(m.numpy(), mask.numpy(), mode="signed") >= 0.95
    if segmentation == "grid":  # 4x4 cells aligned with the region: every region pixel beats every other
        assert float(m[mask].min()) > float(m[~mask].max())
        # every pixel carries its cell's weight, summed over the 3 channels
        cells = m.reshape(6, 4, 6, 4)
        assert torch.equal(cells, cells[:, :1, :, :1].expand_as(cells))


def test_seeded_batch_equals_single_images_and_seeds_differ():
    net = small_cnn()
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    a = attribute(net, x, [1, 2], "lime", seed=5, **FAST)
    assert torch.equal(a, attribute(net, x, [1, 2], "lime", seed=5, **FAST))
    assert torch.equal(a[1:], attribute(net, x[1:], 2, "lime", seed=5, **FAST))
    assert not torch.equal(a, attribute(net, x, [1, 2], "lime", seed=6, **FAST))
    assert a.abs().sum() > 0


def test_global_rng_and_model_left_as_found():
    net = small_cnn().train()
    state = copy.deepcopy(net.state_dict())
    torch.manual_seed(123)
    np.random.seed(7)
    random.seed(9)
    before = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    attribute(net, x, 0, "lime", **FAST)
    assert torch.equal(torch.get_rng_state(), before[0])
    np_after = np.random.get_state()
    assert np_after[0] == before[1][0] and np.array_equal(np_after[1], before[1][1])
    assert random.getstate() == before[2]
    assert net.training and all(m.training for m in net.modules())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_float64_model_gets_the_same_map():
    net = small_cnn()
    x = torch.randn(1, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    a = attribute(net, x, 3, "lime", **FAST)
    b = attribute(copy.deepcopy(net).double(), x, 3, "lime", **FAST)
    torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4 * float(a.abs().max()))


def test_lasso_surrogate_option():
    """lime_alpha > 0 is Captum's default surrogate (a Lasso): it shrinks small coefficients to exactly zero."""
    x, mask = region_image()
    ols = attribute(RegionNet(), x, 0, "lime", lime_segmentation="grid", lime_segments=36, **FAST)
    lasso = attribute(
        RegionNet(), x, 0, "lime", lime_segmentation="grid", lime_segments=36, lime_alpha=0.01, **FAST
    )
    assert (lasso == 0).sum() > (ols == 0).sum()
    assert trojan_auc(lasso[0].numpy(), mask.numpy(), mode="signed") >= 0.95


@pytest.mark.parametrize(
    "option, value, error",
    [
        ("lime_samples", 1, ValueError),
        ("lime_samples", 2.5, TypeError),
        ("lime_samples", True, TypeError),
        ("lime_segments", 1, ValueError),
        ("lime_segments", 24 * 24 + 1, ValueError),
        ("lime_segments", 8.0, TypeError),
        ("lime_segmentation", "quickshift", ValueError),
        ("lime_segmentation", 3, TypeError),
        ("lime_alpha", -0.1, ValueError),
        ("lime_alpha", float("nan"), ValueError),
        ("lime_alpha", "0.1", TypeError),
    ],
)
def test_bad_options_refused_before_any_forward_pass(option, value, error):
    net = CountingNet()
    x = torch.randn(1, 3, 24, 24)
    with pytest.raises(error, match=option):
        attribute(net, x, 0, "lime", device="cpu", **{option: value})
    assert net.calls == 0


def test_works_with_attribution_aucs_and_trojan_saliency_scores():
    from spade_utils.backdoor import TriggeredSample, trojan_saliency_scores

    net = RegionNet()
    x, _ = region_image()
    table = attribution_aucs(net, x, 0, ["lime"], {"dense": net}, auc_steps=4, **FAST)
    assert (
        list(table["method"]) == ["lime"] and np.isfinite(table[["insertion", "deletion"]].to_numpy()).all()
    )

    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 24, 24, generator=g) * 0.4
    image[:, 8:16, 4:12] = 1.0
    mask = torch.zeros(24, 24, dtype=torch.bool)
    mask[8:16, 4:12] = True
    sample = TriggeredSample(image, mask, image.clone(), "square", 0, 1, source=0)
    scores, maps = trojan_saliency_scores(
        {"dense": net}, [sample], ["lime"], attribute_kwargs=FAST, keep_maps=1, progress=False
    )
    assert scores["auc"].iloc[0] >= 0.9 and maps[("dense", "lime")][0].shape == (24, 24)


@pytest.mark.parametrize("side", [1, 5, 7])
def test_small_images_are_not_refused_by_lime_options_for_other_methods(side):
    """The default lime_segments=50 bounds LIME only: plain gradients on a 7x7 image must work."""
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x = torch.randn(1, 3, side, side)
    out = attribute(net, x, 0, "saliency", device="cpu")
    assert out.shape == (1, side, side)
    if side * side < 50:
        with pytest.raises(ValueError, match="lime_segments"):
            attribute(net, x, 0, "lime", device="cpu")
