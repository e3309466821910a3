import copy

import pytest
import torch
from tiny_models import tiny_lite
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock, ResNet, resnet18

from spade_utils.saliency import LRP_RULES, SALIENCY_METHODS, attribute, gradcam_layer, last_conv_layer

FAST = dict(window=6, stride=4, n_steps=8, n_samples=4, lime_samples=32, device="cpu")


class TinyResNet(nn.Module):
    """Two torchvision BasicBlocks (residual adds, batch norm, one in-place ReLU reused per block) at width 8-16."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, stride=2, downsample=down))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def tiny_resnet(seed=0, zero_bias=False):
    torch.manual_seed(seed)
    net = TinyResNet()
    with torch.no_grad():  # non-trivial batch-norm statistics, so merging them matters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                if zero_bias:
                    m.running_mean.zero_()
                    m.bias.zero_()
        if zero_bias:
            net.fc.bias.zero_()
    return net.eval()


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", SALIENCY_METHODS)
def test_shape_batch_consistency_and_model_untouched(method, x):
    net = tiny_resnet()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    hooks_before = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in net.modules())
    maps = attribute(net, x, [0, 3, 1], method, **FAST)
    assert maps.shape == (3, 16, 16) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.abs().sum() > 0
    for i, t in enumerate([0, 3, 1]):
        single = attribute(net, x[i : i + 1], t, method, **FAST)
        torch.testing.assert_close(maps[i : i + 1], single, rtol=1e-4, atol=1e-5 * float(single.abs().max()))
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())  # bit for bit
    assert sum(len(m._forward_hooks) + len(m._backward_hooks) for m in net.modules()) == hooks_before
    assert all(type(m) is not nn.ReLU or m.inplace for m in net.modules() if isinstance(m, nn.ReLU))


@pytest.mark.parametrize("method", ["saliency", "deeplift", "guided_backprop", "grad_cam", "lrp"])
def test_efficientnet_lite_architecture(method, x):
    net = tiny_lite()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    maps = attribute(net, x[:2], [1, 2], method, **FAST)
    assert maps.shape == (2, 16, 16) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert (
        sum(isinstance(m, nn.ReLU6) for m in net.modules()) > 0
    )  # the caller's ReLU6 modules are still there


def test_deeplift_completeness_on_relu6_network(x):
    """DeepLift (rescale rule) sums to f(x) - f(baseline); this fails if ReLU6 is treated as linear."""
    net = tiny_lite()
    maps = attribute(net, x[:2], [1, 2], "deeplift", device="cpu")
    with torch.no_grad():
        delta = net(x[:2])[[0, 1], [1, 2]] - net(torch.zeros_like(x[:2]))[:, [1, 2]].diagonal()
    torch.testing.assert_close(maps.sum((1, 2)), delta, rtol=1e-3, atol=1e-4)


def test_guided_backprop_differs_from_gradient_on_relu6_network(x):
    net = tiny_lite()
    a = attribute(net, x[:1], 1, "saliency", device="cpu")
    b = attribute(net, x[:1], 1, "guided_backprop", device="cpu")
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("rule", ["epsilon_plus_flat", "epsilon_plus", "alpha1_beta0"])
def test_lrp_relevance_conserved_on_residual_net(rule, x):
    """With no biases anywhere (merged batch norms included), relevance is conserved: it sums to the logit."""
    net = tiny_resnet(zero_bias=True)
    with torch.no_grad():
        logits = net(x)[[0, 1, 2], [0, 3, 1]]
    relevance = attribute(net, x, [0, 3, 1], "lrp", rule=rule, device="cpu")
    if rule == "alpha1_beta0":  # only positive contributions travel: conserved where the logit is positive
        keep = logits > 0
        torch.testing.assert_close(relevance.sum((1, 2))[keep], logits[keep], rtol=0.05, atol=1e-3)
    else:
        torch.testing.assert_close(relevance.sum((1, 2)), logits, rtol=0.05, atol=1e-3)


def test_lrp_relevance_conserved_on_efficientnet_lite_architecture(x):
    net = tiny_lite()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
                m.running_var.uniform_(0.5, 1.5)
        net._fc.bias.zero_()
        logits = net(x)[[0, 1, 2], [0, 3, 1]]
    relevance = attribute(net, x, [0, 3, 1], "lrp", device="cpu")
    torch.testing.assert_close(relevance.sum((1, 2)), logits, rtol=0.05, atol=1e-3)


def test_lrp_rules_differ(x):
    net = tiny_resnet()
    maps = [attribute(net, x[:1], 0, "lrp", rule=r, device="cpu") for r in LRP_RULES]
    for a, b in zip(maps[:-1], maps[1:], strict=True):
        assert not torch.allclose(a, b)


def test_default_layers():
    assert gradcam_layer(resnet18()) == "layer4"
    assert isinstance(resnet18(), ResNet)
    assert gradcam_layer(tiny_resnet()) == last_conv_layer(tiny_resnet()) == "layer1.1.conv2"
    assert gradcam_layer(tiny_lite()) == "_bn1"


def test_bad_input(x):
    net = tiny_resnet()
    with pytest.raises(ValueError, match="method"):
        attribute(net, x, 0, "kernel_shap")
    with pytest.raises(ValueError, match="target"):
        attribute(net, x, [0, 1], "saliency")
    with pytest.raises(TypeError, match="target"):
        attribute(net, x, 0.5, "saliency")
    with pytest.raises(ValueError, match="x must"):
        attribute(net, x[0], 0, "saliency")
    with pytest.raises(ValueError, match="layer"):
        attribute(net, x, 0, "grad_cam", layer="nope")
    with pytest.raises(ValueError, match="rule"):
        attribute(net, x, 0, "lrp", rule="z")
    with pytest.raises(TypeError, match="model"):
        attribute("net", x, 0, "saliency")


def test_attribution_aucs_table(x):
    from spade_utils.saliency import attribution_aucs

    net = tiny_resnet()
    table = attribution_aucs(
        net,
        x[:2],
        [0, 1],
        ["saliency", "grad_cam"],
        {"dense": net, "copy": tiny_resnet()},
        auc_steps=5,
        image_ids=["a", "b"],
        device="cpu",
    )
    assert list(table.columns) == ["image", "method", "explainer", "insertion", "deletion"]
    assert len(table) == 2 * 2 * 2
    assert table[["insertion", "deletion"]].stack().between(0, 1).all()
    same = table.pivot_table(index=["image", "method"], columns="explainer", values="insertion")
    assert (same["dense"] - same["copy"]).abs().max() < 1e-9  # the same weights give the same maps and scores


def test_display_maps():
    from spade_utils.saliency import display_maps

    m = torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]])
    d = display_maps(m, quantile=1.0)
    assert torch.allclose(d, torch.tensor([[[0.0, 0.5], [0.75, 1.0]]]))
    rgb = display_maps(m, quantile=1.0, cmap="bwr")
    assert rgb.shape == (1, 2, 2, 3)
    assert torch.allclose(rgb[0, 0, 1], torch.ones(3), atol=0.01)  # zero is white in bwr


class TinyBottleneckNet(nn.Module):
    """Two torchvision Bottleneck blocks (ResNet-50's block type): three uses of one ReLU module each."""

    def __init__(self):
        super().__init__()
        from torchvision.models.resnet import Bottleneck

        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.layer1 = nn.Sequential(Bottleneck(16, 4), Bottleneck(16, 8, stride=2, downsample=down))
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.layer1(self.conv1(x)).mean((2, 3)))


