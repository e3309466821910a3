"""The SPADE trace: one sample -> a network whose chosen layers are pruned for that sample.

>>> trace = spade_trace(model, image, layers=["layer4*", "fc"], sparsity=0.95, n_augment=256)
>>> with trace:                       # the sparse weights are in the model here
...     logits = model(x)
>>> trace.records                     # per layer: sparsity, reconstruction error, seconds
>>> pruned = spade_pruned_copy(model, image, layers="layer4*", sparsity=0.95)

Building the trace (augment -> probe -> record layer-input statistics -> solve each layer) happens
when ``spade_trace`` is called; the model's dense weights are untouched until the ``with`` block,
and are restored bit-for-bit when it ends, also after an exception.

What the engine guarantees, or refuses with a ValueError/TypeError before the statistics pass:

- the views have the size and normalisation the model states (or the caller passes), in the model's
  dtype; a model that rejects them fails on a two-view probe with a message naming the arguments;
- H is built from what each layer really multiplies: a probe batch checks that every chosen layer's
  output equals ``F.linear``/``F.conv2d`` of the recorded input with ``module.weight`` (trying the
  declared padding, then TensorFlow-style dynamic "same" padding), and the weight pruned is the one the
  layer uses (parametrized or hook-computed weights are refused before any forward pass);
- a weight shared by several chosen layers is solved once on their pooled statistics; a weight shared
  with a layer that is not chosen, attention's functional projections and unsupported layer kinds are
  refused (or, for globs, skipped with a warning and listed in ``trace.skipped``);
- the records report what is in the model: ``achieved_sparsity`` is read back through the module with
  the sparse weight in place and ``rel_error`` is ``||Y - Y'||^2 / ||Y||^2`` of the layer's own output
  (bias excluded) on the trace's views;
- the caller's model is left as found: weights, per-module train/eval flags, device, dtype, hooks; and
  so is the process-global flush-denormal flag.
"""

from __future__ import annotations

import copy
import fnmatch
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .augment import ImageAugmenter, image_tensor
from .hessian import (
    PRE_PADS,
    PRUNABLE,
    HessianRecorder,
    conv_input,
    default_pre_pad,
    is_depthwise,
    set_weight_matrix,
    weight_matrix,
)
from .inputs import InputSpec, resolve_input_spec
from .runtime import eval_mode, flush_denormals, model_device, model_dtype, resolve_device
from .solvers import SOLVERS, layer_relative_error, solve
from .validation import check_positive_int, check_seed, check_sparsity
from .widgets import progress_bar as tqdm

LayerSelection = str | Sequence[str] | Callable[[str, nn.Module], bool]
Augment = Callable[[object, int, torch.Generator], torch.Tensor]

_WRAPPERS = ("DataParallel", "DistributedDataParallel")
_PROBE_VIEWS = 2


# --------------------------------------------------------------------------------------------
# wrappers and names
# --------------------------------------------------------------------------------------------
def unwrap_model(model: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """The user's module inside ``torch.compile`` / ``nn.DataParallel`` / DDP wrappers, and the name
    prefixes those wrappers add (``"_orig_mod."``, ``"module."``), outermost first."""
    prefixes: list[str] = []
    for _ in range(8):
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):  # torch.compile's OptimizedModule
            prefixes.append("_orig_mod.")
        elif type(model).__name__ in _WRAPPERS and isinstance(getattr(model, "module", None), nn.Module):
            inner = model.module
            prefixes.append("module.")
        else:
            break
        model = inner
    return model, tuple(prefixes)


def _strip(name: str, prefixes: Sequence[str]) -> str:
    """A name the user wrote for the wrapped model -> the same name inside the wrappers (prefixes optional)."""
    for p in prefixes:
        if name == p[:-1]:
            return ""
        if name.startswith(p):
            name = name[len(p):]
    return name


# --------------------------------------------------------------------------------------------
# choosing layers and sparsities
# --------------------------------------------------------------------------------------------
def _attention_owned(model: nn.Module) -> dict[str, str]:
    """Names of modules inside (or equal to) an ``nn.MultiheadAttention`` -> the attention module's name."""
    out: dict[str, str] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            for sub, _ in m.named_modules(prefix=name):
                out[sub] = name
    return out


def _attention_message(name: str, owner: str) -> str:
    return (
        f"layers: {name!r} belongs to the nn.MultiheadAttention {owner!r}; attention is not supported: its "
        "in_proj_weight and out_proj are applied through F.multi_head_attention_forward, not called as layers, "
        "so their inputs cannot be recorded. Select the other layers (e.g. the MLP Linears) instead"
    )


def _unsupported(name: str, module: nn.Module, attention: Mapping[str, str]) -> str | None:
    """Why a weight-bearing module cannot be pruned (None: it is a supported Linear/Conv2d)."""
    if name in attention:
        return f"inside nn.MultiheadAttention {attention[name]!r} (applied functionally)"
    if isinstance(module, PRUNABLE):
        return None
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Bilinear)):
        return f"{type(module).__name__} (supported: Linear, Conv2d)"
    return None


