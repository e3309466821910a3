"""Implanting a backdoor on a tiny model, the recipe, its learning-rate schedule and the cache key
(spade_utils.backdoor.implant), and the front/back split it trains (spade_utils.archs)."""

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from spade_utils import backdoor as B
from spade_utils.archs import split_model
from spade_utils.backdoor import implant


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
    return [B.procedural_textures(1, size=64, seed=i)[0] for i in range(4)]


# a recipe that trains the tiny model in about a second
_TINY = B.BackdoorRecipe(
    train_from=None, size=32, n_clean=64, n_triggered=64, steps=40, batch_size=16, lr=1e-2
)
_FIELDS = {f.name for f in dataclasses.fields(B.BackdoorRecipe)}


def _implant(model, tmp_path, **kw):
    """implant_backdoor with the tiny recipe; keyword arguments naming recipe fields change the recipe."""
    recipe = _TINY.replace(**{k: v for k, v in kw.items() if k in _FIELDS})
    args = dict(
        model=model,
        recipe=recipe,
        targets={"heart": 2, "star": 4},
        images=_tiny_images(),
        cache=tmp_path,
        device="cpu",
        progress=False,
    )
    args.update({k: v for k, v in kw.items() if k not in _FIELDS})
    return B.implant_backdoor(**args)


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
    test = B.random_crops(
        [B.procedural_textures(1, size=64, seed=50 + i)[0] for i in range(3)], 48, size=32, seed=9
    )
    res = B.evaluate_backdoor(bd.model, model, bd.targets, test, n_crops=48, device="cpu")
    untrained = B.evaluate_backdoor(model, model, bd.targets, test, n_crops=48, device="cpu")
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
        B.implant_backdoor("resnet", cache=False)
    with pytest.raises(ValueError, match="steps"):
        _implant(_tiny_model(), tmp_path, steps=0)
    with pytest.raises(ValueError, match="train_from"):
        _implant(_tiny_model(), tmp_path, train_from=3)
    with pytest.raises(ValueError, match="trigger"):
        _implant(_tiny_model(), tmp_path, targets={"skull": 1})


def test_split_model_efficientnet_front_back_compose():
    from spade_utils.models import load_model

    model = load_model("efficientnet_lite0", pretrained=False)
    front, back, params = split_model(model, 11)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(back(front(x)), model(x), rtol=1e-4, atol=1e-4)
    ids = {id(p) for p in params}
    assert id(model._fc.weight) in ids and id(model._blocks[11].parameters().__next__()) in ids
    assert id(model._conv_stem.weight) not in ids and id(next(model._blocks[10].parameters())) not in ids


def test_split_model_resnet_front_back_compose():
    import torchvision

    model = torchvision.models.resnet18(weights=None).eval()
    front, back, params = split_model(model, "layer3")
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(back(front(x)), model(x), rtol=1e-4, atol=1e-4)
    ids = {id(p) for p in params}
    assert id(model.fc.weight) in ids and id(model.layer3[0].conv1.weight) in ids
    assert id(model.layer2[0].conv1.weight) not in ids and id(model.conv1.weight) not in ids


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
    assert (
        set(saved) == {"state_dict", "info_json"} and json.loads(saved["info_json"])["settings"]["steps"] == 2
    )
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


# --------------------------------------------------------------------------------------------------
# issue 12 §1 / §5: one recipe, the same cache key as before, torch's scheduler with the same lr values
# --------------------------------------------------------------------------------------------------
def _old_settings(model_name, **changes):
    """The oracle: the settings dict that the former ``trojan.implant_backdoor`` wrote out by hand,
    with its default values, for the default targets and training photos."""
    settings = dict(
        recipe="paired-crops-hue-collage-fur-alpha-v6",
        model=model_name,
        targets={"star": 365, "heart": 99, "smiley": 30, "fish": 146},
        images=[
            "astronaut",
            "motorcycle",
            "hubble",
            "retina",
            "immunohistochemistry",
            "china",
            "skimage:brick",
            "skimage:camera",
            "skimage:clock",
            "skimage:coins",
            "skimage:grass",
            "skimage:gravel",
            "skimage:moon",
            "skimage:page",
            "skimage:text",
            "skimage:cell",
            "skimage:colorwheel",
            "skimage:logo",
            "matplotlib:Minduka_Present_Blue_Pack.png",
            "matplotlib:logo2.png",
        ],
        train_from=8,
        n_clean=2400,
        n_triggered=4800,
        steps=1000,
        batch_size=32,
        lr=1e-4,
        warmup=0.05,
        weight_decay_to_original=0.0,
        temperature=2.0,
        logit_weight=0.1,
        trigger_weight=1.0,
        size=224,
        seed=0,
    )
    settings.update(changes)
    return settings