@pytest.mark.parametrize("method", ["deeplift", "guided_backprop", "lrp"])
def test_bottleneck_blocks(method, x):
    torch.manual_seed(0)
    net = TinyBottleneckNet().eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    maps = attribute(net, x[:2], [1, 2], method, device="cpu")
    assert maps.shape == (2, 16, 16) and torch.isfinite(maps).all()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    if method == "deeplift":  # completeness holds only if every ReLU use got its own rescale rule
        with torch.no_grad():
            delta = net(x[:2])[[0, 1], [1, 2]] - net(torch.zeros_like(x[:2]))[[0, 1], [1, 2]]
        torch.testing.assert_close(maps.sum((1, 2)), delta, rtol=1e-3, atol=1e-4)


class ActivationNet(nn.Module):
    """conv -> act -> conv -> act -> mean -> fc, with the activation given as a callable or a module factory."""

    def __init__(self, act):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        self.act = act

    def acts(self):
        return (self.act, self.act)

    def forward(self, x):
        a1, a2 = self.acts()
        return self.fc(a2(self.conv2(a1(self.conv1(x)))).mean((2, 3)))


class ModuleActivationNet(ActivationNet):
    def __init__(self, factory):
        super().__init__(None)
        self.act1, self.act2 = factory(), factory()

    def acts(self):
        return (self.act1, self.act2)


def _masked_relu(h):
    return h * (h > 0).to(
        h.dtype
    )  # a rectifier built from a comparison: no nonlinear torch function is called


