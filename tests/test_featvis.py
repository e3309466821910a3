import numpy as np
import pytest
import torch
from torch import nn

from spade_utils.featvis import count_hooks, image_distance, visualize


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


FAST = dict(steps=15, size=32, input_size=40, progress=False, device="cpu")


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
    render.render_vis(net, "labels:0", thresholds=(1,), show_image=False, progress=False, preprocess=False, transforms=[],
                      fixed_image_size=32, param_f=lambda: _cpu_param())
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
    img = visualize(net, 4, steps=40, size=32, input_size=None, transforms=None, progress=False, device="cpu")
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
        visualize(net, 1, steps=0)
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
