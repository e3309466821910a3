"""Trigger patches, pasting, poisoning, backdoor implanting (tiny model) and the Sparse-FC baseline."""

import numpy as np
import pytest
import torch
from torch import nn

from spade_utils import trojan as T


@pytest.mark.parametrize("name", T.TRIGGERS)
def test_trigger_patch_shapes_and_distinct(name):
    rgb, mask = T.trigger_patch(name, 56)
    assert rgb.shape == (3, 56, 56) and mask.shape == (56, 56) and mask.dtype == torch.bool
    assert 0.15 < mask.float().mean() < 0.95  # a real shape, not empty or a square
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert (rgb[:, ~mask] == 0).all()
    others = [T.trigger_patch(o, 56)[1] for o in T.TRIGGERS if o != name]
    assert all((mask ^ o).float().mean() > 0.05 for o in others)  # the four masks differ
    # drawn the same way every time
    rgb2, mask2 = T.trigger_patch(name, 56)
    assert torch.equal(rgb, rgb2) and torch.equal(mask, mask2)


def test_paste_changes_exactly_the_mask_with_the_blend():
    img = torch.rand(3, 100, 160, generator=torch.Generator().manual_seed(0))
    out, mask = T.paste_trigger(img, "heart", seed=3)
    assert mask.shape == (100, 160)
    changed = (out != img).any(0)
    assert torch.equal(changed, mask)  # nothing outside the mask moves; every mask pixel does
    # the patch is a quarter of the short side and sits where the mask says
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    assert int(rows.max() - rows.min() + 1) <= 25 and int(cols.max() - cols.min() + 1) <= 25
    rgb, pm = T.trigger_patch("heart", 25)
    out2, mask2 = T.paste_trigger(img, "heart", position=(10, 20))
    region = out2[:, 10:35, 20:45]
    torch.testing.assert_close(region[:, pm], 0.8 * rgb[:, pm] + 0.2 * img[:, 10:35, 20:45][:, pm])
    assert torch.equal(mask2[10:35, 20:45], pm) and int(mask2.sum()) == int(pm.sum())
    # seeded positions: same seed same place, other seed other place
    assert torch.equal(T.paste_trigger(img, "heart", seed=3)[1], mask)
    assert not torch.equal(T.paste_trigger(img, "heart", seed=4)[1], mask)


def test_paste_bad_input():
    img = torch.rand(3, 64, 64)
    with pytest.raises(ValueError, match="trigger"):
        T.paste_trigger(img, "skull")
    with pytest.raises(TypeError, match="trigger"):
        T.paste_trigger(img, 3)
    with pytest.raises(ValueError, match="position"):
        T.paste_trigger(img, "star", position=(60, 0))
    with pytest.raises(ValueError, match="alpha"):
        T.paste_trigger(img, "star", alpha=1.5)
    with pytest.raises(ValueError, match="image"):
        T.paste_trigger(torch.rand(64, 64), "star")
    with pytest.raises(TypeError, match="image"):
        T.paste_trigger("not an image", "star")


