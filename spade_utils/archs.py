"""What the package knows about specific architectures, in one place.

Code elsewhere takes any ``nn.Module``; where a job needs to know how one family of networks is
built (which attributes hold its stages, how its forward composes them), that knowledge lives
here, so that supporting another architecture means changing this module only.

- attribution rewrites (:func:`prepare_for_captum`: one activation instance per use, ``ReLU6`` as
  :class:`ClampedReLU`, re-implemented block forwards) and Zennit canonizers for residual adds
  (:func:`residual_canonizers`, :class:`EfficientNetLiteCanonizer`), used by :mod:`spade_utils.saliency`;
- the padding a convolution applies inside ``forward`` (:func:`default_pre_pad`), used by the statistics;
- splitting a classifier into a frozen front and a trainable back (:func:`split_model`) for
EfficientNet (the ``efficientnet-lite-pytorch`` / ``efficientnet_pytorch`` layout: ``_conv_stem``,
``_blocks``, ``_conv_head``, ``_fc``) and torchvision ResNets (``conv1`` ... ``layer4``, ``fc``).
"""

from __future__ import annotations

import copy
import types
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from zennit.canonizers import AttributeCanonizer
from zennit.layer import Sum

__all__ = [
    "ClampedReLU",
    "EfficientNetLiteCanonizer",
    "default_pre_pad",
    "is_efficientnet",
    "is_mbconv",
    "prepare_for_captum",
    "residual_canonizers",
    "split_model",
]


def default_pre_pad(module: nn.Conv2d) -> str:
    """The padding a convolution applies in ``forward`` before its declared ``padding``, known by structure.

    ``"static"``: an EfficientNet-style ``static_padding`` child module; ``"tf_same"``: TensorFlow's dynamic
    "same" padding (``Conv2dDynamicSamePadding``); ``"none"``: plain ``nn.Conv2d``. Convolutions that pad
    in ``forward`` under other names are found by :func:`spade_utils.layer_probe.probe_layers` (run by every
    statistics pass: ``spade_trace`` and ``layer_study.record_statistics``), which checks the layer's own
    output on a probe batch and passes the padding that reproduces it as ``pre_pad``.
    """
    if isinstance(getattr(module, "static_padding", None), nn.Module):
        return "static"
    if type(module).__name__ == "Conv2dDynamicSamePadding":
        return "tf_same"
    return "none"


class _Chain(nn.Module):
    """Runs a list of stages (modules or functions) one after the other."""

    def __init__(self, stages):
        super().__init__()
        self.stages = list(stages)  # a plain list: the parameters stay registered in the original model only

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return x


def _has_efficientnet_stages(model: nn.Module) -> bool:
    return hasattr(model, "_blocks") and hasattr(model, "_conv_head")


def _is_resnet(model: nn.Module) -> bool:
    return hasattr(model, "layer4") and hasattr(model, "fc")


def _efficientnet_stages(m) -> list:
    """EfficientNet's forward as stages: the stem, each block, the head (conv, pooling, classifier)."""

    def stem(x):
        return m._swish(m._bn0(m._conv_stem(x)))

    def head(x):
        x = m._swish(m._bn1(m._conv_head(x)))
        return m._fc(m._dropout(torch.flatten(m._avg_pooling(x), 1)))

    return [stem, *m._blocks, head]


def _resnet_stages(m) -> list:
    """A torchvision ResNet's forward as stages: the stem, layer1-4, the head (pooling, classifier)."""

    def stem(x):
        return m.maxpool(m.relu(m.bn1(m.conv1(x))))

    def head(x):
        return m.fc(torch.flatten(m.avgpool(x), 1))

    return [stem, m.layer1, m.layer2, m.layer3, m.layer4, head]