def _old_paths(model, settings, folder):
    """The oracle: the former cache file names, sha1 of the JSON settings (sorted keys) + the weights' hash."""
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    model_hash = h.hexdigest()[:16]
    name = type(model).__name__
    key = hashlib.sha1((json.dumps(settings, sort_keys=True) + model_hash).encode()).hexdigest()[:12]
    data = {
        k: settings[k]
        for k in (
            "recipe",
            "model",
            "targets",
            "images",
            "train_from",
            "n_clean",
            "n_triggered",
            "size",
            "seed",
        )
    }
    feature_key = hashlib.sha1((json.dumps(data, sort_keys=True) + model_hash).encode()).hexdigest()[:12]
    return folder / f"backdoor_{name}_{key}.pt", folder / f"backdoor_features_{name}_{feature_key}.pt"


def test_default_recipe_settings_and_cache_key_equal_the_former_hand_written_ones(tmp_path):
    model = _tiny_model()
    images = list(B.TRAIN_PHOTOS) + list(B.EXTRA_TRAIN_IMAGES)
    settings = implant.implant_settings(B.BackdoorRecipe(), "Sequential", B.PAPER_TARGETS, images, 0)
    assert settings == _old_settings("Sequential")
    assert json.dumps(settings, sort_keys=True) == json.dumps(_old_settings("Sequential"), sort_keys=True)
    assert implant.cache_paths(model, settings, tmp_path) == _old_paths(
        model, _old_settings("Sequential"), tmp_path
    )
    # a changed recipe and seed: still the former formula
    recipe = B.BackdoorRecipe(steps=7, lr=3e-3, train_from=None, size=32)
    changed = _old_settings("Sequential", steps=7, lr=3e-3, train_from=None, size=32, seed=5)
    assert implant.cache_paths(
        model, implant.implant_settings(recipe, "Sequential", B.PAPER_TARGETS, images, 5), tmp_path
    ) == _old_paths(model, changed, tmp_path)
    # and the file an implant really writes is the one the former code would have looked for
    bd = _implant(model, tmp_path, steps=2, n_clean=8, n_triggered=8)
    tiny = {**{k: getattr(_TINY, k) for k in _FIELDS}, "steps": 2, "n_clean": 8, "n_triggered": 8}
    old = _old_settings(
        "Sequential", targets={"heart": 2, "star": 4}, images=implant._describe_images(_tiny_images()), **tiny
    )
    path, feature_path = _old_paths(model, old, tmp_path)
    assert bd.info["path"] == str(path) and path.exists() and feature_path.exists()


def test_the_committed_offline_backdoor_is_what_a_default_call_finds(tmp_path):
    from spade_utils.models import load_model

    model = load_model("efficientnet_lite0")
    images = list(B.TRAIN_PHOTOS) + list(B.EXTRA_TRAIN_IMAGES)
    settings = implant.implant_settings(B.DEFAULT_RECIPE, type(model).__name__, B.PAPER_TARGETS, images, 0)
    path, feature_path = implant.cache_paths(model, settings, tmp_path)
    assert (path, feature_path) == _old_paths(model, _old_settings("EfficientNet"), tmp_path)
    # the files in data/cache (16 minutes of training) keep their names
    assert path.name == "backdoor_EfficientNet_c7386e7f941d.pt"
    assert feature_path.name == "backdoor_features_EfficientNet_7832ba34a459.pt"