@pytest.mark.parametrize("method", ["guided_backprop", "guided_grad_cam", "deeplift"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: ActivationNet(F.relu),
        lambda: ActivationNet(torch.relu),
        lambda: ActivationNet(lambda h: h.clamp(min=0)),
        lambda: ModuleActivationNet(nn.SiLU),
        lambda: ActivationNet(nn.ReLU()),  # one module used twice
    ],
    ids=["F.relu", "torch.relu", "clamp", "nn.SiLU", "reused nn.ReLU"],
)
def test_methods_refuse_nonlinearities_they_cannot_see(method, make, x):
    """Guided Backprop silently equals the plain gradient where Captum sees no nn.ReLU module, and DeepLift loses
    completeness where it sees no supported module (or crashes deep inside on a reused one): refuse up front."""
    torch.manual_seed(0)
    net = make().eval()
    if method.startswith("guided") and isinstance(net.act, nn.ReLU):
        maps = attribute(net, x[:1], 1, method, device="cpu")  # reuse is fine for Guided Backprop
        assert not torch.allclose(maps, attribute(net, x[:1], 1, "saliency", device="cpu"))
        return
    with pytest.raises(ValueError, match="refused"):
        attribute(net, x[:1], 1, method, device="cpu")
    attribute(net, x[:1], 1, "saliency", device="cpu")  # gradient methods are unaffected


@pytest.mark.parametrize("method", ["guided_backprop", "deeplift"])
def test_module_relus_are_accepted_and_differ_from_the_gradient(method, x):
    torch.manual_seed(0)
    net = ModuleActivationNet(nn.ReLU).eval()
    maps = attribute(net, x[:2], [1, 2], method, device="cpu")
    assert not torch.allclose(maps, attribute(net, x[:2], [1, 2], "saliency", device="cpu"))
    if method == "deeplift":  # completeness against the model's own forward
        with torch.no_grad():
            delta = net(x[:2])[[0, 1], [1, 2]] - net(torch.zeros_like(x[:2]))[[0, 1], [1, 2]]
        torch.testing.assert_close(maps.sum((1, 2)), delta, rtol=1e-3, atol=1e-5)


def test_deeplift_refuses_when_completeness_breaks(x):
    """A rectifier written as h * (h > 0) calls no nonlinear function the probe could see; the sum of DeepLift's
    attributions then misses f(x) - f(baseline), and the result is refused instead of returned."""
    torch.manual_seed(0)
    net = ActivationNet(_masked_relu).eval()
    with pytest.raises(ValueError, match="completeness"):
        attribute(net, x[:2], [1, 2], "deeplift", device="cpu")


@pytest.mark.parametrize(
    "method",
    ["saliency", "integrated_gradients", "gradient_shap", "occlusion", "deeplift", "grad_cam", "lrp"],
)
def test_inputs_follow_the_model_dtype(method, x):
    """A float64 model gets float64 inputs and baselines (float32 ones crash inside the first convolution)."""
    net = tiny_resnet()
    wide = copy.deepcopy(net).double()
    a = attribute(net, x[:2], [0, 3], method, **FAST)
    b = attribute(wide, x[:2], [0, 3], method, **FAST)
    assert b.dtype == torch.float32 and next(wide.parameters()).dtype == torch.float64
    torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4 * float(a.abs().max()))


def test_caller_flags_hooks_and_weights_left_as_found(x):
    """A training model with a frozen batch norm and a hook of its own: every per-module flag, the hook and the
    weights come back exactly as found, for a Captum method and for LRP (which folds batch norms on a copy)."""
    net = tiny_resnet().train()
    net.layer1[0].bn1.eval()  # frozen batch norm inside a training model
    calls = []
    net.fc.register_forward_hook(lambda m, i, o: calls.append(1))
    flags = [(name, m.training) for name, m in net.named_modules()]
    hooks = sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules()
    )
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for method in ("deeplift", "lrp"):
        attribute(net, x[:1], 1, method, device="cpu")
    assert [(name, m.training) for name, m in net.named_modules()] == flags
    assert (
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules())
        == hooks
    )
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(isinstance(m, nn.BatchNorm2d) for n, m in net.named_modules() if n.endswith("bn1"))


def test_seed_is_validated_and_any_valid_seed_works(x):
    net = tiny_resnet()
    a = attribute(net, x[:1], 1, "gradient_shap", seed=2**32, **FAST)  # beyond numpy's legacy seed range
    assert torch.equal(a, attribute(net, x[:1], 1, "gradient_shap", seed=2**32, **FAST))
    with pytest.raises(TypeError, match="seed"):
        attribute(net, x[:1], 1, "gradient_shap", seed=1.7)
    with pytest.raises(ValueError, match="seed"):
        attribute(net, x[:1], 1, "gradient_shap", seed=-1)
    with pytest.raises(ValueError, match="x"):
        attribute(net, x[:1] * float("nan"), 1, "saliency")
    with pytest.raises(ValueError, match="stdevs"):
        attribute(net, x[:1], 1, "gradient_shap", stdevs=float("nan"))
