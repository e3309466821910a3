import numpy as np
import pytest
import torch
from torch import nn

from spade_utils.featvis import count_hooks, image_distance, visualize
from spade_utils.inputs import IMAGENET_MEAN, IMAGENET_STD, InputSpec


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


FAST = dict(
    steps=15, size=32, input_size=40, mean=IMAGENET_MEAN, std=IMAGENET_STD, progress=False, device="cpu"
)


def test_shape_range_and_no_hooks_left():
    net = tiny_net()
    assert count_hooks(net) == 0
    for objective in (2, "2:3", "0:1"):
        img = visualize(net, objective, batch=2, **FAST)
        assert img.shape == (2, 3, 32, 32)
        assert img.dtype == torch.float32 and img.device.type == "cpu"
        assert img.min() >= 0 and img.max() <= 1
    assert count_hooks(net) == 0


def test_lucent_objective_and_no_hooks_left():
    from lucent.optvis import objectives

    net = tiny_net()
    img = visualize(net, objectives.channel("2", 3), **FAST)
    assert img.shape == (1, 3, 32, 32)
    assert count_hooks(net) == 0


def test_render_vis_leaks_hooks_which_is_why_we_wrap_it():
    """Documents the trap: Lucent's own render_vis leaves hooks behind (if this starts failing, Lucent fixed it)."""
    from lucent.optvis import render

    net = tiny_net()
    render.render_vis(
        net,
        "labels:0",
        thresholds=(1,),
        show_image=False,
        progress=False,
        preprocess=False,
        transforms=[],
        fixed_image_size=32,
        param_f=lambda: _cpu_param(),
    )
    assert count_hooks(net) > 0


def _cpu_param():
    x = torch.zeros(1, 3, 32, 32, requires_grad=True)
    return [x], lambda: torch.sigmoid(x)


def test_same_seed_same_image_and_global_rng_untouched():
    net = tiny_net()
    np.random.seed(123)
    torch.manual_seed(123)
    np_before = np.random.get_state()[1].copy()
    torch_before = torch.get_rng_state().clone()
    a = visualize(net, 1, seed=7, **FAST)
    b = visualize(net, 1, seed=7, **FAST)
    c = visualize(net, 1, seed=8, **FAST)
    assert torch.equal(a, b)
    assert image_distance(a, c).item() > 1e-3
    assert np.array_equal(np.random.get_state()[1], np_before)
    assert torch.equal(torch.get_rng_state(), torch_before)


def test_objective_increases_and_model_untouched():
    net = tiny_net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    img = visualize(
        net,
        4,
        steps=40,
        size=32,
        input_size=32,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        transforms=None,
        progress=False,
        device="cpu",
    )
    assert net.training  # mode restored
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    net.eval()
    with torch.no_grad():
        optimised = net((img - mean) / std)[0, 4]
        start = net((torch.full_like(img, 0.5) - mean) / std)[0, 4]
    assert optimised > start


def test_bad_input():
    net = tiny_net()
    with pytest.raises(ValueError, match="steps"):
        visualize(net, 1, steps=-1)
    with pytest.raises(TypeError, match="objective"):
        visualize(net, 1.5)
    with pytest.raises(ValueError, match="layer"):
        visualize(net, "nope:1")
    with pytest.raises(TypeError, match="model"):
        visualize("net", 1)
    with pytest.raises(ValueError, match="objective class"):
        visualize(net, 99, **FAST)
    assert count_hooks(net) == 0
    with pytest.raises(ValueError, match="channel"):
        visualize(net, "0:99", **FAST)
    assert count_hooks(net) == 0


def test_image_distance():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 16, 16, generator=g)
    assert torch.equal(image_distance(a, a), torch.zeros(2))
    b = (a + 0.1).clamp(0, 1)
    assert (image_distance(a, b) > 0).all()
    checker = ((torch.arange(16).view(1, 1, 16, 1) + torch.arange(16).view(1, 1, 1, 16)) % 2 - 0.5) * 0.2
    # fine texture alone (a checkerboard) vanishes once 2x2 blocks are averaged; a brightness shift does not
    assert image_distance(a, a + checker, pool=2).max() < 1e-6 < image_distance(a, a + checker).min()
    assert image_distance(a, a + 0.1, pool=4).min() > 0.09
    with pytest.raises(ValueError, match="shape"):
        image_distance(a, a[:1])
    with pytest.raises(ValueError, match="pool"):
        image_distance(a, a, pool=0)