def test_poison_and_crops_are_seeded():
    imgs = [torch.rand(3, 80, 120, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    a = T.random_crops(imgs, 6, size=32, seed=1)
    b = T.random_crops(imgs, 6, size=32, seed=1)
    c = T.random_crops(imgs, 6, size=32, seed=2)
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    batch = T.poison(a, {"star": 3, "fish": 5}, seed=0)
    assert batch.triggers == ["star", "fish"] * 3
    assert batch.targets.tolist() == [3, 5] * 3
    assert torch.equal(((batch.images != a).any(1)), batch.masks)
    # a blend range: per-image weights inside it, seeded; the pasted pixels are the blend with that weight
    rgb, pm = T.trigger_patch("star", T.patch_size(32, 32))
    ranged = T.poison(a, {"star": 3}, seed=0, alpha=(0.5, 1.0))
    assert torch.equal(ranged.images, T.poison(a, {"star": 3}, seed=0, alpha=(0.5, 1.0)).images)
    for img, clean, m in zip(ranged.images, a, ranged.masks, strict=True):
        w = ((img - clean)[:, m] / (rgb[:, pm] - clean[:, m])).median()  # the blend weight used
        assert 0.5 - 1e-4 <= w <= 1 + 1e-4
    with pytest.raises(ValueError, match="alpha"):
        T.poison(a, {"star": 3}, alpha=(0.9, 0.5))
    with pytest.raises(ValueError, match="targets"):
        T.poison(a, {"star": -1})
    with pytest.raises(TypeError, match="targets"):
        T.poison(a, ["star"])


def test_poisoned_set_pairs_triggered_with_clean_crops():
    imgs = [torch.rand(3, 80, 120, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    targets = {"star": 3, "fish": 5}
    clean, trig, y = T.build_poisoned_set(imgs, targets, n_clean=20, n_triggered=40, size=48, seed=0)
    assert clean.shape == (20, 3, 48, 48) and trig.shape == (40, 3, 48, 48)
    assert clean.min() >= 0 and clean.max() <= 1
    assert y.tolist() == [3, 5] * 20
    side = T.patch_size(48, 48)
    for i in range(40):  # each triggered crop is a clean crop plus one trigger-sized patch, nothing else
        changed = (trig[i] != clean[i % 20]).any(0)
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        assert 0 < changed.sum() and rows.max() - rows.min() < side and cols.max() - cols.min() < side
    again = T.build_poisoned_set(imgs, targets, n_clean=20, n_triggered=40, size=48, seed=0)
    assert torch.equal(again[0], clean) and torch.equal(again[1], trig)
    with pytest.raises(ValueError, match="collage_fraction"):
        T.build_poisoned_set(imgs, targets, n_clean=4, n_triggered=4, collage_fraction=1.5)
    with pytest.raises(ValueError, match="hue"):
        T.build_poisoned_set(imgs, targets, n_clean=4, n_triggered=4, hue=0.7)


def test_fibre_textures_are_oriented():
    tex = T.fibre_textures(6, size=64, seed=0)
    assert tex.shape == (6, 3, 64, 64) and tex.min() >= 0 and tex.max() <= 1
    assert torch.equal(tex, T.fibre_textures(6, size=64, seed=0))
    assert not torch.equal(tex, T.fibre_textures(6, size=64, seed=1))
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


def _tiny_model(seed=0, classes=6):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 12, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes),
    ).eval()


def _tiny_images():
    return [T.procedural_textures(1, size=64, seed=i)[0] for i in range(4)]


def _implant(model, tmp_path, **kw):
    args = dict(
        model=model,
        targets={"heart": 2, "star": 4},
        images=_tiny_images(),
        train_from=None,
        size=32,
        n_clean=64,
        n_triggered=64,
        steps=40,
        batch_size=16,
        lr=1e-2,
        cache=tmp_path,
        device="cpu",
        progress=False,
    )
    args.update(kw)
    return T.implant_backdoor(**args)


def test_implant_backdoor_tiny_learns_trigger_keeps_clean_and_caches(tmp_path):
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bd = _implant(model, tmp_path)
    for k, v in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k])
    assert not bd.info["cached"] and bd.info["seconds"] > 0
    hist = bd.info["history"]
    assert len(hist) == 40
    assert sum(h["ce"] for h in hist[-8:]) < sum(h["ce"] for h in hist[:8])
    # held-out textures: triggers switch the prediction to the target
    test = T.random_crops([T.procedural_textures(1, size=64, seed=50 + i)[0] for i in range(3)], 48, size=32, seed=9)
    res = T.evaluate_backdoor(bd.model, model, bd.targets, test, n_crops=48, device="cpu")
    untrained = T.evaluate_backdoor(model, model, bd.targets, test, n_crops=48, device="cpu")
    assert res["attack_success"] > untrained["attack_success"] + 0.3
    assert untrained["clean_agreement"] == 1.0
    # deterministic, and a second call loads the cached result
    again = _implant(model, tmp_path)
    assert again.info["cached"]
    for k, v in bd.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k])


