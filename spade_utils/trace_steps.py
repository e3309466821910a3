"""The steps of a SPADE trace, each usable on its own: views -> probe -> statistics -> solve -> swap.

:class:`~spade_utils.spade.SpadeTrace` is these steps in a row; the solver studies of notebook 02
(:mod:`spade_utils.layer_study`) call the same functions to reuse one recording for many solves.
There is one implementation of each:

- :func:`resolve_augment`: the view maker (the default image augmentation at the input size and
  normalisation the model states, or the caller's), and :func:`make_views`: ``augment(sample, n,
  generator)`` -> a batch in the model's device and dtype;
- :func:`record_statistics`: first the probe (:func:`spade_utils.layer_probe.probe_layers`: the model
  accepts the views, every chosen layer computes ``F.linear``/``F.conv2d`` of its input with
  ``module.weight``, and the padding each convolution applies in ``forward``), then seeded augmented
  views of one sample -> per-layer statistics ``H = 2 X X^T / N``
  (:class:`~spade_utils.hessian.HessianRecorder`), with snapshots after the first N views for every N;
- :func:`solve_layers`: per-layer sparse weights at the target sparsities (each shared weight once, on
  pooled statistics) and one record per layer, measured on the weight in effect in the module;
- :func:`swapped_weights`: the sparse weights in the modules inside a ``with`` block, dense ones back
  bit for bit after it.

Method: SPADE (Moakhar, Iofinova, Frantar, Alistarh, ICML 2024, arXiv 2310.04519, §3); the layer-wise
problem ``min ||W X - W' X||^2`` is solved by :func:`spade_utils.solvers.solve`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import pandas as pd
import torch
from torch import nn

from .augment import ImageAugmenter, image_tensor
from .hessian import (
    PRUNABLE,
    HessianRecorder,
    is_depthwise,
    set_weight_matrix,
    weight_matrix,
)
from .inputs import InputSpec, resolve_input_spec
from .layer_probe import PROBE_VIEWS, ProbeResult, probe_layers
from .layer_select import resolve_sparsity, shared_weight_groups, unwrap_model
from .runtime import eval_mode, flush_denormals, model_device, model_dtype
from .solvers import SOLVERS, layer_relative_error, solve
from .validation import check_positive_int, check_seed
from .widgets import progress_bar as tqdm

Augment = Callable[[object, int, torch.Generator], torch.Tensor]


# --------------------------------------------------------------------------------------------
# views
# --------------------------------------------------------------------------------------------
def _as_model_input(views, device: torch.device, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    if not isinstance(views, torch.Tensor):
        raise TypeError(f"augment must return a tensor batch, got {type(views).__name__}")
    views = views.to(device)
    if views.is_floating_point():
        views = views.to(dtype)
    if channels_last and views.dim() == 4:
        views = views.contiguous(memory_format=torch.channels_last)
    return views


def make_views(
    model: nn.Module,
    augment: Augment,
    sample,
    n: int,
    generator: torch.Generator,
    *,
    channels_last: bool = False,
) -> torch.Tensor:
    """``augment(sample, n, generator)`` moved to the model's device, floating views cast to its dtype.

    With ``channels_last`` a 4-d batch (n, C, H, W) is laid out channels-last (same values). Raises
    TypeError if ``augment`` does not return a tensor."""
    return _as_model_input(
        augment(sample, n, generator), model_device(model), model_dtype(model), channels_last
    )


def resolve_augment(
    model: nn.Module,
    sample,
    augment: Augment | None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    device: str | torch.device | None = None,
    fn_name: str = "resolve_augment",
    sample_name: str = "sample",
) -> tuple[Augment, InputSpec | None, object]:
    """(the view maker, the input spec of the default augmentation or None for a custom one, the sample).

    With ``augment=None`` the views come from :class:`~spade_utils.augment.ImageAugmenter` in the model's
    dtype on ``device`` (default: the model's), at the input size and normalisation
    :func:`~spade_utils.inputs.resolve_input_spec` finds (``input_size``/``mean``/``std`` first, then what
    the model states; ValueError naming them when unknown), and ``sample`` must be an image (returned as a
    (3, H, W) tensor in [0, 1]; TypeError/ValueError naming ``sample_name`` otherwise). With a custom
    ``augment`` (a callable ``(sample, n, generator) -> tensor``) ``input_size``/``mean``/``std`` are
    refused (ValueError): they would be ignored.
    """
    if augment is None:
        spec = resolve_input_spec(model, size=input_size, mean=mean, std=std, fn_name=fn_name)
        sample = image_tensor(sample, argname=sample_name)  # raises on anything that is not an image
        size, dtype = cast(int, spec.size), model_dtype(model)
        dev = model_device(model) if device is None else device
        return ImageAugmenter(size, mean=spec.mean, std=spec.std, dtype=dtype, device=dev), spec, sample
    if not callable(augment):
        raise TypeError("augment must be a callable (sample, n, generator) -> batch")
    given = [n for n, v in (("input_size", input_size), ("mean", mean), ("std", std)) if v is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} set the default augmentation; with a custom augment they "
            "would be ignored: build the size and normalisation into augment instead"
        )
    return augment, None, sample


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LayerStatistics(Mapping):
    """Per-layer statistics after ``n_views`` augmented views; reads as a mapping name -> H.

    ``hessians``: name -> ``H = 2 X X^T / N``, (d, d), or (groups, d, d) for a grouped convolution, with N
    = ``counts[name]`` input vectors (rows of a Linear's input, receptive fields of a convolution);
    ``seconds``: cumulative ``{"augment": ..., "statistics": ...}`` (making views; moving them and the
    forward passes with the recording hooks); ``pre_pad`` and ``channels_last``: what the probe found and
    the recording used (see :class:`ProbeResult`)."""

    hessians: dict[str, torch.Tensor]
    counts: dict[str, int]
    n_views: int
    seconds: dict[str, float]
    pre_pad: dict[str, str]
    channels_last: bool

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.hessians[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.hessians)

    def __len__(self) -> int:
        return len(self.hessians)


def check_checkpoints(checkpoints: int | Sequence[int], batch_size: int) -> list[int]:
    """Numbers of views to snapshot after, sorted: ints >= 1, all but the largest multiples of ``batch_size``.

    Raises TypeError/ValueError naming ``checkpoints`` otherwise."""
    raw = [checkpoints] if not isinstance(checkpoints, Sequence) else list(checkpoints)
    ns = sorted({check_positive_int(c, "checkpoints") for c in raw})
    if not ns:
        raise ValueError("checkpoints must name at least one number of views")
    bad = [n for n in ns[:-1] if n % batch_size]
    if bad:
        raise ValueError(
            f"checkpoints {bad} are not multiples of batch_size={batch_size}: a snapshot is taken "
            "between batches"
        )
    return ns


def _check_layers_of(model: nn.Module, layers: Mapping[str, nn.Module]) -> None:
    if not isinstance(layers, Mapping) or not layers:
        raise ValueError("layers must be a non-empty mapping name -> module")
    for name, m in layers.items():
        if not isinstance(m, PRUNABLE):
            raise TypeError(f"layer {name!r} is a {type(m).__name__}; supported: Linear, Conv2d")
    own = {id(m) for m in model.modules()}
    strangers = [n for n, m in layers.items() if id(m) not in own]
    if strangers:
        raise ValueError(f"layers {strangers} are not modules of the model")


def record_statistics(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    sample,
    augment: Augment,
    checkpoints: int | Sequence[int],
    *,
    batch_size: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    progress: bool = True,
    input_spec: InputSpec | None = None,
    fn_name: str = "record_statistics",
) -> dict[int, LayerStatistics]:
    """Layer-input statistics of ``layers`` on augmented views of ``sample``, after N views for every N.

    First :func:`probe_layers` runs :data:`PROBE_VIEWS` views (from a generator of its own, so the
    statistics' views do not depend on it): the model must accept the views, each layer must compute
    ``F.linear``/``F.conv2d`` of its input with ``module.weight``, and it fixes the padding each conv
    applies in ``forward`` (``pre_pad``) and whether channels-last input works. Then the views are drawn
    batch by batch (``batch_size`` views per forward pass, the last batch smaller) from
    ``augment(sample, m, generator)``, ``generator = torch.Generator().manual_seed(seed)``, moved to the
    model's device and dtype, and passed through ``model`` in eval mode without gradients, with
    flush-denormal on; a forward hook on each layer adds ``sum x x^T`` over its input vectors x (rows of
    a Linear's input; for a conv, receptive fields after its padding, with stride and dilation, one
    block per group) in ``dtype`` (float32 or float64): :class:`~spade_utils.hessian.HessianRecorder`.
    The snapshot after the first N views is exactly what a run of N views records, so every checkpoint
    but the largest must be a multiple of ``batch_size``.

    Parameters
    ----------
    model : nn.Module, any dtype and device (the views follow it).
    layers : mapping name -> ``nn.Linear``/``nn.Conv2d`` module of ``model`` (e.g. from
        :func:`~spade_utils.layer_select.choose_layers`).
    sample, augment : ``augment(sample, n, generator) -> tensor`` makes n views (e.g.
        :class:`~spade_utils.augment.ImageAugmenter`); it must draw its randomness from the generator.
    checkpoints : int or ints >= 1, numbers of views after which a snapshot is kept.
    batch_size : int >= 1, default 64. seed : int in [0, 2**63), default 0.
    channels_last : bool, default True: feed channels-last views (faster CPU convolutions) unless the
        model fails on them in the probe. progress : bool, default True: a tqdm bar.
    input_spec, fn_name : only for the message when the model rejects the views.

    Returns ``{N: LayerStatistics}`` for every checkpoint. Raises TypeError/ValueError on bad arguments
    (before any forward pass), ValueError from the probe (see :func:`probe_layers`), RuntimeError if a
    layer never ran. The model's flags, weights, hooks and the global flush-denormal flag are left as found.

    Source: SPADE (arXiv 2310.04519, §3): a trace's calibration set is the augmented views of one sample;
    H = 2 X X^T / N as in OBC/SparseGPT (arXiv 2208.11580, 2301.00774).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_layers_of(model, layers)
    if not callable(augment):
        raise TypeError("augment must be a callable (sample, n, generator) -> batch")
    batch_size = check_positive_int(batch_size, "batch_size")
    ns = check_checkpoints(checkpoints, batch_size)
    seed = check_seed(seed)
    for flag, value in (("channels_last", channels_last), ("progress", progress)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be a bool, got {type(value).__name__}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"dtype (the statistics' accumulation dtype) must be torch.float32 or torch.float64, got {dtype}"
        )
    views = make_views(model, augment, sample, PROBE_VIEWS, torch.Generator().manual_seed(seed))
    probe = probe_layers(
        model, layers, views, channels_last=channels_last, input_spec=input_spec, fn_name=fn_name
    )
    recorder = HessianRecorder(dict(layers), dtype=dtype, pre_pad=probe.pre_pad)
    return _record(model, recorder, sample, augment, ns, batch_size, seed, probe, progress)


def _record(
    model, recorder, sample, augment, ns, batch_size, seed, probe, progress
) -> dict[int, LayerStatistics]:
    """The statistics pass of :func:`record_statistics` (arguments checked, probe done)."""
    gen = torch.Generator().manual_seed(seed)
    device, view_dtype = model_device(model), model_dtype(model)
    seconds = {"augment": 0.0, "statistics": 0.0}
    snapshots: dict[int, LayerStatistics] = {}
    with flush_denormals(), eval_mode(model), torch.no_grad(), recorder as rec:
        bar = tqdm(total=ns[-1], desc="SPADE statistics", unit="img", disable=not progress, leave=False)
        done = 0
        while done < ns[-1]:
            m = min(batch_size, ns[-1] - done)
            t0 = time.perf_counter()
            views = augment(sample, m, gen)
            seconds["augment"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            model(_as_model_input(views, device, view_dtype, probe.channels_last))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds["statistics"] += time.perf_counter() - t0
            done += m
            bar.update(m)
            if done in ns:
                snapshots[done] = _snapshot(rec, done, seconds, probe)
        bar.close()
    return snapshots


def _snapshot(
    rec: HessianRecorder, n_views: int, seconds: Mapping[str, float], probe: ProbeResult
) -> LayerStatistics:
    missing = [name for name in rec.layers if name not in rec.sums]
    if missing:
        raise RuntimeError(f"layers {missing} never ran in the forward pass; they cannot be pruned")
    hessians = rec.hessians()  # in the order of the layers given (not the order they ran)
    return LayerStatistics(
        {n: hessians[n] for n in rec.layers},
        dict(rec.counts),
        n_views,
        dict(seconds),
        dict(probe.pre_pad),
        probe.channels_last,
    )


# --------------------------------------------------------------------------------------------
# solving and measuring
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def swapped_weights(layers: Mapping[str, nn.Module], sparse: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block each module ``layers[name]`` carries ``sparse[name]`` (reshaped to its weight,
    cast to its dtype); the dense weights come back bit for bit after it, also after an exception.

    Raises ValueError if ``sparse`` names a layer ``layers`` lacks."""
    missing = [n for n in sparse if n not in layers]
    if missing:
        raise ValueError(f"sparse names layers that are not given: {missing}")
    dense = {n: cast(torch.Tensor, layers[n].weight).detach().clone() for n in sparse}
    try:
        for n, w in sparse.items():
            set_weight_matrix(layers[n], w)
        yield
    finally:
        with torch.no_grad():
            for n in reversed(list(dense)):  # shared weights: every copy is the dense weight
                cast(torch.Tensor, layers[n].weight).copy_(dense[n])


def solve_layers(
    model: nn.Module,
    statistics: Mapping[str, torch.Tensor],
    sparsity: float | Mapping[str, float],
    *,
    solver: str = "sparsegpt",
    solver_options: Mapping | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """Sparse weights for the layers ``statistics`` names, and one record per layer.

    ``statistics`` maps layer names (inside any torch.compile/DataParallel wrapper of ``model``) to
    ``H = 2 X X^T / N`` ((d, d), or (groups, d, d) for a grouped conv): a :class:`LayerStatistics` from
    :func:`record_statistics`, or any such mapping. ``sparsity``: a fraction of zeros in [0, 1) for every
    layer, or a mapping module-path prefix -> fraction (:func:`~spade_utils.layer_select.resolve_sparsity`).
    Each layer's ``W' = argmin ||W X - W' X||^2`` at its target is found by ``solver`` (one of
    ``SOLVERS``; ``solver_options`` are its keyword options, :func:`spade_utils.solvers.solve`) on
    ``device`` (default: where each H is). Layers sharing one weight are solved once, on their statistics
    pooled by count (this needs a :class:`LayerStatistics`), at one target.

    Returns (name -> sparse weight with the module's weight shape, dtype and device; a DataFrame with one
    row per layer: ``layer``, ``type``, ``shape``, ``target_sparsity``, ``achieved_sparsity`` (zeros of the
    weight read back through the module with the sparse weights in place), ``rel_error``
    (:func:`~spade_utils.solvers.layer_relative_error`: ``||W X - W' X||^2 / ||W X||^2``, groups summed, of
    that weight), ``seconds`` (solve time; a shared weight's time is split among its layers); plus
    ``shared_with`` when layers share a weight). The model's weights are left as found.

    Raises ValueError/TypeError (unknown layer names, a solver not in ``SOLVERS``, bad sparsities, a weight
    shared with a layer that is not in ``statistics``) before any solve.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver_options is not None and not isinstance(solver_options, Mapping):
        raise TypeError(f"solver_options must be a mapping or None, got {type(solver_options).__name__}")
    inner, prefixes = unwrap_model(model)
    named = dict(inner.named_modules())
    missing = [n for n in statistics if n not in named or not isinstance(named[n], PRUNABLE)]
    if missing or not statistics:
        raise ValueError(f"statistics must name Linear/Conv2d layers of the model; not found: {missing}")
    layers = {n: named[n] for n in statistics}
    groups = shared_weight_groups(inner, layers)
    targets = resolve_sparsity(sparsity, list(layers), prefixes)
    for names in groups:
        if len({targets[n] for n in names}) > 1:
            raise ValueError(f"sparsity: layers {names} share one weight but were given different sparsities")
    counts = statistics.counts if isinstance(statistics, LayerStatistics) else None
    if counts is None and any(len(names) > 1 for names in groups):
        raise ValueError(
            "layers that share a weight are solved on pooled statistics: pass the LayerStatistics "
            "from record_statistics (it holds the counts)"
        )
    dev = None if device is None else torch.device(device)
    with flush_denormals():
        sparse, seconds = _solve_groups(
            layers, statistics, counts, groups, targets, solver, dict(solver_options or {}), dev, progress
        )
        records = _records(layers, sparse, statistics, targets, seconds, groups, dev)
    return sparse, records


def _solve_groups(layers, hessians, counts, groups, targets, solver, options, device, progress):
    """Solve each group of layers sharing a weight once; (name -> sparse weight, name -> seconds)."""
    sparse: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    for names in tqdm(groups, desc=f"SPADE {solver}", disable=not progress, leave=False):
        module = layers[names[0]]
        dev = hessians[names[0]].device if device is None else device
        t0 = time.perf_counter()
        if counts is None:  # one layer per group (checked by the caller)
            H = hessians[names[0]].to(dev)
        else:
            total = sum(counts[n] for n in names)
            H = sum(hessians[n].to(dev) * (counts[n] / total) for n in names)
        W = weight_matrix(module).to(dev, H.dtype)
        W_sparse, _ = solve(W, H, targets[names[0]], method=solver, **options)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        w_new = W_sparse.reshape(module.weight.shape).to(module.weight.device, module.weight.dtype)
        for n in names:
            sparse[n] = w_new
            seconds[n] = (time.perf_counter() - t0) / len(names)
    return sparse, seconds


def _records(layers, sparse, hessians, targets, seconds, groups, device) -> pd.DataFrame:
    """One row per layer, measured on the weight in effect: read back through the module with ``sparse`` in."""
    dense = {n: weight_matrix(m).clone() for n, m in layers.items()}
    with swapped_weights(layers, sparse):
        effective = {n: weight_matrix(m).clone() for n, m in layers.items()}
    shared = {n: [o for o in names if o != n] for names in groups for n in names}
    rows = []
    for name, module in layers.items():
        H = hessians[name]
        H = H.to(H.device if device is None else device)
        W, W_eff = dense[name].to(H.device), effective[name].to(H.device)
        row = {
            "layer": name,
            "type": "depthwise conv" if is_depthwise(module) else type(module).__name__,
            "shape": tuple(module.weight.shape),
            "target_sparsity": targets[name],
            "achieved_sparsity": float((effective[name] == 0).float().mean()),
            "rel_error": layer_relative_error(W, W_eff, H),
            "seconds": seconds[name],
        }
        if any(shared.values()):
            row["shared_with"] = ", ".join(shared[name])
        rows.append(row)
    return pd.DataFrame(rows)
