"""Trigger patches, pasting, poisoning, backdoor implanting (tiny model) and the Sparse-FC baseline."""

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
