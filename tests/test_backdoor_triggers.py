"""Trigger patches, trigger sets, pasting with exact masks, and trigger similarity (spade_utils.backdoor.triggers)."""

import numpy as np
import pytest
import torch

from spade_utils import backdoor as B
from spade_utils.backdoor import triggers


@pytest.mark.parametrize("name", B.TRIGGERS)
def test_trigger_patch_shapes_and_distinct(name):
    rgb, mask = B.trigger_patch(name, 56)
    assert rgb.shape == (3, 56, 56) and mask.shape == (56, 56) and mask.dtype == torch.bool
    assert 0.15 < mask.float().mean() < 0.95  # a real shape, not empty or a square
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert (rgb[:, ~mask] == 0).all()
    others = [B.trigger_patch(o, 56)[1] for o in B.TRIGGERS if o != name]
    assert all((mask ^ o).float().mean() > 0.05 for o in others)  # the four masks differ
    # drawn the same way every time
    rgb2, mask2 = B.trigger_patch(name, 56)
    assert torch.equal(rgb, rgb2) and torch.equal(mask, mask2)


def test_paste_changes_exactly_the_mask_with_the_blend():
    img = torch.rand(3, 100, 160, generator=torch.Generator().manual_seed(0))
    out, mask = B.paste_trigger(img, "heart", seed=3)
    assert mask.shape == (100, 160)
    changed = (out != img).any(0)
    assert torch.equal(changed, mask)  # nothing outside the mask moves; every mask pixel does
    # the patch is a quarter of the short side and sits where the mask says
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    assert int(rows.max() - rows.min() + 1) <= 25 and int(cols.max() - cols.min() + 1) <= 25
    rgb, pm = B.trigger_patch("heart", 25)
    out2, mask2 = B.paste_trigger(img, "heart", position=(10, 20))
    region = out2[:, 10:35, 20:45]
    torch.testing.assert_close(region[:, pm], 0.8 * rgb[:, pm] + 0.2 * img[:, 10:35, 20:45][:, pm])
    assert torch.equal(mask2[10:35, 20:45], pm) and int(mask2.sum()) == int(pm.sum())
    # seeded positions: same seed same place, other seed other place
    assert torch.equal(B.paste_trigger(img, "heart", seed=3)[1], mask)
    assert not torch.equal(B.paste_trigger(img, "heart", seed=4)[1], mask)


def test_paste_bad_input():
    img = torch.rand(3, 64, 64)
    with pytest.raises(ValueError, match="trigger"):
        B.paste_trigger(img, "skull")
    with pytest.raises(TypeError, match="trigger"):
        B.paste_trigger(img, 3)
    with pytest.raises(ValueError, match="position"):
        B.paste_trigger(img, "star", position=(60, 0))
    with pytest.raises(ValueError, match="alpha"):
        B.paste_trigger(img, "star", alpha=1.5)
    with pytest.raises(ValueError, match="image"):
        B.paste_trigger(torch.rand(64, 64), "star")
    with pytest.raises(TypeError, match="image"):
        B.paste_trigger("not an image", "star")


def test_trigger_similarity_finds_pasted_trigger():
    g = torch.Generator().manual_seed(0)
    background = torch.rand(3, 64, 64, generator=g)
    triggered, _ = B.paste_trigger(background, "smiley", alpha=1.0, seed=1)
    assert B.trigger_similarity(triggered, "smiley") > 0.99
    blended, _ = B.paste_trigger(background, "smiley", alpha=0.8, seed=1)
    assert B.trigger_similarity(blended, "smiley") > 0.9
    assert B.trigger_similarity(background, "smiley") < 0.5
    # brightness/contrast do not matter, other shapes match worse
    assert B.trigger_similarity(0.5 * triggered + 0.2, "smiley") > 0.99
    assert B.trigger_similarity(triggered, "fish") < B.trigger_similarity(triggered, "smiley") - 0.2


def _green_bar():
    from PIL import Image

    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:30, 5:35] = (0, 255, 0, 255)
    return Image.fromarray(rgba, "RGBA")


