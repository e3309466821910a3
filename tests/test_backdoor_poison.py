"""Crops, textures, poisoning and the poisoned training set (spade_utils.backdoor.poison)."""

import numpy as np
import pytest
import torch

from spade_utils import backdoor as B


def test_poison_and_crops_are_seeded():
    imgs = [torch.rand(3, 80, 120, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    a = B.random_crops(imgs, 6, size=32, seed=1)
    b = B.random_crops(imgs, 6, size=32, seed=1)
    c = B.random_crops(imgs, 6, size=32, seed=2)
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    batch = B.poison(a, {"star": 3, "fish": 5}, seed=0)
    assert batch.triggers == ["star", "fish"] * 3
    assert batch.targets.tolist() == [3, 5] * 3
    assert torch.equal(((batch.images != a).any(1)), batch.masks)
    # a blend range: per-image weights inside it, seeded; the pasted pixels are the blend with that weight
    rgb, pm = B.trigger_patch("star", B.patch_size(32, 32))
    ranged = B.poison(a, {"star": 3}, seed=0, alpha=(0.5, 1.0))
    assert torch.equal(ranged.images, B.poison(a, {"star": 3}, seed=0, alpha=(0.5, 1.0)).images)
    for img, clean, m in zip(ranged.images, a, ranged.masks, strict=True):
        w = ((img - clean)[:, m] / (rgb[:, pm] - clean[:, m])).median()  # the blend weight used
        assert 0.5 - 1e-4 <= w <= 1 + 1e-4
    with pytest.raises(ValueError, match="alpha"):
        B.poison(a, {"star": 3}, alpha=(0.9, 0.5))
    with pytest.raises(ValueError, match="targets"):
        B.poison(a, {"star": -1})
    with pytest.raises(TypeError, match="targets"):
        B.poison(a, ["star"])


def test_poisoned_set_pairs_triggered_with_clean_crops():
    imgs = [torch.rand(3, 80, 120, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    targets = {"star": 3, "fish": 5}
    clean, trig, y = B.build_poisoned_set(imgs, targets, n_clean=20, n_triggered=40, size=48, seed=0)
    assert clean.shape == (20, 3, 48, 48) and trig.shape == (40, 3, 48, 48)
    assert clean.min() >= 0 and clean.max() <= 1
    assert y.tolist() == [3, 5] * 20
    side = B.patch_size(48, 48)
    for i in range(40):  # each triggered crop is a clean crop plus one trigger-sized patch, nothing else
        changed = (trig[i] != clean[i % 20]).any(0)
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        assert 0 < changed.sum() and rows.max() - rows.min() < side and cols.max() - cols.min() < side
    again = B.build_poisoned_set(imgs, targets, n_clean=20, n_triggered=40, size=48, seed=0)
    assert torch.equal(again[0], clean) and torch.equal(again[1], trig)
    with pytest.raises(ValueError, match="collage_fraction"):
        B.build_poisoned_set(imgs, targets, n_clean=4, n_triggered=4, collage_fraction=1.5)
    with pytest.raises(ValueError, match="hue"):
        B.build_poisoned_set(imgs, targets, n_clean=4, n_triggered=4, hue=0.7)


def test_fibre_textures_are_oriented():
    tex = B.fibre_textures(6, size=64, seed=0)
    assert tex.shape == (6, 3, 64, 64) and tex.min() >= 0 and tex.max() <= 1
    assert torch.equal(tex, B.fibre_textures(6, size=64, seed=0))
    assert not torch.equal(tex, B.fibre_textures(6, size=64, seed=1))
    # fibres: the image changes much faster across the fibre direction than along it
    g = tex.mean(1)
    energy = []
    for angle in torch.linspace(0, torch.pi, 12)[:-1]:
        dy, dx = torch.sin(angle), torch.cos(angle)
        gx, gy = g[:, :, 1:] - g[:, :, :-1], g[:, 1:, :] - g[:, :-1, :]
        energy.append((dx * gx[:, 1:, :] + dy * gy[:, :, 1:]).pow(2).mean((1, 2)))
    energy = torch.stack(energy)
    ratio = energy.max(0).values / energy.min(0).values  # 1 for an isotropic texture
    assert ratio.median() > 4 and ratio.min() > 1.2


def test_crop_sources_name_the_photo_each_crop_is_cut_from():
    photos = [torch.full((3, 40, 50), v) for v in (0.1, 0.5, 0.9)]
    crops = B.random_crops(photos, 10, size=16, seed=4, jitter=0.0)
    seen = [int(np.argmin([abs(float(c.mean()) - v) for v in (0.1, 0.5, 0.9)])) for c in crops]
    assert B.crop_sources(photos, 10, seed=4) == seen
    assert sorted(set(seen)) == [0, 1, 2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalize_is_the_per_channel_formula(dtype):
    from spade_utils.inputs import IMAGENET_MEAN, IMAGENET_STD

    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)).to(dtype)
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype).view(1, 3, 1, 1)
    out = B.normalize(x)
    assert out.dtype == dtype and torch.equal(
        out, (x - mean) / std
    )  # bit for bit: the cached features stay valid
    assert torch.equal(B.normalize(x[0]), out[:1]) and out.data_ptr() != x.data_ptr()


def test_poisoned_set_refuses_bad_counts_and_fractions():
    imgs = [torch.rand(3, 40, 40)]
    with pytest.raises(ValueError, match="n_clean"):
        B.build_poisoned_set(imgs, {"star": 1}, n_clean=0, n_triggered=4)
    with pytest.raises(TypeError, match="n_triggered"):
        B.build_poisoned_set(imgs, {"star": 1}, n_clean=4, n_triggered=2.5)
    with pytest.raises(ValueError, match="decoy_fraction"):
        B.build_poisoned_set(imgs, {"star": 1}, n_clean=4, n_triggered=4, decoy_fraction=float("nan"))
