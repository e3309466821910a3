"""Preparing a copy of a model for attribution: what Captum and Zennit need to be right on it.

- BatchNorm folding along the forward graph (:func:`fold_batchnorms`): each batch norm is folded into the
  convolution or linear layer whose output tensor *is* its input, found by one hooked probe forward; refused
  (ValueError) when a batch norm is fed by anything else or runs twice.
- The check that Captum sees every nonlinearity it must treat specially (:func:`check_captum_sees_nonlinearities`,
  for Guided Backprop and DeepLift): functional or reused activations are refused.
- Zennit LRP composites by rule name (:func:`lrp_composite`), and DeepLift's rule for :class:`~spade_utils.archs.ClampedReLU`.

Used by :mod:`spade_utils.saliency` only; architecture-specific rewrites live in :mod:`spade_utils.archs`.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import nn
from zennit.canonizers import NamedMergeBatchNorm

from .archs import ClampedReLU

__all__ = [
    "batchnorm_pairs",
    "check_captum_sees_nonlinearities",
    "fold_batchnorms",
    "lrp_composite",
    "register_clamped_relu_with_deeplift",
]


def register_clamped_relu_with_deeplift() -> None:
    """Give :class:`~spade_utils.archs.ClampedReLU` Captum DeepLift's rescale rule (idempotent, process-wide)."""
    # DeepLift looks nonlinearities up by exact type; the rescale rule it uses for ReLU is valid for any
    # monotone elementwise function, ReLU6 included. The key is our own class, so nothing else changes.
    from captum.attr._core import deep_lift

    deep_lift.SUPPORTED_NON_LINEAR.setdefault(ClampedReLU, deep_lift.nonlinear)


def _module_names(net: nn.Module) -> dict[int, str]:
    return {id(m): (n or "<model>") for n, m in net.named_modules()}


def _describe(module, names) -> str:
    return f"module {names.get(id(module), '?')!r} ({type(module).__name__})"


def batchnorm_pairs(net: nn.Module, probe: torch.Tensor) -> tuple[list[tuple[str, str]], torch.Tensor]:
    """(layer name, batch-norm name) for every batch norm that runs in ``net``'s forward on ``probe``, and the output.

    The pairs come from the forward graph: hooks record which module returned each tensor; a batch norm is
    paired with the convolution/linear layer whose output tensor *is* its input (same object, not modified in
    place since). Raises ValueError for a batch norm that cannot be folded: fed by anything else, called more
    than once, fed by a layer that runs more than once or feeds two batch norms, or using batch statistics."""
    from zennit.types import BatchNorm as ZBatchNorm
    from zennit.types import Linear as ZLinear

    names = _module_names(net)
    produced: dict[int, tuple[torch.Tensor, int, list]] = {}  # id(tensor) -> (tensor, version, producers)
    sources: dict[int, list] = {}  # id(batch norm) -> producers of its input, per call
    calls: Counter = Counter()

    def hook(module, inputs, output):
        calls[id(module)] += 1
        if isinstance(module, ZBatchNorm):
            inp = inputs[0] if inputs else None
            entry = produced.get(id(inp))
            ok = entry is not None and entry[0] is inp and entry[1] == inp._version
            sources.setdefault(id(module), []).append(list(entry[2]) if ok else [])
        if isinstance(output, torch.Tensor):
            entry = produced.get(id(output))
            if entry is not None and entry[0] is output and entry[1] == output._version:
                entry[2].append(module)  # a wrapper returning its child's output: innermost producer first
            else:
                produced[id(output)] = (output, output._version, [module])

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        with torch.no_grad():
            output = net(probe)
    finally:
        for h in handles:
            h.remove()

    pairs: list[tuple[str, str]] = []
    used: dict[int, str] = {}
    for name, bn in net.named_modules():
        if not isinstance(bn, ZBatchNorm) or id(bn) not in sources:
            continue
        where = f"LRP needs every batch norm folded into the convolution or linear layer feeding it; batch norm {name!r}"
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(
                f"{where} has no running statistics (track_running_stats=False), so it cannot be folded"
            )
        if calls[id(bn)] > 1:
            raise ValueError(
                f"{where} runs {calls[id(bn)]} times in one forward pass, so it cannot be folded"
            )
        producers = sources[id(bn)][0]
        linears = [m for m in producers if isinstance(m, ZLinear)]
        if not linears:
            fed_by = (
                ", ".join(_describe(m, names) for m in producers)
                if producers
                else "a functional operation or the model input (no module returned that tensor unmodified)"
            )
            raise ValueError(
                f"{where} is fed by {fed_by}, not by a convolution or linear layer, so it cannot be "
                "folded; LRP is refused for this model (the other methods work)"
            )
        layer = linears[0]
        if calls[id(layer)] > 1:
            raise ValueError(
                f"{where} is fed by {_describe(layer, names)}, which runs {calls[id(layer)]} times in "
                "one forward pass, so folding would change its other uses"
            )
        if id(layer) in used:
            raise ValueError(
                f"{where} and batch norm {used[id(layer)]!r} are both fed by {_describe(layer, names)}"
            )
        used[id(layer)] = name
        pairs.append((names[id(layer)], name))
    return pairs, output