def _select(
    model: nn.Module, layers: LayerSelection, skip_depthwise: bool = False, prefixes: Sequence[str] = ()
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """(chosen name -> module in model order, skipped name -> reason); see :func:`select_layers`."""
    named = dict(model.named_modules())
    attention = _attention_owned(model)
    prunable = {n: m for n, m in named.items() if n and isinstance(m, PRUNABLE) and n not in attention}
    chosen: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}

    def keep(module: nn.Module) -> bool:
        return not (skip_depthwise and is_depthwise(module))

    def take(candidates: Mapping[str, nn.Module]) -> dict[str, nn.Module]:
        out = {}
        for n, m in candidates.items():
            if not n:
                continue
            reason = _unsupported(n, m, attention)
            if reason is not None:
                skipped[n] = reason
            elif n in prunable and keep(m):
                out[n] = m
        return out

    if callable(layers) and not isinstance(layers, str):
        for n, m in named.items():
            if n and (n in prunable or _unsupported(n, m, attention)) and layers(n, m):
                chosen.update(take({n: m}))
    else:
        patterns = [layers] if isinstance(layers, str) else layers
        if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
            raise TypeError("layers must be a name, a glob, a list of them, or a predicate f(name, module)")
        params = dict(model.named_parameters())
        for raw in patterns:
            pattern = _strip(raw, prefixes)
            if pattern in named:
                module = named[pattern]
                if pattern in attention:
                    raise TypeError(_attention_message(raw, attention[pattern]))
                if isinstance(module, PRUNABLE):
                    chosen[pattern] = module
                    continue
                reason = _unsupported(pattern, module, attention)
                if reason is not None:
                    raise TypeError(f"layers: {raw!r} is a {reason}; the engine prunes Linear and Conv2d layers")
                prefix = pattern + "." if pattern else ""
                inside = take({n: m for n, m in named.items() if n.startswith(prefix)})
                if not inside:
                    raise TypeError(
                        f"layers: {raw!r} is a {type(module).__name__} with no prunable Linear/Conv2d inside; "
                        "the engine prunes Linear and Conv2d layers"
                    )
                chosen.update(inside)
                continue
            if pattern in params:
                owner = pattern.rpartition(".")[0]
                if owner in attention:
                    raise TypeError(_attention_message(raw, attention[owner]))
                raise TypeError(f"layers: {raw!r} is a parameter; name the layer that owns it ({owner!r})")
            hits = take({n: m for n, m in named.items() if fnmatch.fnmatchcase(n, pattern)})
            if not hits:
                raise ValueError(f"layers: {raw!r} matches no prunable layer of the model")
            chosen.update(hits)
    for n in chosen:
        skipped.pop(n, None)
    if not chosen:
        detail = f" (skipped: {skipped})" if skipped else ""
        raise ValueError(f"layers: the selection is empty{detail}")
    order = list(named)
    return dict(sorted(chosen.items(), key=lambda kv: order.index(kv[0]))), skipped


def _warn_skipped(skipped: Mapping[str, str]) -> None:
    if skipped:
        listed = "; ".join(f"{n}: {r}" for n, r in skipped.items())
        warnings.warn(f"layers: skipped {len(skipped)} module(s) the engine cannot prune: {listed}", stacklevel=3)


def select_layers(model: nn.Module, layers: LayerSelection, *, skip_depthwise: bool = False) -> dict[str, nn.Module]:
    """Resolve names, globs (``"layer4.*"``) or a predicate ``f(name, module)`` to prunable modules.

    A layer named exactly is always taken (a depthwise conv too); globs and predicates pick only
    Linear/Conv2d modules and skip depthwise convs when ``skip_depthwise`` is set. Modules a glob or
    predicate matches but the engine cannot prune (Conv1d, Conv3d, ConvTranspose*, Bilinear, layers
    inside ``nn.MultiheadAttention``) are skipped with a ``UserWarning`` that names them; naming one
    exactly raises TypeError. Names may carry the ``_orig_mod.`` / ``module.`` prefixes of
    ``torch.compile`` / DataParallel wrappers; the returned names are those inside the wrappers.

    Raises TypeError (bad ``layers`` type, a named layer that cannot be pruned) or ValueError (a pattern
    that matches nothing, an empty selection).
    """
    inner, prefixes = unwrap_model(model)
    chosen, skipped = _select(inner, layers, skip_depthwise, prefixes)
    _warn_skipped(skipped)
    return chosen