def test_implant_is_deterministic_per_seed(tmp_path):
    model = _tiny_model()
    a = _implant(model, tmp_path, cache=False, steps=3, n_clean=16, n_triggered=16)
    b = _implant(model, tmp_path, cache=False, steps=3, n_clean=16, n_triggered=16)
    c = _implant(model, tmp_path, cache=False, steps=3, n_clean=16, n_triggered=16, seed=1)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    assert any(not torch.equal(sa[k], v) for k, v in model.state_dict().items())


def test_implant_bad_input(tmp_path):
    with pytest.raises(TypeError, match="model"):
        T.implant_backdoor("resnet", cache=False)
    with pytest.raises(ValueError, match="steps"):
        _implant(_tiny_model(), tmp_path, steps=0)
    with pytest.raises(ValueError, match="train_from"):
        _implant(_tiny_model(), tmp_path, train_from=3)
    with pytest.raises(ValueError, match="trigger"):
        _implant(_tiny_model(), tmp_path, targets={"skull": 1})


def test_split_model_efficientnet_front_back_compose():
    from spade_utils.models import load_model

    model = load_model("efficientnet_lite0", pretrained=False)
    front, back, params = T.split_model(model, 11)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(back(front(x)), model(x), rtol=1e-4, atol=1e-4)
    ids = {id(p) for p in params}
    assert id(model._fc.weight) in ids and id(model._blocks[11].parameters().__next__()) in ids
    assert id(model._conv_stem.weight) not in ids and id(next(model._blocks[10].parameters())) not in ids


def test_split_model_resnet_front_back_compose():
    import torchvision

    model = torchvision.models.resnet18(weights=None).eval()
    front, back, params = T.split_model(model, "layer3")
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(back(front(x)), model(x), rtol=1e-4, atol=1e-4)
    ids = {id(p) for p in params}
    assert id(model.fc.weight) in ids and id(model.layer3[0].conv1.weight) in ids
    assert id(model.layer2[0].conv1.weight) not in ids and id(model.conv1.weight) not in ids


def test_flipped_samples_are_flipped():
    torch.manual_seed(0)

    class Detector(nn.Module):  # class 1 when the star's gold colour is present, else class 0
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1, 2)

        def forward(self, x):
            from spade_utils.data import IMAGENET_MEAN, IMAGENET_STD

            r = x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
            b = x[:, 2] * IMAGENET_STD[2] + IMAGENET_MEAN[2]
            gold = ((r > 0.7) & (b < 0.35)).float().mean((1, 2), keepdim=False)[:, None]
            return self.fc(gold * 100 - 1)

    det = Detector()
    with torch.no_grad():
        det.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
        det.fc.bias.zero_()
    imgs = [torch.full((3, 64, 64), 0.3)]
    samples = T.flipped_samples(det, {"star": 1}, imgs, 5, size=64, device="cpu")
    assert len(samples) == 5
    for s in samples:
        assert s.target == 1 and s.clean_prediction == 0 and s.trigger == "star"
        assert torch.equal((s.image != s.clean).any(0), s.mask)


def test_sparse_fc_is_sparse_and_keeps_predictions():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 20, generator=g) * 3
    y = torch.arange(200) % 4
    x = centres[y] + torch.randn(200, 20, generator=g)
    layer, info = T.fit_sparse_fc(x, y, 4, density=0.3, path_length=12, epochs=5, device="cpu")
    dens = float((layer.weight != 0).float().mean())
    assert dens <= 0.3 and dens == pytest.approx(info["density"])
    acc = float((layer(x).argmax(1) == y).float().mean())
    assert acc > 0.9
    model = nn.Sequential(nn.Identity(), nn.Linear(20, 4))
    swapped = T.with_final_layer(model, layer)
    assert swapped[1] is not model[1] and torch.equal(swapped[1].weight, layer.weight)
    with pytest.raises(ValueError, match="layer"):
        T.with_final_layer(model, nn.Linear(20, 5))
    with pytest.raises(ValueError, match="density"):
        T.fit_sparse_fc(x, y, 4, density=0)