def fold_batchnorms(net: nn.Module, probe: torch.Tensor) -> int:
    """Fold every batch norm of ``net`` (a private copy, in eval mode) into the layer feeding it, in place.

    Uses Zennit's ``NamedMergeBatchNorm`` with the pairs from :func:`batchnorm_pairs`, then replaces each
    folded batch norm by ``nn.Identity`` (Zennit's merged batch norm still divides by sqrt(1 + eps)). The pairs are
    checked: folding them must leave the logits on ``probe`` unchanged to sqrt(machine epsilon) of their scale
    (3.5e-4 in float32), which also catches a layer whose output is used elsewhere too, or a layer that does not
    compute with its ``.weight``. Returns the number of batch norms folded."""
    pairs, before = batchnorm_pairs(net, probe)
    if not pairs:
        return 0
    modules = dict(net.named_modules())
    for _, bn_name in pairs:
        bn = modules[bn_name]
        if (
            bn.weight is None
        ):  # affine=False: the identity affine part, so the merge has parameters to rewrite
            like = bn.running_mean
            bn.weight = nn.Parameter(torch.ones_like(like), requires_grad=False)
            bn.bias = nn.Parameter(torch.zeros_like(like), requires_grad=False)
    NamedMergeBatchNorm([((layer,), bn) for layer, bn in pairs]).apply(net)  # never reverted: a private copy
    for (
        _,
        bn_name,
    ) in pairs:  # Zennit leaves x / sqrt(1 + eps) behind, off by eps/2 per batch norm: make it exact
        parent_name, _, child = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else net, child, nn.Identity())
    with torch.no_grad():
        after = net(probe)
    err = float((after - before).abs().max()) if before.numel() else 0.0
    scale = float(before.abs().max()) if before.numel() else 0.0
    if not err <= math.sqrt(torch.finfo(before.dtype).eps) * max(scale, 1e-12):
        raise ValueError(
            f"folding the batch norms into the layers feeding them changes the model's output by {err:.3g} (scale "
            f"{scale:.3g}): a layer's output is also used elsewhere, or a layer does not compute with its .weight; "
            f"LRP is refused for this model. Pairs: {pairs}"
        )
    return len(pairs)


_RECTIFIERS = frozenset(
    {
        "relu",
        "relu_",
        "relu6",
        "hardtanh",
        "hardtanh_",
        "leaky_relu",
        "leaky_relu_",
        "rrelu",
        "rrelu_",
        "prelu",
        "elu",
        "elu_",
        "selu",
        "selu_",
        "celu",
        "celu_",
        "gelu",
        "silu",
        "mish",
        "hardswish",
        "softplus",
        "threshold",
        "threshold_",
        "clamp",
        "clamp_",
        "clamp_min",
        "clamp_min_",
        "clamp_max",
        "clamp_max_",
        "clip",
        "clip_",
        "glu",
    }
)
_OTHER_NONLINEAR = frozenset(
    {
        "sigmoid",
        "sigmoid_",
        "tanh",
        "tanh_",
        "hardsigmoid",
        "logsigmoid",
        "softsign",
        "tanhshrink",
        "softshrink",
        "hardshrink",
        "softmax",
        "log_softmax",
        "softmin",
        "max_pool1d",
        "max_pool2d",
        "max_pool3d",
        "max_pool1d_with_indices",
        "max_pool2d_with_indices",
        "max_pool3d_with_indices",
        "adaptive_max_pool1d",
        "adaptive_max_pool2d",
        "adaptive_max_pool3d",
        "fractional_max_pool2d",
        "fractional_max_pool3d",
    }
)