def resolve_sparsity(
    sparsity: float | Mapping[str, float], names: Sequence[str], prefixes: Sequence[str] = ()
) -> dict[str, float]:
    """A float for every layer, or a mapping module-path prefix -> sparsity (the longest match wins).

    A prefix matches whole path components: ``"_blocks.1"`` covers ``_blocks.1`` and ``_blocks.1.conv``,
    not ``_blocks.10``; ``""`` covers every layer. Raises TypeError/ValueError for a value outside [0, 1)
    or a layer no prefix covers.
    """
    if isinstance(sparsity, Mapping):
        rules: dict[str, float] = {}
        for k, v in sparsity.items():
            if not isinstance(k, str):
                raise TypeError(f"sparsity keys must be layer-name prefixes (str), got {k!r}")
            rules[_strip(k, prefixes)] = check_sparsity(v, f"sparsity[{k!r}]")
        out = {}
        for name in names:
            matches = [p for p in rules if p == "" or name == p or name.startswith(p + ".")]
            if not matches:
                raise ValueError(f"sparsity: no prefix in {list(sparsity)} covers layer {name!r}")
            out[name] = rules[max(matches, key=len)]
        return out
    value = check_sparsity(sparsity, "sparsity")
    return {name: value for name in names}


# --------------------------------------------------------------------------------------------
# checks on the chosen layers (no forward pass)
# --------------------------------------------------------------------------------------------
def _check_plain_weight(name: str, module: nn.Module) -> None:
    """Refuse layers whose effective weight is not the parameter ``module.weight``."""
    if parametrize.is_parametrized(module):
        raise TypeError(
            f"layers: {name!r} has a parametrized weight (e.g. torch.nn.utils.parametrizations.weight_norm or "
            "spectral_norm): the weight in effect is computed from other tensors, so pruning module.weight "
            "would not prune it. Remove the parametrization first (torch.nn.utils.parametrize."
            "remove_parametrizations(module, 'weight')) or leave the layer out"
        )
    w = module._parameters.get("weight")
    if isinstance(w, nn.parameter.UninitializedParameter):
        raise TypeError(f"layers: {name!r} is a lazy layer that has not run yet; run one forward pass first")
    if not isinstance(w, nn.Parameter):
        raise TypeError(
            f"layers: {name!r} has no weight parameter: its weight is computed in a forward pre-hook (e.g. "
            "torch.nn.utils.weight_norm, spectral_norm or torch.nn.utils.prune), so pruning it would not prune "
            "the weight in effect. Remove the hook first (torch.nn.utils.remove_weight_norm / prune.remove) "
            "or leave the layer out"
        )
    if not w.is_floating_point():
        raise TypeError(f"layers: {name!r} has a {w.dtype} weight; only floating-point weights can be pruned")


def _extent(t: torch.Tensor) -> tuple[int, int, int]:
    """(storage pointer, first element, one past the last element) of a tensor's memory."""
    last = sum((s - 1) * st for s, st in zip(t.shape, t.stride(), strict=True)) if t.numel() else -1
    return t.untyped_storage().data_ptr(), t.storage_offset(), t.storage_offset() + last + 1


def _shared_groups(model: nn.Module, chosen: Mapping[str, nn.Module]) -> list[list[str]]:
    """Group chosen layers that use one weight tensor; refuse weights shared with anything else."""
    holders: dict[int, list[tuple[str, str, nn.Module, torch.Tensor]]] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for pname, p in m._parameters.items():
            if p is not None:
                holders.setdefault(_extent(p)[0], []).append((mname, pname, m, p))
    chosen_ids = {id(m) for m in chosen.values()}
    groups: dict[tuple, list[str]] = {}
    for name, module in chosen.items():
        w = module.weight
        ptr, lo, hi = _extent(w)
        for mname, pname, m, p in holders.get(ptr, []):
            if m is module and pname == "weight":
                continue
            _, plo, phi = _extent(p)
            if plo >= hi or phi <= lo:
                continue  # a different part of the same storage
            same_view = pname == "weight" and id(m) in chosen_ids and (
                plo, tuple(p.shape), p.stride()) == (lo, tuple(w.shape), w.stride())
            if not same_view:
                raise ValueError(
                    f"layers: the weight of {name!r} shares memory with {mname}.{pname}, which is not a chosen layer's "
                    "identical weight; pruning it would change that tensor too. Choose every layer that uses this "
                    "weight, or untie the weights (give each layer its own copy)"
                )
        groups.setdefault((ptr, lo, tuple(w.shape), w.stride()), []).append(name)
    for names in groups.values():
        first = chosen[names[0]]
        for n in names[1:]:
            m = chosen[n]
            if type(m) is not type(first) or getattr(m, "groups", 1) != getattr(first, "groups", 1):
                raise ValueError(f"layers: {names[0]!r} and {n!r} share a weight but are different kinds of layer")
    return [names for names in groups.values()]


