"""Which layers a trace prunes: names, globs and predicates -> modules; sparsity per layer; shared weights.

Everything here reads the model's structure only (no forward pass, no weight change):

- :func:`unwrap_model` finds the user's module inside ``torch.compile`` / DataParallel / DDP wrappers;
- :func:`select_layers` resolves a selection (names, globs, a predicate) to the prunable
  ``nn.Linear``/``nn.Conv2d`` modules, skipping (with a warning) kinds the engine cannot prune;
- :func:`choose_layers` does the same and also refuses layers whose weight in effect is not the
  parameter ``module.weight`` (parametrized, hook-computed, lazy or integer weights);
- :func:`resolve_sparsity` turns a float or a prefix mapping into one target per layer;
- :func:`shared_weight_groups` groups chosen layers that use one weight tensor (solved once, on pooled
  statistics) and refuses a weight shared with anything that is not chosen.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from .hessian import PRUNABLE, is_depthwise
from .validation import check_sparsity

LayerSelection = str | Sequence[str] | Callable[[str, nn.Module], bool]

_WRAPPERS = ("DataParallel", "DistributedDataParallel")


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
            inner = cast(nn.Module, model.module)
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
            name = name[len(p) :]
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
                    raise TypeError(
                        f"layers: {raw!r} is a {reason}; the engine prunes Linear and Conv2d layers"
                    )
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


def _warn_skipped(skipped: Mapping[str, str], stacklevel: int = 3) -> None:
    if skipped:
        listed = "; ".join(f"{n}: {r}" for n, r in skipped.items())
        warnings.warn(
            f"layers: skipped {len(skipped)} module(s) the engine cannot prune: {listed}",
            stacklevel=stacklevel,
        )


def select_layers(
    model: nn.Module, layers: LayerSelection, *, skip_depthwise: bool = False
) -> dict[str, nn.Module]:
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


@dataclass(frozen=True)
class LayerChoice:
    """The result of :func:`choose_layers`.

    ``inner``: the model inside its wrappers; ``prefixes``: the name prefixes the wrappers add;
    ``layers``: chosen name (inside the wrappers) -> module, in model order; ``skipped``: name -> why a
    module the selection matched cannot be pruned."""

    inner: nn.Module
    prefixes: tuple[str, ...]
    layers: dict[str, nn.Module]
    skipped: dict[str, str]


def choose_layers(
    model: nn.Module, layers: LayerSelection, *, skip_depthwise: bool = False, stacklevel: int = 3
) -> LayerChoice:
    """:func:`select_layers`, then refuse layers whose weight in effect is not the parameter ``module.weight``.

    What the engine prunes is ``module.weight``; a parametrized weight (``weight_norm``, ``spectral_norm``
    parametrizations), a weight computed in a forward pre-hook (old-style ``weight_norm``, ``prune``), a
    lazy layer that has not run and an integer weight are refused with a TypeError naming the layer,
    since pruning ``module.weight`` would not prune what the layer computes. Skipped modules are warned
    about (``UserWarning``, ``stacklevel`` as in :func:`warnings.warn`) and listed in the result.
    """
    inner, prefixes = unwrap_model(model)
    chosen, skipped = _select(inner, layers, skip_depthwise, prefixes)
    _warn_skipped(skipped, stacklevel=stacklevel + 1)
    for name, module in chosen.items():
        _check_plain_weight(name, module)
    return LayerChoice(inner, prefixes, chosen, skipped)


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
    first = int(t.storage_offset())
    return t.untyped_storage().data_ptr(), first, first + int(last) + 1


def shared_weight_groups(model: nn.Module, chosen: Mapping[str, nn.Module]) -> list[list[str]]:
    """The chosen layers grouped by the weight tensor they use, in the order of ``chosen``.

    ``model`` is the module that owns the chosen layers (inside any wrapper); ``chosen`` maps names to
    its modules. Layers whose weights are the same view of one storage (tied weights) form one group,
    solved once on their pooled statistics; every other layer is a group of one.

    Raises ValueError when a chosen weight overlaps memory with any other parameter (of a layer that is
    not chosen, another parameter name, or a different view), or when layers sharing a weight are of
    different kinds: pruning it would silently change that other tensor too.
    """
    holders: dict[int, list[tuple[str, str, nn.Module, torch.Tensor]]] = {}
    for mname, m in model.named_modules(remove_duplicate=False):
        for pname, p in m._parameters.items():
            if p is not None:
                holders.setdefault(_extent(p)[0], []).append((mname, pname, m, p))
    chosen_ids = {id(m) for m in chosen.values()}
    groups: dict[tuple, list[str]] = {}
    for name, module in chosen.items():
        w = cast(torch.Tensor, module.weight)
        ptr, lo, hi = _extent(w)
        for mname, pname, m, p in holders.get(ptr, []):
            if m is module and pname == "weight":
                continue
            _, plo, phi = _extent(p)
            if plo >= hi or phi <= lo:
                continue  # a different part of the same storage
            same_view = (
                pname == "weight"
                and id(m) in chosen_ids
                and (plo, tuple(p.shape), p.stride()) == (lo, tuple(w.shape), w.stride())
            )
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
                raise ValueError(
                    f"layers: {names[0]!r} and {n!r} share a weight but are different kinds of layer"
                )
    return [names for names in groups.values()]