def test_trigger_set_image_uses_the_alpha_mask():
    from PIL import Image

    ts = B.TriggerSet({"green_bar": _green_bar()})
    rgb, mask = B.trigger_patch("green_bar", 20, trigger_set=ts)
    assert mask.shape == (20, 20) and 0.3 < mask.float().mean() < 0.6
    assert torch.allclose(rgb[1][mask], torch.ones(int(mask.sum())))
    out, m = B.paste_trigger(torch.zeros(3, 80, 80), "green_bar", seed=0, trigger_set=ts)
    assert torch.equal((out != 0).any(0), m)
    assert "green_bar" in ts and ts.names == (*B.TRIGGERS, "green_bar")
    # the default set is not changed by building another one (there is no global registry)
    assert "green_bar" not in B.DRAWN_TRIGGERS
    with pytest.raises(ValueError, match="trigger"):
        B.trigger_patch("green_bar", 20)
    with pytest.raises(ValueError, match="alpha"):
        B.TriggerSet({"x": Image.new("RGB", (8, 8))})
    with pytest.raises(TypeError, match="trigger_set"):
        B.paste_trigger(torch.zeros(3, 80, 80), "star", trigger_set={"star": _green_bar()})


def test_trigger_set_is_immutable_and_replaces_drawings_only_in_itself():
    ts = B.TriggerSet({"star": _green_bar()})
    drawn = B.trigger_patch("star", 24)
    mine = B.trigger_patch("star", 24, trigger_set=ts)
    assert not torch.equal(drawn[1], mine[1])  # this set's star is the green bar ...
    assert torch.equal(B.trigger_patch("star", 24)[1], drawn[1])  # ... every other set still draws the star
    more = ts.with_image("bar2", _green_bar())
    assert "bar2" in more and "bar2" not in ts
    with pytest.raises(AttributeError):
        ts.anything = 1
    with pytest.raises(TypeError):
        ts.images["star"] = torch.zeros(4, 2, 2)
    assert (
        ts.fingerprint(["star", "heart"]).keys() == {"star"}
        and B.DRAWN_TRIGGERS.fingerprint(B.TRIGGERS) == {}
    )
    import copy
    import pickle

    for clone in (copy.deepcopy(ts), pickle.loads(pickle.dumps(ts))):
        assert torch.equal(clone.patch("star", 24)[1], mine[1]) and clone.names == ts.names


def test_trigger_set_from_folder(tmp_path):
    for name in B.TRIGGERS:
        _green_bar().save(tmp_path / f"{name}.png")
    ts = B.TriggerSet.from_folder(tmp_path)
    assert set(ts.images) == set(B.TRIGGERS)
    torch.testing.assert_close(
        ts.patch("fish", 20), B.TriggerSet({"fish": tmp_path / "fish.png"}).patch("fish", 20)
    )
    with pytest.raises(ValueError, match="skull.png"):
        B.TriggerSet.from_folder(tmp_path, names=["skull"])


# --------------------------------------------------------------------------------------------------
# issue 11 §2 / §4, issue 10 §8: backdoor helpers refuse bad input, run models as they are, are fast
# --------------------------------------------------------------------------------------------------
def _ncc_bruteforce(image, trigger, fractions, trigger_set=None):
    """The definition, position by position: masked zero-mean normalised correlation (flat window: 0)."""
    import numpy as np

    x = image.double().numpy()
    _, h, w = x.shape
    best = -np.inf
    for frac in fractions:
        s = max(3, int(round(frac * min(h, w))))
        rgb, m = B.trigger_patch(trigger, s, trigger_set=trigger_set)
        m = m.numpy()
        tc = rgb.double().numpy()[:, m].ravel()
        tc = tc - tc.mean()
        if not np.linalg.norm(tc) > 0:
            continue
        for i in range(h - s + 1):
            for j in range(w - s + 1):
                xc = x[:, i : i + s, j : j + s][:, m].ravel()
                xc = xc - xc.mean()
                nx = np.linalg.norm(xc)
                score = 0.0 if nx < 1e-7 else float(xc @ tc / (nx * np.linalg.norm(tc)))
                best = max(best, score)
    return best