class FrozenBatchNormNet(nn.Module):
    """A training model with one frozen (eval-mode) batch norm and an unused module."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.unused = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_per_module_train_flags_and_hooks_left_as_found():
    net = FrozenBatchNormNet().train()
    net.bn.eval()  # frozen batch norm inside a training model
    seen = []
    net.fc.register_forward_hook(lambda m, i, o: seen.append(1))  # the caller's own hook stays
    flags = [(name, m.training) for name, m in net.named_modules()]
    hooks = count_hooks(net)
    visualize(net, 1, **FAST)
    assert [(name, m.training) for name, m in net.named_modules()] == flags
    assert count_hooks(net) == hooks == 1
    with pytest.raises(ValueError, match="channel"):
        visualize(net, "conv:99", **FAST)  # the same after an error
    assert [(name, m.training) for name, m in net.named_modules()] == flags
    assert count_hooks(net) == hooks


def test_channel_objective_on_a_layer_the_forward_never_calls():
    net = FrozenBatchNormNet().eval()
    with pytest.raises(ValueError, match="never ran"):
        visualize(net, "unused:0", **FAST)
    assert count_hooks(net) == 0


class TupleNet(nn.Module):
    """Returns (logits, features) or {"logits", "features"}: the shape of many detection / multi-head models."""

    def __init__(self, as_dict=False):
        super().__init__()
        self.net, self.as_dict = tiny_net(), as_dict

    def forward(self, x):
        logits = self.net(x)
        return {"logits": logits, "features": x.mean((2, 3))} if self.as_dict else (logits, x.mean((2, 3)))


@pytest.mark.parametrize(
    "as_dict, output",
    [(False, 0), (False, lambda out: out[0]), (True, "logits"), (True, lambda out: out["logits"])],
)
def test_models_returning_tuples_or_dicts(as_dict, output):
    wrapped = TupleNet(as_dict)
    with pytest.raises(ValueError, match="output="):
        visualize(wrapped, 2, **FAST)
    # the oracle: the same network returning its logits directly gives the same image from the same seed
    assert torch.equal(visualize(wrapped, 2, output=output, **FAST), visualize(tiny_net(), 2, **FAST))
    assert count_hooks(wrapped) == 0


def test_output_argument_is_checked():
    with pytest.raises(ValueError, match="output="):
        visualize(TupleNet(), 2, output=5, **FAST)
    with pytest.raises(ValueError, match="output="):
        visualize(TupleNet(True), 2, output="nope", **FAST)
    with pytest.raises(TypeError, match="output"):
        visualize(TupleNet(), 2, output=1.5, **FAST)
    with pytest.raises(ValueError, match="shape"):
        visualize(
            TupleNet(), 2, output=lambda out: out[0][0], **FAST
        )  # one logit vector, not (batch, classes)


def test_any_valid_seed_works_and_bad_seeds_are_refused():
    net = tiny_net()
    a = visualize(net, 1, seed=2**32, **FAST)  # beyond NumPy's legacy seed range
    assert torch.equal(a, visualize(net, 1, seed=2**32, **FAST))
    with pytest.raises(ValueError, match="seed"):
        visualize(net, 1, seed=-1, **FAST)
    with pytest.raises(TypeError, match="seed"):
        visualize(net, 1, seed=1.7, **FAST)


class RecordingNet(nn.Module):
    """Records the shape and range of every input it sees."""

    def __init__(self):
        super().__init__()
        self.net, self.seen = tiny_net(), []

    def forward(self, x):
        self.seen.append((tuple(x.shape), float(x.detach().min()), float(x.detach().max()), x.dtype))
        return self.net(x)


def test_input_size_and_normalisation_follow_the_model():
    net = RecordingNet()
    fast = {k: v for k, v in FAST.items() if k not in ("input_size", "mean", "std")}
    with pytest.raises(
        ValueError, match="input_size"
    ):  # neither given nor stated: refuse, no silent 224-px ImageNet
        visualize(net, 1, **fast)
    assert net.seen == []
    net.spade_input_spec = InputSpec(
        24, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    )  # a 24-px model taking [0, 1] input
    img = visualize(net, 1, **fast)
    assert {shape for shape, *_ in net.seen} == {(1, 3, 24, 24)}
    assert (
        min(lo for _, lo, _, _ in net.seen) >= 0 and max(hi for _, _, hi, _ in net.seen) <= 1
    )  # not normalised
    assert torch.equal(img, visualize(net, 1, input_size=24, mean=(0, 0, 0), std=(1, 1, 1), **fast))
    net.seen.clear()
    visualize(net, 1, input_size=40, mean=IMAGENET_MEAN, std=IMAGENET_STD, **fast)  # explicit arguments win
    assert {shape for shape, *_ in net.seen} == {(1, 3, 40, 40)}
    assert min(lo for _, lo, _, _ in net.seen) < 0  # ImageNet-normalised
    with pytest.raises(ValueError, match="std"):
        visualize(net, 1, std=(1.0, 0.0, 1.0), **fast)


def test_visualizations_follow_the_model_dtype():
    net = RecordingNet()
    wide = RecordingNet().double()
    a = visualize(net, 3, **FAST)
    b = visualize(wide, 3, **FAST)
    assert {dtype for *_, dtype in wide.seen} == {torch.float64}
    assert b.dtype == torch.float32 and next(wide.parameters()).dtype == torch.float64
    assert image_distance(a, b).max() < 1e-3  # the same optimisation up to float32 rounding


# --------------------------------------------------------------------------------------------------
# the options: image-seeded accentuation, diversity, multi-scale crops, contrast channels
# --------------------------------------------------------------------------------------------------
def _seed_image(size=32, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.02 + 0.96 * torch.rand(batch, 3, size, size, generator=g)


@pytest.mark.parametrize("decorrelate", [True, False])
def test_seeded_visualization_with_zero_steps_returns_the_seed(decorrelate):
    net = tiny_net()
    seed_image = _seed_image(batch=2)
    img = visualize(
        net, 1, steps=0, batch=2, init=seed_image, decorrelate=decorrelate, **_without(FAST, "steps")
    )
    assert torch.allclose(img, seed_image, atol=1e-5)
    one = visualize(net, 1, steps=0, init=seed_image[0], decorrelate=decorrelate, **_without(FAST, "steps"))
    assert torch.allclose(one[0], seed_image[0], atol=1e-5)


def _without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def test_seed_regulariser_keeps_the_result_near_the_seed_and_the_objective_rises():
    net = tiny_net()
    seed_image = _seed_image()
    kw = dict(_without(FAST, "steps"), steps=30, init=seed_image, transforms=None, lr=0.05)
    free = visualize(net, 3, init_weight=0.0, **kw)
    held = visualize(net, 3, init_weight=50.0, **kw)
    d_free = image_distance(free, seed_image).item()
    d_held = image_distance(held, seed_image).item()
    assert d_held < 0.5 * d_free

    def logit(x):
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = torch.nn.functional.interpolate(x, size=(40, 40), mode="bilinear", align_corners=True)
        with torch.no_grad():
            return net(x)[0, 3].item()

    assert logit(held) > logit(seed_image)


def _gram_similarity(net, layer_index, images):
    """Mean pairwise cosine similarity of the images' channel Gram matrices at net[layer_index] (an oracle)."""
    norm = (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    x = torch.nn.functional.interpolate(norm, size=(40, 40), mode="bilinear", align_corners=True)
    with torch.no_grad():
        act = net[: layer_index + 1](x).flatten(2)
    grams = [(a @ a.T).flatten() for a in act]
    grams = [g / g.norm() for g in grams]
    sims = [float(grams[i] @ grams[j]) for i in range(len(grams)) for j in range(len(grams)) if i != j]
    return sum(sims) / len(sims)


def test_diversity_lowers_the_batch_gram_similarity():
    net = tiny_net()
    kw = dict(_without(FAST, "steps"), steps=40, batch=4, transforms=None, seed=3)
    plain = visualize(net, 2, **kw)
    diverse = visualize(net, 2, diversity=20.0, diversity_layer="1", **kw)
    assert _gram_similarity(net, 1, diverse) < _gram_similarity(net, 1, plain) - 0.01
    assert count_hooks(net) == 0


def test_multiscale_crops_cut_a_window_of_the_drawn_scale():
    from spade_utils.featvis import multiscale_crops

    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(3, 3, 64, 64).contiguous()
    np.random.seed(0)
    half = multiscale_crops(0.5, 0.5)(ramp)
    assert half.shape == ramp.shape
    spans = (half[:, 0, 0, -1] - half[:, 0, 0, 0]).tolist()
    assert all(0.4 < s < 0.55 for s in spans), spans  # a 32-px window of the 64-px ramp spans ~half its range
    np.random.seed(0)
    whole = multiscale_crops(1.0, 1.0)(ramp)
    assert torch.allclose(whole, ramp, atol=1e-6)
    net = tiny_net()
    img = visualize(net, 1, transforms="multiscale", **FAST)
    assert img.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="min_scale"):
        multiscale_crops(0.8, 0.5)