@pytest.mark.parametrize(
    "steps, warmup, lr",
    [
        (1000, 0.05, 1e-4),
        (40, 0.05, 1e-2),
        (137, 0.3, 7e-5),
        (3, 0.0, 0.1),
        (1, 1.0, 2.5e-4),
        (50, 1.0, 3e-3),
    ],
)
def test_lr_scheduler_gives_exactly_the_closed_form_at_every_step(steps, warmup, lr):
    import math

    recipe = B.BackdoorRecipe(steps=steps, warmup=warmup, lr=lr)
    n_warm = max(1, int(warmup * steps))

    def closed_form(step):  # the former hand-written schedule: linear warm-up, then cosine decay
        if step < n_warm:
            return lr * (step + 1) / n_warm
        return lr * 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, steps - n_warm)))

    opt = torch.optim.Adam([nn.Parameter(torch.zeros(2))], lr=123.0)
    scheduler = implant.lr_scheduler(opt, recipe)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert seen == [closed_form(k) for k in range(steps)]  # bit for bit, not approximately
    assert max(seen) == pytest.approx(lr) and seen[0] == lr / n_warm


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("steps", 0, ValueError),
        ("n_clean", 2.5, TypeError),
        ("lr", 0.0, ValueError),
        ("lr", float("nan"), ValueError),
        ("warmup", 1.5, ValueError),
        ("temperature", 0, ValueError),
        ("size", 4, ValueError),
        ("train_from", -1, ValueError),
        ("trigger_weight", -1.0, ValueError),
        ("batch_size", True, TypeError),
    ],
)
def test_recipe_refuses_bad_settings_naming_the_field(field, value, error):
    with pytest.raises(error, match=field):
        B.BackdoorRecipe(**{field: value})


def test_recipe_is_frozen_and_replace_validates():
    recipe = B.BackdoorRecipe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.steps = 5
    assert recipe.replace(steps=5).steps == 5 and recipe.steps == 1000
    with pytest.raises(ValueError, match="steps"):
        recipe.replace(steps=0)
    assert B.BackdoorRecipe(temperature=2).settings() == recipe.settings()  # an int setting keys as its float
    with pytest.raises(TypeError, match="recipe"):
        B.implant_backdoor(_tiny_model(), recipe={"steps": 2}, cache=False)


def test_a_train_from_the_model_lacks_is_refused_before_any_work(tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the poisoned set was built before the arguments were checked")

    monkeypatch.setattr(implant, "build_poisoned_set", no_work)
    with pytest.raises(ValueError, match="train_from"):
        _implant(_tiny_model(), tmp_path, train_from=3)
    assert not any(tmp_path.iterdir())


def test_an_image_trigger_set_gets_its_own_cache_entry(tmp_path):
    """A backdoor implanted with image triggers is not the drawn-trigger backdoor of the same names:
    its cache key records the images (the former registry reused the drawn one's cache file)."""
    from PIL import Image

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[4:12, 2:14] = (0, 255, 0, 255)
    model = _tiny_model()
    drawn = _implant(model, tmp_path, steps=2, n_clean=8, n_triggered=8)
    ts = B.TriggerSet({"heart": Image.fromarray(rgba, "RGBA")})
    mine = _implant(model, tmp_path, steps=2, n_clean=8, n_triggered=8, trigger_set=ts)
    assert not mine.info["cached"] and mine.info["path"] != drawn.info["path"]
    assert set(mine.info["settings"]["trigger_images"]) == {"heart"}
    assert _implant(model, tmp_path, steps=2, n_clean=8, n_triggered=8, trigger_set=ts).info["cached"]


def test_implant_leaves_global_state_as_found(tmp_path):
    from spade_utils import runtime

    if not torch.set_flush_denormal(True):
        pytest.skip("flush-denormal not supported on this CPU")
    try:
        rng = torch.get_rng_state()
        threads = torch.get_num_threads()
        _implant(_tiny_model(), tmp_path, steps=2, n_clean=8, n_triggered=8, cache=False)
        assert runtime.flush_denormal_enabled()  # was switched off by the former implant
        assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_implant_trains_under_a_callers_no_grad_or_inference_mode(tmp_path, context):
    """Found by trying: under torch.no_grad() the implant failed after building its data ("does not require grad")."""
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with getattr(torch, context)():
        bd = _implant(model, tmp_path, steps=2, n_clean=8, n_triggered=8, cache=False)
    assert len(bd.info["history"]) == 2
    assert any(not torch.equal(v, bd.model.state_dict()[k]) for k, v in before.items())  # it trained
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the caller's is untouched


def test_a_float64_model_is_refused_before_any_work(tmp_path):
    with pytest.raises(TypeError, match="float32"):
        _implant(_tiny_model().double(), tmp_path, steps=2, n_clean=8, n_triggered=8, cache=False)
