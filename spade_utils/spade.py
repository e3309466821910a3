"""The SPADE trace: one sample -> a network whose chosen layers are pruned for that sample.

>>> trace = spade_trace(model, image, layers=["layer4*", "fc"], sparsity=0.95, n_augment=256)
>>> with trace:                       # the sparse weights are in the model here
...     logits = model(x)
>>> trace.records                     # per layer: sparsity, reconstruction error, seconds
>>> pruned = spade_pruned_copy(model, image, layers="layer4*", sparsity=0.95)

Building the trace (augment -> record layer-input statistics -> solve each layer) happens when
``spade_trace`` is called; the model's dense weights are untouched until the ``with`` block,
and are restored bit-for-bit when it ends, also after an exception.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import time
from collections.abc import Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .augment import ImageAugmenter, image_tensor
from .hessian import PRUNABLE, HessianRecorder, is_depthwise, set_weight_matrix, weight_matrix
from .models import resolve_device
from .solvers import SOLVERS, relative_error, solve

LayerSelection = str | Sequence[str] | Callable[[str, nn.Module], bool]
Augment = Callable[[object, int, torch.Generator], torch.Tensor]


# --------------------------------------------------------------------------------------------
# choosing layers and sparsities
# --------------------------------------------------------------------------------------------
def select_layers(model: nn.Module, layers: LayerSelection, *, skip_depthwise: bool = False) -> dict[str, nn.Module]:
    """Resolve names, globs (``"layer4.*"``) or a predicate ``f(name, module)`` to prunable modules.

    A layer named exactly is always taken (a depthwise conv too); globs and predicates pick only
    Linear/Conv2d modules and skip depthwise convs when ``skip_depthwise`` is set.
    """
    named = dict(model.named_modules())
    prunable = {n: m for n, m in named.items() if isinstance(m, PRUNABLE) and n}
    chosen: dict[str, nn.Module] = {}

    def keep(name: str, module: nn.Module) -> bool:
        return not (skip_depthwise and is_depthwise(module))

    if callable(layers) and not isinstance(layers, str):
        chosen = {n: m for n, m in prunable.items() if layers(n, m) and keep(n, m)}
    else:
        patterns = [layers] if isinstance(layers, str) else layers
        if not isinstance(patterns, Sequence) or not all(isinstance(p, str) for p in patterns):
            raise TypeError("layers must be a name, a glob, a list of them, or a predicate f(name, module)")
        for pattern in patterns:
            if pattern in named:
                module = named[pattern]
                if isinstance(module, PRUNABLE):
                    chosen[pattern] = module
                    continue
                prefix = pattern + "." if pattern else ""
                inside = {n: m for n, m in prunable.items() if n.startswith(prefix) and keep(n, m)}
                if not inside:
                    raise TypeError(
                        f"layer {pattern!r} is a {type(module).__name__} with no Linear/Conv2d inside; "
                        "the engine prunes Linear and Conv2d layers"
                    )
                chosen.update(inside)
                continue
            hits = {n: m for n, m in prunable.items() if fnmatch.fnmatchcase(n, pattern) and keep(n, m)}
            if not hits:
                raise ValueError(f"layers: {pattern!r} matches no prunable layer of the model")
            chosen.update(hits)
    if not chosen:
        raise ValueError("layers: the selection is empty")
    order = list(named)
    return dict(sorted(chosen.items(), key=lambda kv: order.index(kv[0])))


def resolve_sparsity(sparsity: float | Mapping[str, float], names: Sequence[str]) -> dict[str, float]:
    """A float for every layer, or a mapping name-prefix -> sparsity (the longest matching prefix wins)."""

    def check(value, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{what} must be a float in [0, 1), got {type(value).__name__}")
        if not 0.0 <= float(value) < 1.0:
            raise ValueError(f"{what} must be in [0, 1), got {value}")
        return float(value)

    if isinstance(sparsity, Mapping):
        rules = {str(k): check(v, f"sparsity[{k!r}]") for k, v in sparsity.items()}
        out = {}
        for name in names:
            matches = [p for p in rules if name == p or name.startswith(p)]
            if not matches:
                raise ValueError(f"sparsity: no prefix in {list(rules)} covers layer {name!r}")
            out[name] = rules[max(matches, key=len)]
        return out
    value = check(sparsity, "sparsity")
    return {name: value for name in names}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def flush_denormals():
    """Treat denormal floats as zero inside the block (rank-deficient statistics make them common
    and they slow CPU arithmetic ~10x); the flag is process-global, so it is reset afterwards."""
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported:
            torch.set_flush_denormal(False)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------
# the trace
# --------------------------------------------------------------------------------------------
class SpadeTrace:
    """Sparse weights computed for one sample; a context manager that swaps them into the model.

    Attributes: ``layers`` (name -> module), ``sparse_weights`` (name -> tensor, weight shape),
    ``records`` (DataFrame per layer), ``timings`` (seconds per stage: augment, statistics, solve).
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
        if isinstance(n_augment, bool) or not isinstance(n_augment, int):
            raise TypeError(f"n_augment must be an int, got {type(n_augment).__name__}")
        if n_augment < 1:
            raise ValueError(f"n_augment must be >= 1, got {n_augment}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if augment is not None and not callable(augment):
            raise TypeError("augment must be a callable (sample, n, generator) -> batch")
        self.model = model
        self.layers = select_layers(model, layers, skip_depthwise=skip_depthwise)
        self.sparsity = resolve_sparsity(sparsity, list(self.layers))
        self.solver = solver
        self.device = resolve_device(device)
        if augment is None:
            sample = image_tensor(sample, argname="sample")  # raises on anything that is not an image
            augment = ImageAugmenter(device=self.device)
        self._dense: dict[str, torch.Tensor] | None = None
        self.timings = {"augment": 0.0, "statistics": 0.0, "solve": 0.0}
        with flush_denormals():
            hessians = self._statistics(sample, augment, n_augment, batch_size, seed, dtype, channels_last, progress)
            self.sparse_weights, self.records = self._solve(hessians, dict(solver_options or {}), progress)

    # ---- stage 1: augmented views -> layer-input statistics
    def _statistics(self, sample, augment, n, batch_size, seed, dtype, channels_last, progress):
        model, device = self.model, self.device
        home = _model_device(model)
        was_training = model.training
        gen = torch.Generator().manual_seed(int(seed))
        model.eval()
        if home != device:
            model.to(device)
        try:
            with HessianRecorder(self.layers, dtype=dtype) as rec, torch.no_grad():
                bar = tqdm(total=n, desc="SPADE statistics", unit="img", disable=not progress, leave=False)
                done = 0
                while done < n:
                    m = min(batch_size, n - done)
                    t0 = time.perf_counter()
                    views = augment(sample, m, gen)
                    self.timings["augment"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    views = views.to(device)
                    if channels_last and views.dim() == 4:
                        views = views.contiguous(memory_format=torch.channels_last)
                    model(views)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    self.timings["statistics"] += time.perf_counter() - t0
                    done += m
                    bar.update(m)
                bar.close()
            missing = [name for name in self.layers if name not in rec.sums]
            if missing:
                raise RuntimeError(f"layers {missing} never ran in the forward pass; they cannot be pruned")
            return rec.hessians()
        finally:
            if home != device:
                model.to(home)
            model.train(was_training)

    # ---- stage 2: solve each layer
    def _solve(self, hessians, options, progress):
        sparse, rows = {}, []
        for name, module in tqdm(self.layers.items(), desc=f"SPADE {self.solver}", disable=not progress, leave=False):
            t0 = time.perf_counter()
            W = weight_matrix(module).to(self.device, hessians[name].dtype)
            H = hessians[name].to(self.device)
            W_sparse, _ = solve(W, H, self.sparsity[name], method=self.solver, **options)
            err = relative_error(W, W_sparse, H)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - t0
            self.timings["solve"] += seconds
            w_new = W_sparse.reshape(module.weight.shape).to(module.weight.device, module.weight.dtype)
            sparse[name] = w_new
            rows.append(
                {
                    "layer": name,
                    "type": "depthwise conv" if is_depthwise(module) else type(module).__name__,
                    "shape": tuple(module.weight.shape),
                    "target_sparsity": self.sparsity[name],
                    "achieved_sparsity": float((w_new == 0).float().mean()),
                    "rel_error": float(err.mean()),
                    "seconds": seconds,
                }
            )
        return sparse, pd.DataFrame(rows)

    # ---- swapping weights
    def apply(self) -> None:
        """Put the sparse weights into the model (keeping a copy of the dense ones)."""
        if self._dense is not None:
            raise RuntimeError("this trace is already applied")
        self._dense = {name: m.weight.detach().clone() for name, m in self.layers.items()}
        try:
            for name, m in self.layers.items():
                set_weight_matrix(m, self.sparse_weights[name])
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        """Put the dense weights back, bit for bit."""
        if self._dense is None:
            return
        with torch.no_grad():
            for name, m in self.layers.items():
                m.weight.copy_(self._dense[name])
        self._dense = None

    def __enter__(self) -> SpadeTrace:
        self.apply()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def __repr__(self) -> str:
        return f"SpadeTrace({len(self.layers)} layers, solver={self.solver!r}, applied={self._dense is not None})"


def spade_trace(model: nn.Module, sample, **kwargs) -> SpadeTrace:
    """Build the SPADE trace of ``model`` on ``sample``; use it as a context manager. See :class:`SpadeTrace`."""
    return SpadeTrace(model, sample, **kwargs)


def spade_pruned_copy(model: nn.Module, sample, **kwargs) -> nn.Module:
    """A deep copy of ``model`` with the SPADE-pruned weights for ``sample``; the original is left dense.

    The copy carries the trace (``copy.spade_records``: the per-layer DataFrame).
    """
    trace = SpadeTrace(model, sample, **kwargs)
    pruned = copy.deepcopy(model)
    named = dict(pruned.named_modules())
    for name, weight in trace.sparse_weights.items():
        with torch.no_grad():
            named[name].weight.copy_(weight)
    pruned.spade_records = trace.records
    return pruned