def split_model(
    model: nn.Module, train_from: int | str | None
) -> tuple[nn.Module, nn.Module, list[nn.Parameter]]:
    """``(front, back, trainable parameters)`` with ``back(front(x)) == model(x)``.

    ``train_from``: for EfficientNet, the index of the first trained block (``11`` trains blocks
    11-15, the head and the classifier; ``16`` = the number of blocks trains only the head conv and
    the classifier); for torchvision ResNets, ``"layer1"`` ... ``"layer4"``;
    ``None`` trains the whole model (front is the identity).

    ``front`` and ``back`` run the caller's own modules (no copy; their parameters stay registered in
    ``model`` only). Raises ValueError naming ``train_from`` for an index/name the model does not
    have, or for any value other than ``None`` on an architecture this module does not know.
    """
    if train_from is None:
        return nn.Identity(), model, list(model.parameters())
    if _has_efficientnet_stages(model):
        blocks = cast(nn.ModuleList, model._blocks)
        if (
            isinstance(train_from, bool)
            or not isinstance(train_from, int)
            or not 0 <= train_from <= len(blocks)
        ):
            raise ValueError(
                f"train_from must be a block index in [0, {len(blocks)}] for EfficientNet, got {train_from!r}"
            )
        stages = _efficientnet_stages(model)
        params = [p for b in blocks[train_from:] for p in b.parameters()]
        params += [
            p for name in ("_conv_head", "_bn1", "_fc") for p in model.get_submodule(name).parameters()
        ]
        return _Chain(stages[: 1 + train_from]), _Chain(stages[1 + train_from :]), params
    if _is_resnet(model):
        names = {"layer1": 1, "layer2": 2, "layer3": 3, "layer4": 4}
        if train_from not in names:
            raise ValueError(f"train_from must be one of {list(names)} for a ResNet, got {train_from!r}")
        k = names[train_from]
        params = [p for i in range(k, 5) for p in model.get_submodule(f"layer{i}").parameters()]
        params += list(model.get_submodule("fc").parameters())
        stages = _resnet_stages(model)
        return _Chain(stages[:k]), _Chain(stages[k:]), params
    raise ValueError(
        f"train_from={train_from!r} needs an EfficientNet or torchvision ResNet; use train_from=None for {type(model).__name__}"
    )


class ClampedReLU(nn.ReLU):
    """``min(max(x, 0), cap)`` (``ReLU6`` for cap=6) typed as a ``nn.ReLU`` so attribution libraries treat it as one."""

    def __init__(self, cap: float = 6.0):
        super().__init__(inplace=False)
        self.cap = float(cap)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(input, 0.0, self.cap)

    def extra_repr(self) -> str:
        return f"cap={self.cap}"


# ----------------------------------------------------------------------------- rewrites for attribution


def is_mbconv(module: nn.Module) -> bool:
    """An ``efficientnet-lite-pytorch`` MBConv block (known by class name and its depthwise conv)."""
    return type(module).__name__ == "MBConvBlock" and hasattr(module, "_depthwise_conv")


def is_efficientnet(module: nn.Module) -> bool:
    """An ``efficientnet-lite-pytorch`` EfficientNet (class name, stem and blocks)."""
    return (
        type(module).__name__ == "EfficientNet"
        and hasattr(module, "_conv_stem")
        and hasattr(module, "_blocks")
    )


def _mbconv_forward(self, inputs, drop_connect_rate=None):
    """MBConvBlock.forward in eval mode, with one activation module per use and an optional Sum module."""
    act_expand = getattr(self, "spade_act_expand", self._swish)
    act_dw = getattr(self, "spade_act_dw", self._swish)
    act_se = getattr(self, "spade_act_se", self._swish)
    x = inputs
    if self._block_args.expand_ratio != 1:
        x = act_expand(self._bn0(self._expand_conv(inputs)))
    x = act_dw(self._bn1(self._depthwise_conv(x)))
    if self.has_se:
        s = self._se_expand(act_se(self._se_reduce(F.adaptive_avg_pool2d(x, 1))))
        x = torch.sigmoid(s) * x
    x = self._bn2(self._project_conv(x))
    args = self._block_args
    if self.id_skip and args.stride == 1 and args.input_filters == args.output_filters:
        if hasattr(self, "spade_sum"):
            x = self.spade_sum(torch.stack([inputs, x], dim=-1))
        else:
            x = x + inputs
    return x