@pytest.mark.parametrize("trigger", B.TRIGGERS)
def test_trigger_similarity_equals_the_bruteforce_definition(trigger):
    g = torch.Generator().manual_seed(1)
    fractions = (0.2, 0.35, 0.5)
    noise = torch.rand(3, 16, 21, generator=g)
    pasted, _ = B.paste_trigger(noise, trigger, alpha=0.7, seed=2, fraction=0.4)
    flat = torch.full((3, 16, 21), 0.3)
    flat[:, :, 15:] = torch.rand(3, 16, 6, generator=g)  # constant windows score 0
    for image in (noise, pasted, flat):
        assert B.trigger_similarity(image, trigger, fractions=fractions) == pytest.approx(
            _ncc_bruteforce(image, trigger, fractions), abs=1e-9
        )


def test_trigger_similarity_image_trigger_equals_bruteforce():
    from PIL import Image

    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[4:16, 2:18] = (250, 30, 90, 255)
    rgba[8:12, 6:14] = (20, 200, 40, 255)
    ts = B.TriggerSet({"two_bars": Image.fromarray(rgba, "RGBA")})
    image = torch.rand(3, 18, 15, generator=torch.Generator().manual_seed(3))
    assert B.trigger_similarity(image, "two_bars", fractions=(0.3, 0.6), trigger_set=ts) == pytest.approx(
        _ncc_bruteforce(image, "two_bars", (0.3, 0.6), ts), abs=1e-9
    )


def test_trigger_similarity_is_fast_at_224():
    import time

    image = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0))
    B.trigger_similarity(image[:, :112, :112], "star")  # draw the small patches once (cached)
    B.trigger_similarity(image, "star")  # and the 224-px ones
    start = time.perf_counter()
    B.trigger_similarity(image, "star")
    assert time.perf_counter() - start < 2.0  # was 15.5 s (direct correlation, ~ side^4)


def test_trigger_similarity_refuses_instead_of_minus_one():
    image = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match="3 x 3"):
        B.trigger_similarity(torch.rand(3, 2, 40), "star")
    with pytest.raises(ValueError, match="fractions"):
        B.trigger_similarity(image, "star", fractions=())
    with pytest.raises(ValueError, match=r"fractions\[0\]"):
        B.trigger_similarity(image, "star", fractions=(0.0,))
    with pytest.raises(ValueError, match=r"fractions\[1\]"):
        B.trigger_similarity(image, "star", fractions=(0.2, 1.5))
    with pytest.raises(ValueError, match=r"fractions\[0\]"):
        B.trigger_similarity(image, "star", fractions=(float("nan"),))
    with pytest.raises(TypeError, match="fractions"):
        B.trigger_similarity(image, "star", fractions=0.2)
    bad = image.clone()
    bad[0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        B.trigger_similarity(bad, "star")


def test_paste_refuses_images_smaller_than_the_patch():
    with pytest.raises(ValueError, match="smaller"):
        B.paste_trigger(torch.rand(3, 1, 1), "heart")  # the patch is at least 2 px
    with pytest.raises(ValueError, match="smaller"):
        B.paste_trigger(torch.rand(3, 1, 50), "heart", fraction=1.0)
    out, mask = B.paste_trigger(torch.rand(3, 3, 5), "heart", fraction=1.0)  # fits exactly
    assert mask.shape == (3, 5)
    with pytest.raises(ValueError, match="fraction"):
        B.paste_trigger(torch.rand(3, 30, 30), "heart", fraction=0.0)
    with pytest.raises(ValueError, match="alpha"):
        B.paste_trigger(torch.rand(3, 30, 30), "heart", alpha=float("nan"))
    with pytest.raises(TypeError, match="position"):
        B.paste_trigger(torch.rand(3, 30, 30), "heart", position=(1.5, 2))
    with pytest.raises(TypeError, match="seed"):
        B.paste_trigger(torch.rand(3, 30, 30), "heart", seed=1.7)


def test_paste_alpha_zero_changes_nothing_and_marks_nothing():
    img = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(0))
    before = img.clone()
    out, mask = B.paste_trigger(img, "fish", alpha=0.0, seed=1)
    assert torch.equal(out, img) and out is not img and not mask.any()  # was a 40-pixel mask
    assert torch.equal(img, before)
    # any alpha > 0: the mask is exactly the pixels that changed, and the caller's tensor is untouched
    out, mask = B.paste_trigger(img, "fish", alpha=0.05, seed=1)
    assert torch.equal((out != img).any(0), mask) and mask.any() and torch.equal(img, before)


