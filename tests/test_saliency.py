import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet, resnet18

from spade_utils.saliency import LRP_RULES, SALIENCY_METHODS, attribute, gradcam_layer, last_conv_layer

FAST = dict(window=6, stride=4, n_steps=8, n_samples=4, device="cpu")


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


def tiny_lite(seed=0):
    """An EfficientNet-Lite-architecture network shrunk to a few blocks (ReLU6, static same padding, MBConv residuals)."""
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import BlockDecoder, GlobalParams

    torch.manual_seed(seed)
    blocks = BlockDecoder.decode(["r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24"])
    params = GlobalParams(width_coefficient=0.25, depth_coefficient=1.0, image_size=16, dropout_rate=0.0,
                          num_classes=5, batch_norm_momentum=0.99, batch_norm_epsilon=1e-3, drop_connect_rate=0.0,
                          depth_divisor=8, min_depth=None, relu_fn="relu6", fix_head_stem=True, local_pooling=False,
                          use_se=False)
    return EfficientNet(blocks, params).eval()


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
    assert sum(isinstance(m, nn.ReLU6) for m in net.modules()) > 0  # the caller's ReLU6 modules are still there


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
        attribute(net, x, 0, "lime")
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
    table = attribution_aucs(net, x[:2], [0, 1], ["saliency", "grad_cam"], {"dense": net, "copy": tiny_resnet()},
                             auc_steps=5, image_ids=["a", "b"], device="cpu")
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