def test_contrast_channels_equals_a_hand_computed_difference():
    from spade_utils.featvis import contrast_channels

    net = tiny_net()
    a, b = _seed_image(16, 3, seed=1), _seed_image(16, 2, seed=2)
    diff = contrast_channels(net, "2", a, b, mean=IMAGENET_MEAN, std=IMAGENET_STD, batch_size=2)

    def norm(x):
        return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
            1, 3, 1, 1
        )

    with torch.no_grad():
        expected = net[:3](norm(a)).mean((0, 2, 3)) - net[:3](norm(b)).mean((0, 2, 3))
    assert torch.allclose(diff, expected, atol=1e-5)
    assert count_hooks(net) == 0


@pytest.mark.parametrize(
    "kwargs, err, word",
    [
        (dict(init=torch.rand(3, 8, 8) * 2), ValueError, "init"),
        (dict(init=torch.rand(2, 8, 8)), ValueError, "init"),
        (dict(init=[0.5]), TypeError, "init"),
        (dict(init_weight=1.0), ValueError, "init_weight"),
        (dict(init_weight=-1.0, init=torch.rand(3, 8, 8)), ValueError, "init_weight"),
        (dict(diversity=1.0, diversity_layer="1"), ValueError, "batch"),
        (dict(diversity=1.0, batch=2), ValueError, "diversity_layer"),
        (dict(diversity=1.0, batch=2, diversity_layer="nope"), ValueError, "nope"),
        (dict(transforms="zoom"), ValueError, "transforms"),
    ],
)
def test_bad_option_arguments_are_refused(kwargs, err, word):
    with pytest.raises(err, match=word):
        visualize(tiny_net(), 1, **{**FAST, **kwargs})