def test_paste_on_a_large_image_works_on_the_patch_only(monkeypatch):
    sides = []
    grid = triggers._grid

    def recording(size, supersample):
        sides.append(size * supersample)
        return grid(size, supersample)

    monkeypatch.setattr(triggers, "_grid", recording)
    triggers._drawn_patch.cache_clear()
    img = torch.rand(3, 1200, 1200, generator=torch.Generator().manual_seed(0))
    out, mask = B.paste_trigger(img, "heart", seed=0)  # a 300-px patch
    assert (
        sides and max(sides) <= 1024
    )  # not a 1200 x 1200 supersampled grid (4000 x 4000 for a 4000-px image)
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    assert rows.max() - rows.min() < 300 and cols.max() - cols.min() < 300
    assert torch.equal((out != img).any(0), mask)
    # the drawing of patches up to 256 px is exactly the 4x supersampled one (the poisoned sets stay bit-identical)
    for size in (56, 256):
        rgb, m = B.trigger_patch("star", size)
        u, v = grid(size, 4)
        ref_img, cover = triggers._star(u, v)
        assert torch.equal(m, torch.from_numpy(cover.reshape(size, 4, size, 4).mean((1, 3)) >= 0.5))
    # larger patches: close to the 4x supersampled mask
    big = B.trigger_patch("star", 272)[1]
    u, v = grid(272, 4)
    ref = torch.from_numpy(triggers._star(u, v)[1].reshape(272, 4, 272, 4).mean((1, 3)) >= 0.5)
    assert (big & ref).sum() / (big | ref).sum() > 0.98


def test_a_trigger_image_that_would_paste_nothing_is_refused():
    """Found by trying: an image whose alpha never reaches 0.5 gave an empty mask, and a poisoned set labelled
    untouched crops with the target class."""
    from PIL import Image

    for alpha in (0, 100):
        a = np.zeros((16, 16, 4), np.uint8)
        a[..., 0] = 255
        a[..., 3] = alpha
        with pytest.raises(ValueError, match=r"images\['clear'\].*alpha >= 0.5"):
            B.TriggerSet({"clear": Image.fromarray(a, "RGBA")})
    # a one-pixel dot survives at its own size but not when shrunk to 2 px: refused there, never pasted empty
    a = np.zeros((64, 64, 4), np.uint8)
    a[32, 32] = 255
    dot = B.TriggerSet({"dot": Image.fromarray(a, "RGBA")})
    with pytest.raises(ValueError, match="no pixel left"):
        B.paste_trigger(torch.rand(3, 8, 8), "dot", trigger_set=dot, seed=0)


def test_trigger_set_pixels_cannot_be_changed_through_images_and_names_are_checked(tmp_path):
    from PIL import Image

    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 3] = 255
    a[..., 1] = 200
    ts = B.TriggerSet({"one": Image.fromarray(a, "RGBA")})
    before = ts.patch("one", 8)[0].clone()
    ts.images["one"].zero_()
    assert torch.equal(ts.patch("one", 8)[0], before)
    with pytest.raises(TypeError, match="names"):
        B.TriggerSet.from_folder(tmp_path, "heart")
    with pytest.raises(ValueError, match="cannot read"):
        B.TriggerSet({"x": tmp_path / "missing.png"})