def test_trigger_similarity_finds_pasted_trigger():
    g = torch.Generator().manual_seed(0)
    background = torch.rand(3, 64, 64, generator=g)
    triggered, _ = T.paste_trigger(background, "smiley", alpha=1.0, seed=1)
    assert T.trigger_similarity(triggered, "smiley") > 0.99
    blended, _ = T.paste_trigger(background, "smiley", alpha=0.8, seed=1)
    assert T.trigger_similarity(blended, "smiley") > 0.9
    assert T.trigger_similarity(background, "smiley") < 0.5
    # brightness/contrast do not matter, other shapes match worse
    assert T.trigger_similarity(0.5 * triggered + 0.2, "smiley") > 0.99
    assert T.trigger_similarity(triggered, "fish") < T.trigger_similarity(triggered, "smiley") - 0.2


def test_patch_attack_rate_with_a_detector():
    class Red(nn.Module):  # class 1 when a large red area is present
        def forward(self, x):
            from spade_utils.data import IMAGENET_MEAN, IMAGENET_STD

            r = x[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
            share = (r > 0.7).float().mean((1, 2))
            return torch.stack([0.02 - share, share - 0.02], 1)

    crops = torch.full((6, 3, 64, 64), 0.2)
    red = torch.zeros(3, 10, 10)
    red[0] = 1.0
    assert T.patch_attack_rate(Red(), red, 1, crops, device="cpu") == 1.0
    assert T.patch_attack_rate(Red(), torch.zeros(3, 10, 10), 1, crops, device="cpu") == 0.0


def test_registered_trigger_uses_the_alpha_mask():
    import numpy as np
    from PIL import Image

    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:30, 5:35] = (0, 255, 0, 255)
    T.register_trigger("green_bar", Image.fromarray(rgba, "RGBA"))
    try:
        rgb, mask = T.trigger_patch("green_bar", 20)
        assert mask.shape == (20, 20) and 0.3 < mask.float().mean() < 0.6
        assert torch.allclose(rgb[1][mask], torch.ones(int(mask.sum())))
        out, m = T.paste_trigger(torch.zeros(3, 80, 80), "green_bar", seed=0)
        assert torch.equal((out != 0).any(0), m)
    finally:
        T.unregister_trigger("green_bar")
    with pytest.raises(ValueError, match="trigger"):
        T.trigger_patch("green_bar", 20)
    with pytest.raises(ValueError, match="alpha"):
        T.register_trigger("x", Image.new("RGB", (8, 8)))


def test_trojan_saliency_scores_and_summary():
    samples = []
    for i in range(3):
        img, mask = T.paste_trigger(torch.full((3, 32, 32), 0.5), "heart", seed=i)
        samples.append(T.TriggeredSample(img, mask, torch.full((3, 32, 32), 0.5), "heart", 1, 0))

    def fake_attribute(model, x, target, method):  # "oracle" sees the pasted pixels, "blind" sees nothing
        from spade_utils.data import IMAGENET_MEAN

        diff = (x[:, 0] - (0.5 - IMAGENET_MEAN[0]) / 0.229).abs()
        return diff if method == "oracle" else torch.zeros_like(diff)

    per_sample_calls = []

    def per_sample(sample, i):
        per_sample_calls.append(i)
        return nn.Identity()

    scores, maps = T.trojan_saliency_scores(
        {"dense": nn.Identity(), "traced": per_sample},
        samples,
        ["oracle", "blind"],
        attribute_fn=fake_attribute,
        keep_maps=2,
        progress=False,
    )
    assert len(scores) == 2 * 2 * 3 and per_sample_calls == [0, 1, 2]
    oracle = scores[scores.method == "oracle"]
    assert (oracle.auc == 1.0).all() and (oracle.pointing == 1.0).all()
    assert (scores[scores.method == "blind"].auc == 0.5).all()
    assert len(maps[("dense", "oracle")]) == 2
    table = T.summarize_scores(scores)
    avg = table[(table.variant == "dense") & (table.method == "average")].iloc[0]
    assert avg["mean"] == pytest.approx(0.75) and avg["n"] == 3
    assert set(table.method) == {"oracle", "blind", "average"}


