"""LRP with batch norms folded from the forward graph: equal to LRP on a network folded by hand.

The oracle in every test is an independent hand fold: the test lists which convolution feeds which batch norm
(from the architecture as written), folds it (W' = W * g / sqrt(v + eps), b' = (b - mu) * g / sqrt(v + eps) + beta)
and replaces the batch norm by ``nn.Identity``. The folded network computes the same logits, and LRP on it needs
no batch-norm canonizer at all, so ``attribute(model, ..., "lrp")`` must give the same relevance.
"""

import copy

import pytest
import torch
from tiny_models import tiny_lite as shared_tiny_lite
from torch import nn
from torch.nn import functional as F

from spade_utils.saliency import attribute


def hand_fold(model: nn.Module, pairs) -> nn.Module:
    """A copy of ``model`` with each batch norm ``bn`` of ``pairs`` [(conv name, bn name)] folded into ``conv``."""
    net = copy.deepcopy(model).eval()
    mods = dict(net.named_modules())
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = mods[conv_name], mods[bn_name]
            gain = 1 / torch.sqrt(bn.running_var + bn.eps)
            if bn.affine:
                gain = gain * bn.weight
            shape = (-1,) + (1,) * (conv.weight.dim() - 1)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            bias = (bias - bn.running_mean) * gain + (bn.bias if bn.affine else 0)
            conv.weight = nn.Parameter(conv.weight * gain.view(shape))
            conv.bias = nn.Parameter(bias)
            parent, _, child = bn_name.rpartition(".")
            setattr(mods[parent] if parent else net, child, nn.Identity())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    return net


def lite_pairs(model) -> list[tuple[str, str]]:
    """EfficientNet-Lite's conv -> batch-norm pairs, read off efficientnet_lite_pytorch's MBConvBlock.forward."""
    pairs = [("_conv_stem", "_bn0")]
    for i, block in enumerate(model._blocks):
        if block._block_args.expand_ratio != 1:
            pairs.append((f"_blocks.{i}._expand_conv", f"_blocks.{i}._bn0"))
        pairs += [
            (f"_blocks.{i}._depthwise_conv", f"_blocks.{i}._bn1"),
            (f"_blocks.{i}._project_conv", f"_blocks.{i}._bn2"),
        ]
    return pairs + [("_conv_head", "_bn1")]


def randomise_batchnorms(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model


def assert_same_relevance(a: torch.Tensor, b: torch.Tensor):
    cos = F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1)
    assert (cos > 0.9999).all(), f"cosine {cos.tolist()}"
    torch.testing.assert_close(a.sum((1, 2)), b.sum((1, 2)), rtol=1e-3, atol=1e-5 * float(b.abs().max()))
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * float(b.abs().max()))


@pytest.fixture(scope="module")
def lite0():
    from spade_utils.models import load_model

    return load_model("efficientnet_lite0")


def tiny_lite(seed=0):
    """The shared tiny EfficientNet-Lite (tests/tiny_models.py) with non-trivial batch-norm statistics."""
    return randomise_batchnorms(shared_tiny_lite(seed), seed).eval()


@pytest.mark.parametrize("rule", ["epsilon_plus_flat", "alpha1_beta0"])
def test_lrp_on_efficientnet_lite_architecture_equals_hand_folded_network(rule):
    net = tiny_lite()
    assert any(
        len(list(m.children())) for m in net.modules() if isinstance(m, nn.Conv2d)
    )  # convs own a padding child
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    folded = hand_fold(net, lite_pairs(net))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-6)
    assert_same_relevance(
        attribute(net, x, [1, 3], "lrp", rule=rule, device="cpu"),
        attribute(folded, x, [1, 3], "lrp", rule=rule, device="cpu"),
    )


def _lite0_case(lite0, rule, size):
    from spade_utils.data import preprocess, sample_image

    x = preprocess(
        sample_image("chelsea"), size=size
    )  # a small crop keeps the test fast; the graph is the same
    pairs = lite_pairs(lite0)
    assert len(pairs) == sum(isinstance(m, nn.BatchNorm2d) for m in lite0.modules()) == 49
    folded = hand_fold(lite0, pairs)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), lite0(x), rtol=1e-4, atol=1e-4)  # the hand fold is right
    state = {k: v.clone() for k, v in lite0.state_dict().items()}
    assert_same_relevance(
        attribute(lite0, x, 285, "lrp", rule=rule, device="cpu"),
        attribute(folded, x, 285, "lrp", rule=rule, device="cpu"),
    )
    assert all(
        torch.equal(state[k], v) for k, v in lite0.state_dict().items()
    )  # the caller's weights untouched
    assert sum(isinstance(m, nn.BatchNorm2d) for m in lite0.modules()) == 49