# --------------------------------------------------------------------------------------------
# what the layer really computes (checked on the probe batch)
# --------------------------------------------------------------------------------------------
def _tolerance(dtype: torch.dtype, device: torch.device) -> float:
    if dtype == torch.float64:
        return 1e-6
    if dtype == torch.bfloat16:
        return 3e-2
    if dtype == torch.float16:
        return 1e-2
    return 5e-3 if device.type != "cpu" else 1e-4  # TF32 convolutions on GPUs


def _reproduces(module: nn.Module, x: torch.Tensor, y, pre_pad: str | None) -> bool:
    """Whether ``y`` equals F.linear / F.conv2d of ``x`` (after ``pre_pad`` and the declared padding)."""
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        return False
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = module.weight.detach().to(dt)
    b = None if module.bias is None else module.bias.detach().to(dt)
    x = x.detach().to(dt)
    try:
        if isinstance(module, nn.Linear):
            ref = F.linear(x, w, b)
        else:
            ref = F.conv2d(conv_input(module, x, pre_pad), w, b, module.stride, 0, module.dilation, module.groups)
    except (RuntimeError, ValueError):  # e.g. a reflect padding wider than the input: this padding is not it
        return False
    if ref.shape != y.shape:
        return False
    err = (y.detach().to(dt) - ref).norm()
    return bool(err <= _tolerance(y.dtype, y.device) * ref.norm() + 1e-30)


def _pre_pad_candidates(module: nn.Module) -> list[str | None]:
    """Paddings to try, most likely first: the one known by structure, then the others."""
    if isinstance(module, nn.Linear):
        return [None]
    first = default_pre_pad(module)
    return [first] + [p for p in PRE_PADS if p != first and p != "static"]


def _refuse_layer(name: str, module: nn.Module) -> ValueError:
    what = "F.linear" if isinstance(module, nn.Linear) else (
        f"F.conv2d (tried its declared padding {module.padding!r} with padding_mode={module.padding_mode!r}, "
        "and TensorFlow-style dynamic 'same' padding)")
    return ValueError(
        f"layers: {name!r} ({type(module).__name__}) does not compute its output as {what} of its input with "
        "module.weight and module.bias, so its statistics cannot be recorded correctly and pruning module.weight "
        "would not prune what it computes. Leave it out of `layers`"
    )


# --------------------------------------------------------------------------------------------
# the trace
# --------------------------------------------------------------------------------------------
_APPLIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> the trace whose weights it carries


def _same_device(a: torch.device, b: torch.device) -> bool:
    def norm(d: torch.device) -> torch.device:
        if d.type == "cuda" and d.index is None and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return d

    return norm(a) == norm(b)