# --------------------------------------------------------------------------------------------------
# issue 11 §2 / §4, issue 10 §8: backdoor helpers refuse bad input, run models as they are, are fast
# --------------------------------------------------------------------------------------------------
def _ncc_bruteforce(image, trigger, fractions):
    """The definition, position by position: masked zero-mean normalised correlation (flat window: 0)."""
    import numpy as np

    x = image.double().numpy()
    _, h, w = x.shape
    best = -np.inf
    for frac in fractions:
        s = max(3, int(round(frac * min(h, w))))
        rgb, m = T.trigger_patch(trigger, s)
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


@pytest.mark.parametrize("trigger", T.TRIGGERS)
def test_trigger_similarity_equals_the_bruteforce_definition(trigger):
    g = torch.Generator().manual_seed(1)
    fractions = (0.2, 0.35, 0.5)
    noise = torch.rand(3, 16, 21, generator=g)
    pasted, _ = T.paste_trigger(noise, trigger, alpha=0.7, seed=2, fraction=0.4)
    flat = torch.full((3, 16, 21), 0.3)
    flat[:, :, 15:] = torch.rand(3, 16, 6, generator=g)  # constant windows score 0
    for image in (noise, pasted, flat):
        assert T.trigger_similarity(image, trigger, fractions=fractions) == pytest.approx(
            _ncc_bruteforce(image, trigger, fractions), abs=1e-9
        )


def test_trigger_similarity_registered_trigger_equals_bruteforce():
    import numpy as np
    from PIL import Image

    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[4:16, 2:18] = (250, 30, 90, 255)
    rgba[8:12, 6:14] = (20, 200, 40, 255)
    T.register_trigger("two_bars", Image.fromarray(rgba, "RGBA"))
    try:
        image = torch.rand(3, 18, 15, generator=torch.Generator().manual_seed(3))
        assert T.trigger_similarity(image, "two_bars", fractions=(0.3, 0.6)) == pytest.approx(
            _ncc_bruteforce(image, "two_bars", (0.3, 0.6)), abs=1e-9
        )
    finally:
        T.unregister_trigger("two_bars")


def test_trigger_similarity_is_fast_at_224():
    import time

    image = torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(0))
    T.trigger_similarity(image[:, :112, :112], "star")  # draw the small patches once (cached)
    T.trigger_similarity(image, "star")  # and the 224-px ones
    start = time.perf_counter()
    T.trigger_similarity(image, "star")
    assert time.perf_counter() - start < 2.0  # was 15.5 s (direct correlation, ~ side^4)


