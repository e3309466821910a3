"""Quality of the augmentation (issue 10 §8): statistics of thousands of draws, each checked against an
independent oracle (torchvision's RandomResizedCrop sampler, scikit-image's HSV conversion, the
uniform laws of the paper's ColorJitter), plus the model's normalisation and dtype (issue 10 §3, §6)."""

import numpy as np
import pytest
import torch
from scipy import stats
from skimage.color import hsv2rgb, rgb2hsv
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from spade_utils.augment import ImageAugmenter, augment_image, crop_box
from spade_utils.inputs import IMAGENET_MEAN, IMAGENET_STD

N_DRAWS = 10_000


def _torchvision_boxes(height, width, scale, ratio, n, seed=0):
    img = torch.empty(1, height, width)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return np.array([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)])


@pytest.mark.parametrize(
    "height,width,scale", [(120, 160, (0.2, 1.0)), (64, 64, (0.2, 1.0)), (90, 60, (0.5, 0.7))]
)
def test_crop_box_follows_random_resized_crop(height, width, scale):
    ratio = (3 / 4, 4 / 3)
    g = torch.Generator().manual_seed(0)
    ours = np.array([crop_box(height, width, scale, ratio, g) for _ in range(N_DRAWS)])
    top, left, h, w = ours.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    frac = h * w / (height * width)
    # rounding w and h to whole pixels moves the area a little; the fallback is the full (ratio-limited) image
    assert frac.min() >= scale[0] - 0.03 and frac.max() <= 1.0
    aspect = w / h
    assert aspect.min() >= ratio[0] - 0.05 and aspect.max() <= ratio[1] + 0.05
    # spread over the whole range: every tenth of [lo, hi] is used
    counts = np.histogram(frac, bins=np.linspace(scale[0], min(1.0, scale[1]), 11))[0]
    assert (counts > 0.005 * N_DRAWS).all(), counts
    # the same law as torchvision's sampler (an independent implementation of the paper's transform)
    ref = _torchvision_boxes(height, width, scale, ratio, N_DRAWS)
    ref_frac = ref[:, 2] * ref[:, 3] / (height * width)
    assert stats.ks_2samp(frac, ref_frac).pvalue > 1e-3
    assert stats.ks_2samp(aspect, ref[:, 3] / ref[:, 2]).pvalue > 1e-3
    # positions uniform over the free range
    free = (top / np.maximum(height - h, 1))[h < height]
    assert (
        stats.ks_2samp(free, (ref[:, 0] / np.maximum(height - ref[:, 2], 1))[ref[:, 2] < height]).pvalue
        > 1e-3
    )


def _two_colour_image():
    """8x8: left half HSV (0, 0.8, 0.6), right half HSV (0.5, 0.8, 0.3) (independent conversion: skimage)."""
    left = hsv2rgb(np.array([[[0.0, 0.8, 0.6]]]))[0, 0]
    right = hsv2rgb(np.array([[[0.5, 0.8, 0.3]]]))[0, 0]
    img = np.zeros((8, 8, 3))
    img[:, :4], img[:, 4:] = left, right
    return torch.from_numpy(img).permute(2, 0, 1).float()


@pytest.fixture(scope="module")
def jitter_draws():
    """Full-image crops (scale 1, ratio 1) of the two-colour image: what changes is flip, brightness, hue."""
    img = _two_colour_image()
    plain = ImageAugmenter(
        8, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, brightness=0, hue=0, normalize=False
    )
    assert torch.allclose(plain(img, 2)[0], img, atol=1e-6)  # the crop/resize is the identity here
    views = ImageAugmenter(8, scale=(1.0, 1.0), ratio=(1.0, 1.0), normalize=False)(
        img, N_DRAWS, torch.Generator().manual_seed(0)
    )
    hsv_first = rgb2hsv(views[:, :, 4, 0].numpy()[:, None, :])[:, 0]  # first column, (n, 3) h s v
    hsv_last = rgb2hsv(views[:, :, 4, -1].numpy()[:, None, :])[:, 0]
    flipped = hsv_first[:, 2] < hsv_last[:, 2]  # the brighter colour (left half) moved to the right
    bright = np.where(flipped[:, None], hsv_last, hsv_first)  # the pixel of the left colour
    brightness = bright[:, 2] / 0.6
    hue = (bright[:, 0] + 0.5) % 1.0 - 0.5  # its hue was 0: the shift in turns, in [-0.5, 0.5)
    return flipped, brightness, hue


def test_flip_rate_is_one_half(jitter_draws):
    flipped, _, _ = jitter_draws
    rate = flipped.mean()
    assert abs(rate - 0.5) < 4 * 0.5 / np.sqrt(N_DRAWS), rate  # 4 standard errors