class SpadeTrace:
    """Sparse weights computed for one sample; a context manager that swaps them into the model.

    Build it with :func:`spade_trace` (the parameters are documented there). Attributes:

    - ``layers``: name -> the caller's module (names inside any torch.compile/DataParallel wrapper);
    - ``sparse_weights``: name -> sparse weight (the layer's weight shape, dtype and device);
    - ``records``: DataFrame, one row per layer: ``layer``, ``type``, ``shape``, ``target_sparsity``,
      ``achieved_sparsity`` (zeros of the weight in effect with the trace applied, fraction),
      ``rel_error`` (``||Y - Y'||^2 / ||Y||^2`` of the layer's output on the views, bias excluded),
      ``seconds`` (solve time); plus ``shared_with`` when chosen layers share a weight;
    - ``timings``: seconds per stage (augment, statistics, solve);
    - ``input_spec``: the :class:`~spade_utils.inputs.InputSpec` of the views (None with a custom augment);
    - ``channels_last``: whether the views were fed channels-last (False after a fallback);
    - ``skipped``: name -> reason for modules a glob/predicate matched but the engine cannot prune;
    - ``pre_pad``: conv name -> padding its forward applies before the declared one (found on the probe).
    """

    def __init__(
        self,
        model: nn.Module,
        sample,
        *,
        layers: LayerSelection,
        sparsity: float | Mapping[str, float],
        n_augment: int = 128,
        augment: Augment | None = None,
        input_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        solver: str = "sparsegpt",
        batch_size: int = 64,
        device: str | torch.device = "auto",
        seed: int = 0,
        progress: bool = True,
        skip_depthwise: bool = False,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = True,
        solver_options: Mapping | None = None,
    ):
        # ---- validate everything before any forward pass or weight change
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        n_augment = check_positive_int(n_augment, "n_augment")
        batch_size = check_positive_int(batch_size, "batch_size")
        seed = check_seed(seed, "seed")
        for flag, value in (("progress", progress), ("skip_depthwise", skip_depthwise),
                            ("channels_last", channels_last)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be a bool, got {type(value).__name__}")
        if not isinstance(solver, str) or solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype (the statistics' accumulation dtype) must be torch.float32 or torch.float64, "
                             f"got {dtype}")
        if solver_options is not None and not isinstance(solver_options, Mapping):
            raise TypeError(f"solver_options must be a mapping or None, got {type(solver_options).__name__}")
        if augment is not None and not callable(augment):
            raise TypeError("augment must be a callable (sample, n, generator) -> batch")
        inner, prefixes = unwrap_model(model)
        chosen, self.skipped = _select(inner, layers, skip_depthwise, prefixes)
        _warn_skipped(self.skipped)
        for name, module in chosen.items():
            _check_plain_weight(name, module)
        busy = [n for n, m in chosen.items() if m in _APPLIED]
        if busy:
            raise RuntimeError(f"layers {busy} carry the sparse weights of another trace now (inside its `with` "
                               "block); build this trace outside it")
        self.groups = _shared_groups(inner, chosen)
        self.sparsity = resolve_sparsity(sparsity, list(chosen), prefixes)
        for names in self.groups:
            if len({self.sparsity[n] for n in names}) > 1:
                raise ValueError(f"sparsity: layers {names} share one weight but were given different sparsities")
        self.device = resolve_device(device)
        if augment is None:
            self.input_spec: InputSpec | None = resolve_input_spec(
                model, size=input_size, mean=mean, std=std, fn_name="spade_trace")
            sample = image_tensor(sample, argname="sample")  # raises on anything that is not an image
        else:
            given = [n for n, v in (("input_size", input_size), ("mean", mean), ("std", std)) if v is not None]
            if given:
                raise ValueError(f"{', '.join(given)} set the default augmentation; with a custom augment they "
                                 "would be ignored: build the size and normalisation into augment instead")
            self.input_spec = None
        self.model = model
        self.layers = chosen
        self.solver = solver
        self.channels_last = channels_last
        self.pre_pad: dict[str, str] = {}
        self._dense: dict[str, torch.Tensor] | None = None
        self.timings = {"augment": 0.0, "statistics": 0.0, "solve": 0.0}

        # ---- where to compute: the caller's model is never moved; another device gets a copy
        here = all(_same_device(t.device, self.device) for t in (*inner.parameters(), *inner.buffers()))
        if here:
            compute, layers_c = inner, chosen
        else:
            try:
                compute = copy.deepcopy(inner).to(self.device)
            except Exception as err:  # noqa: BLE001 - any failure: say what to do
                raise RuntimeError(
                    f"spade_trace: could not copy the model to device={str(self.device)!r} ({err}); the caller's model "
                    f"is never moved: pass device={str(model_device(inner))!r} or move the model first") from err
            named_c = dict(compute.named_modules())
            layers_c = {n: named_c[n] for n in chosen}
        compute_dtype = model_dtype(compute)
        if augment is None:
            spec = self.input_spec
            augment = ImageAugmenter(spec.size, mean=spec.mean, std=spec.std, dtype=compute_dtype, device=self.device)
        self._augment, self._compute_dtype = augment, compute_dtype

        with flush_denormals(), eval_mode(compute), torch.no_grad():
            self._probe(compute, layers_c, sample, seed)
            stats, counts = self._statistics(compute, layers_c, sample, n_augment, batch_size, seed, dtype, progress)
            self.sparse_weights, self.records = self._solve(stats, counts, dict(solver_options or {}), progress)

    # ---- views in the model's device and dtype
    def _views(self, sample, m: int, gen: torch.Generator, channels_last: bool) -> torch.Tensor:
        views = self._augment(sample, m, gen)
        if not isinstance(views, torch.Tensor):
            raise TypeError(f"augment must return a tensor batch, got {type(views).__name__}")
        views = views.to(self.device)
        if views.is_floating_point():
            views = views.to(self._compute_dtype)
        if channels_last and views.dim() == 4:
            views = views.contiguous(memory_format=torch.channels_last)
        return views

    def _describe_views(self, views: torch.Tensor) -> str:
        shape = tuple(views.shape)
        if self.input_spec is None:
            return f"the views from your augment, shape {shape}, {views.dtype}"
        s = self.input_spec
        return (f"augmented views of shape {shape} (n, 3, S, S) with S = input_size = {s.size}, {views.dtype}, "
                f"normalised with mean={s.mean}, std={s.std}")

    # ---- stage 0: two views through the model, before any statistics
    def _probe(self, model, layers, sample, seed):
        """Run a probe batch: the model must accept the views, every chosen layer must run, and each
        layer's output must be what its recorded input and weight give (this fixes ``pre_pad``)."""
        gen = torch.Generator().manual_seed(seed)  # its own generator: the statistics' views are unchanged
        # per layer: how many calls ran, and the paddings that reproduced the output of every call so far
        calls: dict[str, int] = dict.fromkeys(layers, 0)
        fits: dict[str, list] = {n: _pre_pad_candidates(m) for n, m in layers.items()}

        def hook(name):
            def check(module, inputs, output):  # checked here: no activation is kept
                calls[name] += 1
                x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
                fits[name] = [c for c in fits[name] if x is not None and _reproduces(module, x, output, c)]
            return check

        views = self._views(sample, _PROBE_VIEWS, gen, channels_last=False)
        handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
        try:
            first_error = None
            if self.channels_last and views.dim() == 4:
                try:
                    model(views.contiguous(memory_format=torch.channels_last))
                except Exception as err:  # noqa: BLE001 - retried contiguous below
                    first_error = err
                    calls.update(dict.fromkeys(layers, 0))
                    fits.update({n: _pre_pad_candidates(m) for n, m in layers.items()})
            if first_error is not None or not self.channels_last or views.dim() != 4:
                try:
                    model(views)
                except Exception as err:  # noqa: BLE001 - re-raised with what the views were
                    hint = ("pass input_size=, mean=, std= to match what the model expects (or a custom augment)"
                            if self.input_spec is not None else "check what your augment returns")
                    raise ValueError(
                        f"spade_trace: the model failed on {self._describe_views(views)}: "
                        f"{type(err).__name__}: {err}. If the model expects another input, {hint}") from err
                if first_error is not None:
                    self.channels_last = False  # the model needs contiguous activations (e.g. .view in forward)
        finally:
            for h in handles:
                h.remove()
        missing = [n for n, c in calls.items() if not c]
        if missing:
            raise ValueError(
                f"layers: {missing} never ran as modules in the forward pass (the probe batch); nothing calls them, "
                "or their parent uses their weight directly (e.g. F.linear(x, layer.weight)), so their inputs "
                "cannot be recorded. Leave them out of `layers`")
        for name, module in layers.items():
            if not fits[name]:
                raise _refuse_layer(name, module)
            if fits[name][0] is not None:
                self.pre_pad[name] = fits[name][0]

    # ---- stage 1: augmented views -> layer-input statistics
    def _statistics(self, model, layers, sample, n, batch_size, seed, dtype, progress):
        gen = torch.Generator().manual_seed(seed)
        device = self.device
        with HessianRecorder(layers, dtype=dtype, pre_pad=self.pre_pad) as rec:
            bar = tqdm(total=n, desc="SPADE statistics", unit="img", disable=not progress, leave=False)
            done = 0
            while done < n:
                m = min(batch_size, n - done)
                t0 = time.perf_counter()
                views = self._augment(sample, m, gen)
                self.timings["augment"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                if not isinstance(views, torch.Tensor):
                    raise TypeError(f"augment must return a tensor batch, got {type(views).__name__}")
                views = views.to(device)
                if views.is_floating_point():
                    views = views.to(self._compute_dtype)
                if self.channels_last and views.dim() == 4:
                    views = views.contiguous(memory_format=torch.channels_last)
                model(views)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                self.timings["statistics"] += time.perf_counter() - t0
                done += m
                bar.update(m)
            bar.close()
        missing = [name for name in layers if name not in rec.sums]
        if missing:
            raise RuntimeError(f"layers {missing} never ran in the forward pass; they cannot be pruned")
        return rec.hessians(), dict(rec.counts)

    # ---- stage 2: solve each layer (each shared weight once, on the pooled statistics)
    def _solve(self, hessians, counts, options, progress):
        sparse: dict[str, torch.Tensor] = {}
        seconds: dict[str, float] = {}
        for names in tqdm(self.groups, desc=f"SPADE {self.solver}", disable=not progress, leave=False):
            module = self.layers[names[0]]
            t0 = time.perf_counter()
            total = sum(counts[n] for n in names)
            H = sum(hessians[n].to(self.device) * (counts[n] / total) for n in names)
            W = weight_matrix(module).to(self.device, H.dtype)
            W_sparse, _ = solve(W, H, self.sparsity[names[0]], method=self.solver, **options)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            w_new = W_sparse.reshape(module.weight.shape).to(module.weight.device, module.weight.dtype)
            for n in names:
                sparse[n] = w_new
                seconds[n] = (time.perf_counter() - t0) / len(names)
        self.timings["solve"] += sum(seconds.values())
        # ---- what is in the model: read the weights back through the modules with the trace applied
        self.sparse_weights = sparse
        dense = {n: weight_matrix(m).clone() for n, m in self.layers.items()}
        self._swap_in()
        try:
            effective = {n: weight_matrix(m).clone() for n, m in self.layers.items()}
        finally:
            self._swap_out()
        shared = {n: [o for o in names if o != n] for names in self.groups for n in names}
        rows = []
        for name, module in self.layers.items():
            H = hessians[name].to(self.device)
            W, W_eff = dense[name].to(self.device), effective[name].to(self.device)
            row = {
                "layer": name,
                "type": "depthwise conv" if is_depthwise(module) else type(module).__name__,
                "shape": tuple(module.weight.shape),
                "target_sparsity": self.sparsity[name],
                "achieved_sparsity": float((effective[name] == 0).float().mean()),
                "rel_error": layer_relative_error(W, W_eff, H),
                "seconds": seconds[name],
            }
            if any(shared.values()):
                row["shared_with"] = ", ".join(shared[name])
            rows.append(row)
        return sparse, pd.DataFrame(rows)

    # ---- swapping weights
    def _swap_in(self) -> None:
        self._dense = {name: m.weight.detach().clone() for name, m in self.layers.items()}
        try:
            for name, m in self.layers.items():
                set_weight_matrix(m, self.sparse_weights[name])
        except BaseException:
            self._swap_out()
            raise

    def _swap_out(self) -> None:
        if self._dense is None:
            return
        with torch.no_grad():
            for name, m in reversed(list(self.layers.items())):  # shared weights: the first copy wins
                m.weight.copy_(self._dense[name])
        self._dense = None

    def apply(self) -> None:
        """Put the sparse weights into the model (keeping a copy of the dense ones).

        Raises RuntimeError if this trace is already applied, or if any of its layers carries another
        trace's sparse weights now (restoring in the wrong order would leave sparse weights behind)."""
        if self._dense is not None:
            raise RuntimeError("this trace is already applied")
        busy = [n for n, m in self.layers.items() if m in _APPLIED]
        if busy:
            raise RuntimeError(f"layers {busy} carry the sparse weights of another trace; leave its `with` block "
                               "before applying this one")
        self._swap_in()
        for m in self.layers.values():
            _APPLIED[m] = self

    def restore(self) -> None:
        """Put the dense weights back, bit for bit."""
        if self._dense is None:
            return
        self._swap_out()
        for m in self.layers.values():
            if _APPLIED.get(m) is self:
                del _APPLIED[m]

    def __enter__(self) -> SpadeTrace:
        self.apply()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def __repr__(self) -> str:
        return f"SpadeTrace({len(self.layers)} layers, solver={self.solver!r}, applied={self._dense is not None})"


_PARAMS_DOC = """
    Parameters
    ----------
    model : nn.Module
        The trained network, in any dtype (fp32, fp64, fp16, bf16) and on any device. It may be wrapped by
        ``torch.compile`` or ``nn.DataParallel``/DDP; layer names then work with or without the wrapper's
        ``_orig_mod.`` / ``module.`` prefix. It is never moved: with another ``device`` the work runs on a
        deep copy. Its weights, per-module train/eval flags, dtype, device and hooks are left as found.
    sample
        The input to explain. With the default augmentation an image: PIL image of any mode, HxW(xC) array,
        or an un-normalised (3, H, W) / (1, 3, H, W) tensor with values in [0, 1]. With a custom ``augment``
        anything that callable accepts.
    layers : str | sequence of str | callable
        Exact module names, globs (``"layer4*"``) or a predicate ``f(name, module) -> bool``. Only
        ``nn.Linear`` and ``nn.Conv2d`` are pruned; a glob or predicate skips other kinds (Conv1d, Conv3d,
        ConvTranspose*, Bilinear, layers inside ``nn.MultiheadAttention``) with a warning and lists them in
        ``trace.skipped``; naming one exactly raises TypeError.
    sparsity : float | mapping str -> float
        Target fraction of zero weights in [0, 1), for every layer or per module-path prefix (whole path
        components; the longest matching prefix wins; ``""`` covers everything).
    n_augment : int, default 128
        Number of augmented views the statistics are recorded on (the paper uses 1024).
    augment : callable (sample, n, generator) -> tensor, optional
        Custom view maker; it must draw its randomness from the generator. Default:
        :class:`~spade_utils.augment.ImageAugmenter` (random resized crop with scale 0.2-1, flip, brightness
        and hue jitter, then normalisation) at ``input_size`` with ``mean``/``std``.
    input_size : int, optional
        Side S of the square views in pixels; the views are (n, 3, S, S).
    mean, std : sequence of 1 or 3 floats, optional
        Per-channel normalisation of the views, in [0, 1] pixel units (ImageNet: ``IMAGENET_MEAN``,
        ``IMAGENET_STD`` from :mod:`spade_utils.inputs`). ``input_size``, ``mean`` and ``std`` default to what
        the model states (``model.spade_input_spec``, set by :func:`spade_utils.models.load_model`; timm's
        pretrained config; torchvision ViT's ``image_size``); when neither states them the call raises
        ValueError saying which to pass. They cannot be combined with a custom ``augment``.
    solver : {"sparsegpt", "obc", "magnitude"}, default "sparsegpt"
        Layer-wise solver (:func:`spade_utils.solvers.solve`).
    batch_size : int, default 64
        Views per forward pass.
    device : str | torch.device, default "auto"
        Where statistics and solves run; ``"auto"`` is CUDA when available, else CPU.
    seed : int, default 0
        Seed of the augmentation's generator (an int in [0, 2**63); floats are refused). The global RNGs
        are not touched.
    progress : bool, default True
        Show tqdm progress bars.
    skip_depthwise : bool, default False
        Leave depthwise convolutions out of globs and predicates.
    dtype : torch.float32 | torch.float64, default torch.float32
        Accumulation dtype of the statistics H (the views follow the model's dtype).
    channels_last : bool, default True
        Feed the views channels-last (faster convolutions on CPU). A model that fails on channels-last
        input (e.g. ``.view`` on activations) is detected on the probe batch and fed contiguous views
        instead; ``trace.channels_last`` records which was used.
    solver_options : mapping, optional
        Extra keyword arguments of the solver (e.g. ``percdamp``, ``blocksize``).

    Raises
    ------
    TypeError, ValueError
        Bad arguments, an input size or normalisation that is neither given nor stated by the model, layers
        that cannot be pruned correctly (parametrized or hook-computed weights, attention projections,
        weights shared with layers not chosen), all before any forward pass; on the two-view probe batch
        (before the statistics pass): a model that rejects the views (the message says what the views were
        and which argument to change), a chosen layer that never runs, or a layer whose output is not
        ``F.linear``/``F.conv2d`` of its input with ``module.weight``.
    RuntimeError
        The model cannot be copied to ``device``; a chosen layer carries another trace's weights now.

    Method
    ------
    SPADE (Moakhar, Iofinova, Frantar, Alistarh, ICML 2024, arXiv 2310.04519, §3): the augmented views of
    one sample form the calibration set; for each layer with weight W (rows x d) and input columns X
    (d x N: one column per input vector; for a convolution one unfolded receptive field after the layer's
    own padding) the statistics are H = 2 X X^T / N, and W' = argmin ||W X - W' X||^2 at the target
    sparsity, solved by SparseGPT (Frantar & Alistarh, ICML 2023, arXiv 2301.00774) or exact OBC
    (Frantar, Singh & Alistarh, NeurIPS 2022, arXiv 2208.11580), or by magnitude.
"""


def spade_trace(
    model: nn.Module,
    sample,
    *,
    layers: LayerSelection,
    sparsity: float | Mapping[str, float],
    n_augment: int = 128,
    augment: Augment | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    solver: str = "sparsegpt",
    batch_size: int = 64,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
    skip_depthwise: bool = False,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    solver_options: Mapping | None = None,
) -> SpadeTrace:
    return SpadeTrace(
        model, sample, layers=layers, sparsity=sparsity, n_augment=n_augment, augment=augment,
        input_size=input_size, mean=mean, std=std, solver=solver, batch_size=batch_size, device=device,
        seed=seed, progress=progress, skip_depthwise=skip_depthwise, dtype=dtype, channels_last=channels_last,
        solver_options=solver_options,
    )


spade_trace.__doc__ = (
    """Build the SPADE trace of ``model`` on ``sample``: a :class:`SpadeTrace`, used as a context manager.

    >>> trace = spade_trace(model, image, layers=["layer4*", "fc"], sparsity=0.95, n_augment=256)
    >>> with trace:                  # the chosen layers carry the sample's sparse weights here
    ...     logits = model(x)
    >>> trace.records                # per layer: achieved sparsity, relative output error, seconds

    Returns
    -------
    SpadeTrace
        See its docstring for the attributes (``records``, ``sparse_weights``, ``skipped``, ...).
"""
    + _PARAMS_DOC
)


def spade_pruned_copy(
    model: nn.Module,
    sample,
    *,
    layers: LayerSelection,
    sparsity: float | Mapping[str, float],
    n_augment: int = 128,
    augment: Augment | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    solver: str = "sparsegpt",
    batch_size: int = 64,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool = True,
    skip_depthwise: bool = False,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    solver_options: Mapping | None = None,
) -> nn.Module:
    trace = SpadeTrace(
        model, sample, layers=layers, sparsity=sparsity, n_augment=n_augment, augment=augment,
        input_size=input_size, mean=mean, std=std, solver=solver, batch_size=batch_size, device=device,
        seed=seed, progress=progress, skip_depthwise=skip_depthwise, dtype=dtype, channels_last=channels_last,
        solver_options=solver_options,
    )
    pruned = copy.deepcopy(model)
    named = dict(unwrap_model(pruned)[0].named_modules())
    for name, weight in trace.sparse_weights.items():
        set_weight_matrix(named[name], weight)
    pruned.spade_records = trace.records
    return pruned


spade_pruned_copy.__doc__ = (
    """A deep copy of ``model`` carrying the SPADE-pruned weights for ``sample``; the original is left dense.

    Same parameters as :func:`spade_trace`. The copy has the model's device, dtype and train/eval flags,
    and carries the per-layer records as ``copy.spade_records`` (DataFrame, see :class:`SpadeTrace`).

    Returns
    -------
    nn.Module
        The pruned copy (the same wrapper type as ``model``).
"""
    + _PARAMS_DOC
)