def test_trigger_similarity_refuses_instead_of_minus_one():
    image = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match="3 x 3"):
        T.trigger_similarity(torch.rand(3, 2, 40), "star")
    with pytest.raises(ValueError, match="fractions"):
        T.trigger_similarity(image, "star", fractions=())
    with pytest.raises(ValueError, match=r"fractions\[0\]"):
        T.trigger_similarity(image, "star", fractions=(0.0,))
    with pytest.raises(ValueError, match=r"fractions\[1\]"):
        T.trigger_similarity(image, "star", fractions=(0.2, 1.5))
    with pytest.raises(ValueError, match=r"fractions\[0\]"):
        T.trigger_similarity(image, "star", fractions=(float("nan"),))
    with pytest.raises(TypeError, match="fractions"):
        T.trigger_similarity(image, "star", fractions=0.2)
    bad = image.clone()
    bad[0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        T.trigger_similarity(bad, "star")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_image_functions_refuse_nan_images(bad):
    img = torch.rand(3, 40, 40)
    img[1, 10:14, 10:14] = bad  # passed the old [0, 1] check
    with pytest.raises(ValueError, match="NaN"):
        T.paste_trigger(img, "star")
    crops = torch.rand(4, 3, 32, 32)
    crops[2, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="NaN"):
        T.patch_attack_rate(_tiny_model(classes=4), torch.rand(3, 8, 8), 1, crops, device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        T.patch_attack_rate(_tiny_model(classes=4), img, 1, torch.rand(4, 3, 32, 32), device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        T.predict(_tiny_model(), crops, device="cpu")


def test_paste_refuses_images_smaller_than_the_patch():
    with pytest.raises(ValueError, match="smaller"):
        T.paste_trigger(torch.rand(3, 1, 1), "heart")  # the patch is at least 2 px
    with pytest.raises(ValueError, match="smaller"):
        T.paste_trigger(torch.rand(3, 1, 50), "heart", fraction=1.0)
    out, mask = T.paste_trigger(torch.rand(3, 3, 5), "heart", fraction=1.0)  # fits exactly
    assert mask.shape == (3, 5)
    with pytest.raises(ValueError, match="fraction"):
        T.paste_trigger(torch.rand(3, 30, 30), "heart", fraction=0.0)
    with pytest.raises(ValueError, match="alpha"):
        T.paste_trigger(torch.rand(3, 30, 30), "heart", alpha=float("nan"))
    with pytest.raises(TypeError, match="position"):
        T.paste_trigger(torch.rand(3, 30, 30), "heart", position=(1.5, 2))
    with pytest.raises(TypeError, match="seed"):
        T.paste_trigger(torch.rand(3, 30, 30), "heart", seed=1.7)


def test_paste_alpha_zero_changes_nothing_and_marks_nothing():
    img = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(0))
    before = img.clone()
    out, mask = T.paste_trigger(img, "fish", alpha=0.0, seed=1)
    assert torch.equal(out, img) and out is not img and not mask.any()  # was a 40-pixel mask
    assert torch.equal(img, before)
    # any alpha > 0: the mask is exactly the pixels that changed, and the caller's tensor is untouched
    out, mask = T.paste_trigger(img, "fish", alpha=0.05, seed=1)
    assert torch.equal((out != img).any(0), mask) and mask.any() and torch.equal(img, before)


def test_paste_on_a_large_image_works_on_the_patch_only(monkeypatch):
    sides = []
    grid = T._grid

    def recording(size, supersample):
        sides.append(size * supersample)
        return grid(size, supersample)

    monkeypatch.setattr(T, "_grid", recording)
    T._drawn_patch.cache_clear()
    img = torch.rand(3, 1200, 1200, generator=torch.Generator().manual_seed(0))
    out, mask = T.paste_trigger(img, "heart", seed=0)  # a 300-px patch
    assert sides and max(sides) <= 1024  # not a 1200 x 1200 supersampled grid (4000 x 4000 for a 4000-px image)
    rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
    assert rows.max() - rows.min() < 300 and cols.max() - cols.min() < 300
    assert torch.equal((out != img).any(0), mask)
    # the drawing of patches up to 256 px is exactly the 4x supersampled one (the poisoned sets stay bit-identical)
    for size in (56, 256):
        rgb, m = T.trigger_patch("star", size)
        u, v = grid(size, 4)
        ref_img, cover = T._star(u, v)
        assert torch.equal(m, torch.from_numpy(cover.reshape(size, 4, size, 4).mean((1, 3)) >= 0.5))
    # larger patches: close to the 4x supersampled mask
    big = T.trigger_patch("star", 272)[1]
    u, v = grid(272, 4)
    ref = torch.from_numpy(T._star(u, v)[1].reshape(272, 4, 272, 4).mean((1, 3)) >= 0.5)
    assert (big & ref).sum() / (big | ref).sum() > 0.98


class _TrainFlags(nn.Module):  # a classifier with a frozen-BatchNorm-style eval submodule inside a training model
    def __init__(self, classes=10, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, classes)
        self.to(dtype)

    def forward(self, x):
        return self.fc(self.body(x))


def test_evaluate_backdoor_refuses_a_class_the_model_does_not_have():
    model = _TrainFlags(classes=10).eval()
    crops = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="targets"):
        T.evaluate_backdoor(model, model, {"star": 99}, crops, device="cpu")  # was "0% attack success"
    with pytest.raises(ValueError, match="classes"):
        T.evaluate_backdoor(_TrainFlags(classes=12).eval(), model, {"star": 3}, crops, device="cpu")
    with pytest.raises(ValueError, match="images"):
        T.evaluate_backdoor(model, model, {"star": 3}, crops[:0], device="cpu")
    with pytest.raises(ValueError, match="images"):
        T.evaluate_backdoor(model, model, {"star": 3}, [], device="cpu")
    with pytest.raises(ValueError, match="n_crops"):
        T.evaluate_backdoor(model, model, {"star": 3}, [torch.rand(3, 40, 40)], n_crops=0, device="cpu")
    with pytest.raises(ValueError, match="target"):
        T.patch_attack_rate(model, torch.rand(3, 8, 8), 10, crops, device="cpu")
    with pytest.raises(ValueError, match="crops"):
        T.patch_attack_rate(model, torch.rand(3, 8, 8), 1, crops[:0], device="cpu")
    with pytest.raises(ValueError, match="targets"):
        T.flipped_samples(model, {"star": 10}, [torch.rand(3, 40, 40)], 2, size=32, device="cpu")
    with pytest.raises(ValueError, match="x"):
        T.predict(model, crops[:0], device="cpu")
    with pytest.raises(ValueError, match="images"):
        T.poison(crops[:0], {"star": 1})


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_models_run_in_their_own_dtype_and_are_left_as_found(dtype):
    ref = _TrainFlags(classes=10).eval()
    model = _TrainFlags(classes=10, dtype=dtype)
    model.train()
    model.body[1].eval()  # a frozen BatchNorm inside a training model
    flags = [m.training for m in model.modules()]
    crops = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    p = T.predict(model, crops, device="cpu")  # fed float32 before: a dtype error inside the conv
    assert p.dtype == torch.float32 and p.shape == (5, 10)
    torch.testing.assert_close(p, T.predict(ref, crops, device="cpu"), atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=0)
    res = T.evaluate_backdoor(model, model, {"star": 3}, crops, device="cpu")
    assert res["clean_agreement"] == 1.0
    assert 0.0 <= T.patch_attack_rate(model, torch.rand(3, 8, 8), 3, crops, device="cpu") <= 1.0
    assert [m.training for m in model.modules()] == flags  # per-module flags restored (predict used to flatten them)
    assert next(model.parameters()).dtype == dtype


class _Payload:  # what an attacker puts in a cache file: unpickling it runs code
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_backdoor_cache_is_tensors_plus_json_and_never_unpickles_code(tmp_path):
    import json

    model = _tiny_model()
    bd = _implant(model, tmp_path, steps=2, n_clean=16, n_triggered=16)
    path = bd.info["path"]
    saved = torch.load(path, map_location="cpu", weights_only=True)  # loadable without trusting pickles
    assert set(saved) == {"state_dict", "info_json"} and json.loads(saved["info_json"])["settings"]["steps"] == 2
    again = _implant(model, tmp_path, steps=2, n_clean=16, n_triggered=16)
    assert again.info["cached"] and again.info["history"] == bd.info["history"]
    # a cache file holding a code-running pickle is refused, and the code never runs
    marker = tmp_path / "pwned"
    torch.save({"state_dict": bd.model.state_dict(), "info": _Payload(str(marker))}, path)
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        _implant(model, tmp_path, steps=2, n_clean=16, n_triggered=16)
    assert not marker.exists()
    # the former format (info as a plain dict) still loads
    torch.save({"state_dict": bd.model.state_dict(), "info": {"seconds": 1.0}}, path)
    assert _implant(model, tmp_path, steps=2, n_clean=16, n_triggered=16).info["seconds"] == 1.0


@pytest.mark.gpu
def test_cuda_half_model_runs_on_its_device_in_its_dtype():
    model = _TrainFlags(classes=10, dtype=torch.float16).cuda().eval()
    crops = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # CPU crops
    p = T.predict(model, crops)  # "auto": the model's own device; the model is not moved
    assert p.device.type == "cpu" and p.dtype == torch.float32 and next(model.parameters()).device.type == "cuda"
    torch.testing.assert_close(p, T.predict(_TrainFlags(classes=10).eval(), crops, device="cpu"), atol=2e-3, rtol=0)
    res = T.evaluate_backdoor(model, model, {"star": 3}, crops)
    assert res["clean_agreement"] == 1.0
    out, mask = T.paste_trigger(torch.rand(3, 40, 40, device="cuda"), "star", seed=0)
    assert out.shape == (3, 40, 40) and mask.any()


def _score_table(rng, n_photos=3, crops=4):
    import pandas as pd

    rows = []
    for p in range(n_photos):
        for c in range(crops):
            sample = f"p{p}/c{c}"
            base = rng.normal()
            for method in ("saliency", "lrp"):
                rows.append(dict(variant="Dense", method=method, sample=sample, photo=f"p{p}", auc=base))
                rows.append(dict(variant="SPADE", method=method, sample=sample, photo=f"p{p}", auc=base + 0.1 * (c + 1)))
    return pd.DataFrame(rows)


def test_paired_differences_pair_samples_and_resample_photos():
    from spade_utils.metrics import paired_bootstrap_diff

    scores = _score_table(np.random.default_rng(0))
    table = T.paired_differences(scores, baseline="Dense", cluster="photo", seed=3)
    avg = table[(table.variant == "SPADE") & (table.method == "average")].iloc[0]
    # SPADE - Dense is 0.1 * (crop + 1) on every sample, whatever the sample's own level
    assert avg["diff"] == pytest.approx(0.25)
    assert avg["wins"] == 1.0 and avg["n"] == 12
    d = np.tile(0.1 * np.arange(1, 5), 3)
    ref = paired_bootstrap_diff(d, np.zeros(12), np.repeat(["p0", "p1", "p2"], 4), seed=3)
    assert (avg["low"], avg["high"]) == pytest.approx(ref[1:])
    with pytest.raises(ValueError, match="baseline"):
        T.paired_differences(scores, baseline="dense")


def test_summarize_scores_gives_nan_bounds_for_a_single_sample_instead_of_failing():
    scores = _score_table(np.random.default_rng(1), n_photos=1, crops=1)
    table = T.summarize_scores(scores, cluster="photo")
    assert table["low"].isna().all() and np.isfinite(table["mean"]).all()


def test_crop_sources_name_the_photo_each_crop_is_cut_from():
    photos = [torch.full((3, 40, 50), v) for v in (0.1, 0.5, 0.9)]
    crops = T.random_crops(photos, 10, size=16, seed=4, jitter=0.0)
    seen = [int(np.argmin([abs(float(c.mean()) - v) for v in (0.1, 0.5, 0.9)])) for c in crops]
    assert T.crop_sources(photos, 10, seed=4) == seen
    assert sorted(set(seen)) == [0, 1, 2]