def test_brightness_factor_uniform_on_half_to_three_halves(jitter_draws):
    _, brightness, _ = jitter_draws
    assert brightness.min() >= 0.5 - 1e-3 and brightness.max() <= 1.5 + 1e-3
    assert brightness.min() < 0.52 and brightness.max() > 1.48
    assert stats.kstest(brightness, stats.uniform(0.5, 1.0).cdf).pvalue > 1e-3


def test_hue_shift_uniform_within_three_tenths(jitter_draws):
    _, _, hue = jitter_draws
    assert np.abs(hue).max() <= 0.3 + 2e-3
    assert hue.min() < -0.28 and hue.max() > 0.28
    assert stats.kstest(hue, stats.uniform(-0.3, 0.6).cdf).pvalue > 1e-3


def _ramp(side=64):
    y, x = torch.meshgrid((torch.arange(side) + 0.5) / side, (torch.arange(side) + 0.5) / side, indexing="ij")
    return torch.stack([x, y, torch.full_like(x, 0.5)])


def _area_fractions(views, size):
    """Crop area fraction of each view of the ramp: its x and y extents, read off the red and green ramps."""
    wx = (views[:, 0, :, -1] - views[:, 0, :, 0]).mean(1) * size / (size - 1)
    hy = (views[:, 1, -1, :] - views[:, 1, 0, :]).mean(1) * size / (size - 1)
    return (wx * hy).numpy()


@pytest.mark.parametrize("scale", [(0.2, 1.0), (0.5, 0.5), (0.9, 1.0)])
def test_views_use_the_crop_scale(scale):
    aug = ImageAugmenter(16, scale=scale, flip=False, brightness=0, hue=0, normalize=False)
    frac = _area_fractions(aug(_ramp(), 1500, torch.Generator().manual_seed(0)), 16)
    tol = 0.04  # the read-off is within ~0.03 of the true crop area
    assert frac.min() >= scale[0] - tol and frac.max() <= scale[1] + tol
    if scale == (0.2, 1.0):
        assert 0.45 < frac.mean() < 0.6  # torchvision's sampler on a square image: mean 0.50
        assert 0.1 < (frac < 0.3).mean() < 0.35 and (frac > 0.7).mean() > 0.08


def test_normalisation_and_dtype_follow_the_model():
    img = _ramp()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)
    raw = ImageAugmenter(16, normalize=False)(img, 6, torch.Generator().manual_seed(1))
    got = ImageAugmenter(16, mean=mean, std=std)(img, 6, torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        got, (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    )
    default = ImageAugmenter(16)(img, 6, torch.Generator().manual_seed(1))  # ImageNet statistics by default
    torch.testing.assert_close(default, TF.normalize(raw, list(IMAGENET_MEAN), list(IMAGENET_STD)))
    half = ImageAugmenter(16, dtype=torch.float16)(img, 6, torch.Generator().manual_seed(1))
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), default, atol=2e-3, rtol=0)
    grey = ImageAugmenter(16, mean=(0.5,), std=(0.25,))(img, 2, torch.Generator().manual_seed(1))
    raw2 = ImageAugmenter(16, normalize=False)(img, 2, torch.Generator().manual_seed(1))
    torch.testing.assert_close(grey, (raw2 - 0.5) / 0.25)
    # the existing call signature keeps working and gives the same views
    assert torch.equal(
        augment_image(img, 3, size=16, seed=4), ImageAugmenter(16)(img, 3, torch.Generator().manual_seed(4))
    )


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(size=0), ValueError, "size"),
        (dict(size=16.0), TypeError, "size"),
        (dict(brightness=float("nan")), ValueError, "brightness"),
        (dict(brightness=1.5), ValueError, "brightness"),
        (dict(hue=0.7), ValueError, "hue"),
        (dict(scale=(0.6, 0.3)), ValueError, "scale"),
        (dict(scale=(0.2, float("inf"))), ValueError, "scale"),
        (dict(ratio=(2.0, 1.0)), ValueError, "ratio"),
        (dict(mean=(0.5, 0.5)), ValueError, "mean"),
        (dict(std=(0.2, 0.0, 0.2)), ValueError, "std"),
        (dict(dtype=torch.int64), TypeError, "dtype"),
    ],
)
def test_bad_settings_are_refused(kwargs, exc, match):
    kwargs = dict(kwargs)
    size = kwargs.pop("size", 16)
    with pytest.raises(exc, match=match):
        ImageAugmenter(size, **kwargs)


def test_bad_images_are_refused_before_any_view():
    img = _ramp()
    img[0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ImageAugmenter(16)(img, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ImageAugmenter(16)(_ramp() * 255, 2)