def test_lrp_on_efficientnet_lite0_equals_hand_folded_network(lite0):
    """Zennit's leaf-adjacency merge folds none of Lite0's 49 batch norms (its convolutions own a padding child)."""
    _lite0_case(lite0, "epsilon_plus_flat", 48)


@pytest.mark.slow
def test_lrp_alpha1_beta0_on_efficientnet_lite0_equals_hand_folded_network(lite0):
    _lite0_case(lite0, "alpha1_beta0", 96)


class RegisteredOutOfOrder(nn.Module):
    """Registers conv1, conv2, bn1, bn2: registration order pairs bn1 with conv2, the forward pairs it with conv1."""

    def __init__(self, affine=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8, affine=affine)
        self.bn2 = nn.BatchNorm2d(8, affine=affine)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("affine", [True, False])
def test_lrp_follows_the_forward_graph_not_registration_order(affine, x):
    torch.manual_seed(0)
    net = randomise_batchnorms(RegisteredOutOfOrder(affine)).eval()
    folded = hand_fold(net, [("conv1", "bn1"), ("conv2", "bn2")])
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-5, atol=1e-6)
    flags = [m.training for m in net.modules()]
    for rule in ("epsilon_plus_flat", "epsilon_plus"):
        assert_same_relevance(
            attribute(net, x, [1, 2], "lrp", rule=rule, device="cpu"),
            attribute(folded, x, [1, 2], "lrp", rule=rule, device="cpu"),
        )
    assert [m.training for m in net.modules()] == flags


class LinearBatchNorm1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.head = nn.ModuleDict(
            {"bn": nn.BatchNorm1d(10), "fc1": nn.Linear(6, 10), "fc2": nn.Linear(10, 4)}
        )

    def forward(self, x):
        h = F.relu(self.conv(x)).mean((2, 3))
        return self.head["fc2"](F.relu(self.head["bn"](self.head["fc1"](h))))


def test_batchnorm1d_after_linear_is_folded(x):
    torch.manual_seed(1)
    net = randomise_batchnorms(LinearBatchNorm1d()).eval()
    folded = hand_fold(net, [("head.fc1", "head.bn")])
    assert_same_relevance(
        attribute(net, x, 3, "lrp", device="cpu"), attribute(folded, x, 3, "lrp", device="cpu")
    )


class PreActivation(nn.Module):
    """A batch norm fed by a ReLU (pre-activation ResNets, DenseNets): there is no layer to fold it into."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.conv2(self.bn(self.relu(self.conv1(x)))).mean((2, 3)))


class InputBatchNorm(PreActivation):
    def forward(self, x):
        return self.fc(self.conv2(self.bn(self.conv1(x).clone())).mean((2, 3)))


class SkipFromBeforeBatchNorm(PreActivation):
    """conv1's output feeds bn and also a skip connection: folding bn into conv1 would change the skip."""

    def forward(self, x):
        h = self.conv1(x)
        return self.fc((self.conv2(F.relu(self.bn(h))) + h).mean((2, 3)))


class SharedConv(PreActivation):
    """conv2 runs twice, once into bn: folding bn into it would change its other use."""

    def forward(self, x):
        h = F.relu(self.conv1(x))
        return self.fc((self.bn(self.conv2(h)) + self.conv2(h)).mean((2, 3)))


class InPlaceBetween(PreActivation):
    """conv1's output tensor is modified in place before bn sees it: the same object, but not conv1's output."""

    def forward(self, x):
        h = self.conv1(x)
        h.relu_()
        return self.fc(self.conv2(self.bn(h)).mean((2, 3)))


class BatchStatistics(PreActivation):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(8, track_running_stats=False)

    def forward(self, x):
        return self.fc(self.conv2(F.relu(self.bn(self.conv1(x)))).mean((2, 3)))


@pytest.mark.parametrize(
    "cls, message",
    [
        (PreActivation, "fed by module 'relu'"),
        (InputBatchNorm, "functional operation"),
        (SkipFromBeforeBatchNorm, "changes the model's output"),
        (SharedConv, "runs 2 times"),
        (InPlaceBetween, "functional operation"),
        (BatchStatistics, "running statistics"),
    ],
)
def test_lrp_refuses_batchnorms_it_cannot_fold(cls, message, x):
    torch.manual_seed(0)
    net = randomise_batchnorms(cls()).eval()
    with pytest.raises(ValueError, match=message):
        attribute(net, x, 0, "lrp", device="cpu")
    attribute(net, x, 0, "saliency", device="cpu")  # other methods are unaffected