def check_captum_sees_nonlinearities(net: nn.Module, probe: torch.Tensor, method: str) -> None:
    """Refuse Guided Backprop / DeepLift (ValueError) when the model's forward applies a nonlinearity the Captum
    method cannot see. One probe forward under a ``TorchFunctionMode`` records every nonlinear torch function and
    the innermost module running it: Guided Backprop needs each rectifier inside an ``nn.ReLU`` module; DeepLift
    needs each nonlinearity inside a module of a type it supports, each such module called once."""
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR
    from torch.overrides import TorchFunctionMode

    guided = method in ("guided_backprop", "guided_grad_cam")
    watched = _RECTIFIERS if guided else _RECTIFIERS | _OTHER_NONLINEAR
    names = _module_names(net)
    stack: list = []
    calls: Counter = Counter()
    invisible: dict[str, int] = {}

    def push(module, args):
        stack.append(module)
        calls[id(module)] += 1

    def pop(module, args, output):
        if stack and stack[-1] is module:
            stack.pop()

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            fname = getattr(func, "__name__", "")
            if fname in watched:
                inner = stack[-1] if stack else None
                seen = (
                    isinstance(inner, nn.ReLU)
                    if guided
                    else inner is not None and type(inner) in SUPPORTED_NON_LINEAR
                )
                if not seen:
                    key = (
                        f"{fname} in {_describe(inner, names)}"
                        if inner is not None
                        else f"{fname} in the model's forward"
                    )
                    invisible[key] = invisible.get(key, 0) + 1
            return func(*args, **(kwargs or {}))

    handles = [
        h for m in net.modules() for h in (m.register_forward_pre_hook(push), m.register_forward_hook(pop))
    ]
    try:
        with torch.no_grad(), Recorder():
            net(probe)
    finally:
        for h in handles:
            h.remove()
    if guided:
        rule = "Captum's Guided Backprop changes the gradient of nn.ReLU modules only"
    else:
        rule = (
            "Captum's DeepLift applies its rescale rule only to nonlinearity modules of the types "
            f"{sorted(t.__name__ for t in SUPPORTED_NON_LINEAR)}"
        )
        reused = [
            f"{_describe(m, names)} x{calls[id(m)]}"
            for m in net.modules()
            if type(m) in SUPPORTED_NON_LINEAR and calls[id(m)] > 1
        ]
        if reused:
            raise ValueError(
                f"method={method!r} refused: {rule}, each called once per forward pass, but this model "
                f"reuses {', '.join(reused)}; give every use its own module"
            )
    if invisible:
        found = ", ".join(f"{k} (x{v})" for k, v in invisible.items())
        raise ValueError(
            f"method={method!r} refused: {rule}, but this model's forward applies {found}; the result "
            "would silently be the plain gradient there. Use modules (e.g. nn.ReLU instead of F.relu) "
            "or another method"
        )


def lrp_composite(rule: str, canonizers: list):
    """The Zennit composite for an LRP rule name of :data:`spade_utils.saliency.LRP_RULES`, with ``canonizers``."""
    from zennit.composites import (
        EpsilonAlpha2Beta1,
        EpsilonPlus,
        EpsilonPlusFlat,
        LayerMapComposite,
        layer_map_base,
    )
    from zennit.rules import AlphaBeta
    from zennit.types import Convolution, Linear

    if rule == "epsilon_plus_flat":
        return EpsilonPlusFlat(canonizers=canonizers)
    if rule == "epsilon_plus":
        return EpsilonPlus(canonizers=canonizers)
    if rule == "epsilon_alpha2_beta1":
        return EpsilonAlpha2Beta1(canonizers=canonizers)
    # alpha1-beta0 on every convolution and linear layer (the SPADE paper's LRP setting)
    layer_map = layer_map_base() + [
        (Convolution, AlphaBeta(alpha=1.0, beta=0.0)),
        (Linear, AlphaBeta(alpha=1.0, beta=0.0)),
    ]
    return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
