"""The probe: does each chosen layer compute what the engine assumes it computes?

SPADE records ``H = X X^T`` of each layer's input and prunes ``module.weight``; both are right only if
the layer's output is ``F.linear``/``F.conv2d`` of the input it receives with ``module.weight`` (after the
padding a convolution applies inside ``forward``, e.g. EfficientNet's static or TensorFlow-style
dynamic "same" padding). :func:`probe_layers` runs a small batch of views through the model, checks
this for every call of every chosen layer, finds that padding (``pre_pad``) and whether the model
accepts channels-last input. :func:`spade_utils.trace_steps.record_statistics` runs it before the
statistics pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .hessian import PRE_PADS, conv_input, default_pre_pad
from .inputs import InputSpec
from .runtime import eval_mode, flush_denormals

PROBE_VIEWS = 2  # views in the probe batch


def describe_views(views: torch.Tensor, input_spec: InputSpec | None) -> str:
    """What the views were, for error messages (``input_spec``: None for a custom augment)."""
    shape = tuple(views.shape)
    if input_spec is None:
        return f"the views from your augment, shape {shape}, {views.dtype}"
    s = input_spec
    return (
        f"augmented views of shape {shape} (n, 3, S, S) with S = input_size = {s.size}, {views.dtype}, "
        f"normalised with mean={s.mean}, std={s.std}"
    )


# --------------------------------------------------------------------------------------------
# the probe: what each layer really computes
# --------------------------------------------------------------------------------------------
def _tolerance(dtype: torch.dtype, device: torch.device) -> float:
    if dtype == torch.float64:
        return 1e-6
    if dtype == torch.bfloat16:
        return 3e-2
    if dtype == torch.float16:
        return 1e-2
    return 5e-3 if device.type != "cpu" else 1e-4  # TF32 convolutions on GPUs


def layer_reproduces(module: nn.Module, x: torch.Tensor, y, pre_pad: str | None) -> bool:
    """Whether ``y`` equals ``F.linear``/``F.conv2d`` of ``x`` with ``module.weight`` and ``module.bias``.

    For a convolution ``x`` is padded by ``pre_pad`` (see :func:`~spade_utils.hessian.conv_input`) and the
    declared padding. The comparison is ``||y - ref|| <= tol * ||ref||`` in float32 (float64 for float64
    inputs), with ``tol`` 1e-4 on CPU, 5e-3 on GPUs (TF32), 1e-2 for float16, 3e-2 for bfloat16."""
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        return False
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = cast(torch.Tensor, module.weight).detach().to(dt)
    bias = cast(torch.Tensor | None, module.bias)
    b = None if bias is None else bias.detach().to(dt)
    x = x.detach().to(dt)
    try:
        if isinstance(module, nn.Linear):
            ref = F.linear(x, w, b)
        else:
            conv = cast(nn.Conv2d, module)
            ref = F.conv2d(conv_input(conv, x, pre_pad), w, b, conv.stride, 0, conv.dilation, conv.groups)
    except (RuntimeError, ValueError):  # e.g. a reflect padding wider than the input: this padding is not it
        return False
    if ref.shape != y.shape:
        return False
    err = (y.detach().to(dt) - ref).norm()
    return bool(err <= _tolerance(y.dtype, y.device) * ref.norm() + 1e-30)


def _pre_pad_candidates(module: nn.Module) -> list[str | None]:
    """Paddings to try, most likely first: the one known by structure, then the others."""
    if not isinstance(module, nn.Conv2d):
        return [None]
    first = default_pre_pad(module)
    return [first, *(p for p in PRE_PADS if p != first and p != "static")]


def _refuse_layer(name: str, module: nn.Module) -> ValueError:
    what = (
        "F.linear"
        if isinstance(module, nn.Linear)
        else (
            f"F.conv2d (tried its declared padding {module.padding!r} with padding_mode={module.padding_mode!r}, "
            "and TensorFlow-style dynamic 'same' padding)"
        )
    )
    return ValueError(
        f"layers: {name!r} ({type(module).__name__}) does not compute its output as {what} of its input with "
        "module.weight and module.bias, so its statistics cannot be recorded correctly and pruning module.weight "
        "would not prune what it computes. Leave it out of `layers`"
    )


class _LayerChecks:
    """Forward hooks that count each layer's calls and keep the paddings that reproduce every call's output."""

    def __init__(self, layers: Mapping[str, nn.Module]):
        self.layers = layers
        self.reset()

    def reset(self) -> None:
        self.calls: dict[str, int] = dict.fromkeys(self.layers, 0)
        self.fits: dict[str, list] = {n: _pre_pad_candidates(m) for n, m in self.layers.items()}

    def _hook(self, name: str):
        def check(module, inputs, output):  # checked here: no activation is kept
            self.calls[name] += 1
            x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
            self.fits[name] = [
                c for c in self.fits[name] if x is not None and layer_reproduces(module, x, output, c)
            ]

        return check

    @contextlib.contextmanager
    def hooked(self) -> Iterator[_LayerChecks]:
        handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()


@dataclass(frozen=True)
class ProbeResult:
    """What :func:`probe_layers` found: ``pre_pad`` (conv name -> the padding its forward applies before the
    declared one, one of :data:`~spade_utils.hessian.PRE_PADS`) and ``channels_last`` (False when the model
    failed on channels-last views and ran on contiguous ones)."""

    pre_pad: dict[str, str]
    channels_last: bool


def probe_layers(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    views: torch.Tensor,
    *,
    channels_last: bool = True,
    input_spec: InputSpec | None = None,
    fn_name: str = "probe_layers",
) -> ProbeResult:
    """Run ``views`` (a small batch, e.g. :data:`PROBE_VIEWS` views) through ``model`` and check the layers.

    The model must accept the views (channels-last first when ``channels_last``; a model that fails on
    them, e.g. ``.view`` on activations, is retried on contiguous views), every layer in ``layers`` (name ->
    module of ``model``) must run as a module, and each call's output must equal ``F.linear``/``F.conv2d``
    of its input with ``module.weight`` (:func:`layer_reproduces`), trying the padding known by structure,
    then the others. Runs in eval mode without gradients; the model's flags and weights are left as found.

    Raises ValueError naming ``fn_name`` and the views (``input_spec``: what the default augmentation was
    given, None for a custom augment) when the model rejects them; ValueError naming the layers that never
    ran or whose output is not what their input and weight give.
    """
    checks = _LayerChecks(layers)
    with flush_denormals(), eval_mode(model), torch.no_grad(), checks.hooked():
        used_channels_last = _forward_probe(model, views, channels_last, checks, input_spec, fn_name)
    missing = [n for n, c in checks.calls.items() if not c]
    if missing:
        raise ValueError(
            f"layers: {missing} never ran as modules in the forward pass (the probe batch); nothing calls them, "
            "or their parent uses their weight directly (e.g. F.linear(x, layer.weight)), so their inputs "
            "cannot be recorded. Leave them out of `layers`"
        )
    pre_pad = {}
    for name, module in layers.items():
        if not checks.fits[name]:
            raise _refuse_layer(name, module)
        if checks.fits[name][0] is not None:
            pre_pad[name] = checks.fits[name][0]
    return ProbeResult(pre_pad, used_channels_last)


def _forward_probe(model, views, channels_last, checks, input_spec, fn_name) -> bool:
    """The probe's forward pass: channels-last first if asked, contiguous on failure. Returns whether the
    model ran channels-last."""
    tried = channels_last and views.dim() == 4
    if tried:
        try:
            model(views.contiguous(memory_format=torch.channels_last))
            return True
        except Exception:  # noqa: BLE001 - retried contiguous below
            checks.reset()
    try:
        model(views)
    except Exception as err:  # noqa: BLE001 - re-raised with what the views were
        hint = (
            "pass input_size=, mean=, std= to match what the model expects (or a custom augment)"
            if input_spec is not None
            else "check what your augment returns"
        )
        raise ValueError(
            f"{fn_name}: the model failed on {describe_views(views, input_spec)}: "
            f"{type(err).__name__}: {err}. If the model expects another input, {hint}"
        ) from err
    return channels_last and not tried  # after a fallback: False (the model needs contiguous activations)