def _efficientnet_extract_features(self, inputs):
    act_stem = getattr(self, "spade_act_stem", self._swish)
    act_head = getattr(self, "spade_act_head", self._swish)
    x = act_stem(self._bn0(self._conv_stem(inputs)))
    for block in self._blocks:
        x = block(x)
    return act_head(self._bn1(self._conv_head(x)))


def _bottleneck_forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.spade_relu1(self.bn1(self.conv1(x)))
    out = self.spade_relu2(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.spade_relu3(out + identity)


def _basicblock_forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.spade_relu1(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.spade_relu2(out + identity)


def _fresh_activation(act) -> nn.Module:
    if not isinstance(act, nn.Module):
        raise TypeError(f"expected an activation module, got {type(act).__name__}")
    if isinstance(act, nn.ReLU6):
        return ClampedReLU(6.0)
    if isinstance(act, nn.ReLU):
        return nn.ReLU(inplace=False)
    return copy.deepcopy(act)


def prepare_for_captum(model: nn.Module) -> nn.Module:
    """In place, on a copy: one activation instance per use, ReLU6 -> ClampedReLU, no in-place ReLUs."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for module in list(model.modules()):
        if isinstance(module, Bottleneck):
            for k in (1, 2, 3):
                setattr(module, f"spade_relu{k}", _fresh_activation(module.relu))
            module.forward = types.MethodType(_bottleneck_forward, module)
        elif isinstance(module, BasicBlock):
            for k in (1, 2):
                setattr(module, f"spade_relu{k}", _fresh_activation(module.relu))
            module.forward = types.MethodType(_basicblock_forward, module)
        elif is_mbconv(module):
            for name in ("spade_act_expand", "spade_act_dw", "spade_act_se"):
                setattr(module, name, _fresh_activation(module._swish))
            module.forward = types.MethodType(_mbconv_forward, module)
        elif is_efficientnet(module):
            module.spade_act_stem = _fresh_activation(module._swish)
            module.spade_act_head = _fresh_activation(module._swish)
            module.extract_features = types.MethodType(_efficientnet_extract_features, module)  # type: ignore[assignment]
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, ClampedReLU(6.0))
            elif type(child) is nn.ReLU and child.inplace:
                setattr(parent, name, nn.ReLU(inplace=False))
    return model


# ----------------------------------------------------------------------------- Zennit canonizers


class EfficientNetLiteCanonizer(AttributeCanonizer):
    """Zennit canonizer for ``efficientnet_lite_pytorch`` models: routes the residual add of every
    ``MBConvBlock`` through a ``zennit.layer.Sum`` module, so the add gets Zennit's ``Norm`` rule (relevance
    split in proportion to the two summands) instead of being invisible to the rules.

    Batch norms are not its job: :func:`attribute` folds every batch norm into the layer that feeds it, found
    from the forward graph, for every model (see the module docstring)."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @staticmethod
    def _attribute_map(name, module):
        if is_mbconv(module):
            return {"forward": types.MethodType(_mbconv_forward, module), "spade_sum": Sum()}
        return None

    def copy(self):
        return self.__class__()


def residual_canonizers(model: nn.Module) -> list:
    """Residual-add canonizers by architecture (batch norms are folded separately, from the forward graph)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

    modules = list(model.modules())
    if any(isinstance(m, (Bottleneck, BasicBlock)) for m in modules):
        return [ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()]
    if any(is_mbconv(m) for m in modules):
        return [EfficientNetLiteCanonizer()]
    return []
