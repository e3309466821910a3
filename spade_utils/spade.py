"""The SPADE trace: one sample -> a network whose chosen layers are pruned for that sample.

>>> trace = spade_trace(model, image, layers=["layer4*", "fc"], sparsity=0.95, n_augment=256)
>>> with trace:                       # the sparse weights are in the model here
...     logits = model(x)
>>> trace.records                     # per layer: sparsity, reconstruction error, seconds
>>> pruned = spade_pruned_copy(model, image, layers="layer4*", sparsity=0.95)

Building the trace (augment -> probe -> record layer-input statistics -> solve each layer) happens
when ``spade_trace`` is called; the model's dense weights are untouched until the ``with`` block,
and are restored bit-for-bit when it ends, also after an exception.

This module is the entry point; the work is done by :mod:`spade_utils.layer_select` (which layers,
which sparsities, shared weights) and :mod:`spade_utils.trace_steps` (probe, statistics, solve, weight
swap: the same functions the solver studies of notebook 02 call). ``select_layers``,
``resolve_sparsity`` and ``unwrap_model`` are re-exported here.

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

import contextlib
import copy
import weakref
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .hessian import set_weight_matrix
from .inputs import InputSpec
from .layer_select import (
    LayerChoice,
    LayerSelection,
    choose_layers,
    resolve_sparsity,
    select_layers,
    shared_weight_groups,
    unwrap_model,
)
from .runtime import eval_mode, flush_denormals, model_device, resolve_device
from .solvers import SOLVERS
from .trace_steps import Augment, record_statistics, resolve_augment, solve_layers, swapped_weights
from .validation import check_positive_int, check_seed

# the names notebooks import from here; layer selection lives in layer_select, the steps in trace_steps
__all__ = [
    "Augment",
    "LayerSelection",
    "SpadeTrace",
    "resolve_sparsity",
    "select_layers",
    "spade_pruned_copy",
    "spade_trace",
    "unwrap_model",
]

_APPLIED: weakref.WeakKeyDictionary = (
    weakref.WeakKeyDictionary()
)  # module -> the trace whose weights it carries


def _same_device(a: torch.device, b: torch.device) -> bool:
    def norm(d: torch.device) -> torch.device:
        if d.type == "cuda" and d.index is None and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return d

    return norm(a) == norm(b)


# --------------------------------------------------------------------------------------------
# checks before any work
# --------------------------------------------------------------------------------------------
def _check_arguments(
    model, n_augment, batch_size, seed, solver, dtype, solver_options, augment, **flags
) -> tuple[int, int, int]:
    """Refuse bad arguments of :func:`spade_trace`; returns (n_augment, batch_size, seed)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    n_augment = check_positive_int(n_augment, "n_augment")
    batch_size = check_positive_int(batch_size, "batch_size")
    seed = check_seed(seed, "seed")
    for flag, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be a bool, got {type(value).__name__}")
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"dtype (the statistics' accumulation dtype) must be torch.float32 or torch.float64, got {dtype}"
        )
    if solver_options is not None and not isinstance(solver_options, Mapping):
        raise TypeError(f"solver_options must be a mapping or None, got {type(solver_options).__name__}")
    if augment is not None and not callable(augment):
        raise TypeError("augment must be a callable (sample, n, generator) -> batch")
    return n_augment, batch_size, seed


def _plan_layers(
    model, layers, skip_depthwise, sparsity
) -> tuple[LayerChoice, list[list[str]], dict[str, float]]:
    """(the chosen layers, groups of them sharing a weight, target sparsity per layer), refusing what cannot
    be pruned correctly and layers that carry another trace's weights now."""
    choice = choose_layers(model, layers, skip_depthwise=skip_depthwise, stacklevel=5)
    busy = [n for n, m in choice.layers.items() if m in _APPLIED]
    if busy:
        raise RuntimeError(
            f"layers {busy} carry the sparse weights of another trace now (inside its `with` "
            "block); build this trace outside it"
        )
    groups = shared_weight_groups(choice.inner, choice.layers)
    targets = resolve_sparsity(sparsity, list(choice.layers), choice.prefixes)
    for names in groups:
        if len({targets[n] for n in names}) > 1:
            raise ValueError(f"sparsity: layers {names} share one weight but were given different sparsities")
    return choice, groups, targets


def _compute_model(model: nn.Module, inner: nn.Module, chosen: Mapping[str, nn.Module], device: torch.device):
    """(the model to run, its chosen layers): the caller's model on its device, else a deep copy on ``device``."""
    if all(_same_device(t.device, device) for t in (*inner.parameters(), *inner.buffers())):
        return inner, dict(chosen)
    try:
        compute = copy.deepcopy(inner).to(device)
    except Exception as err:  # noqa: BLE001 - any failure: say what to do
        raise RuntimeError(
            f"spade_trace: could not copy the model to device={str(device)!r} ({err}); the caller's model "
            f"is never moved: pass device={str(model_device(inner))!r} or move the model first"
        ) from err
    named = dict(compute.named_modules())
    return compute, {n: named[n] for n in chosen}


# --------------------------------------------------------------------------------------------
# the trace
# --------------------------------------------------------------------------------------------
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

    The stages are the functions of :mod:`spade_utils.trace_steps`: ``record_statistics`` (probe, then
    statistics), ``solve_layers``, and ``swapped_weights`` inside the ``with`` block.
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
        flags = dict(progress=progress, skip_depthwise=skip_depthwise, channels_last=channels_last)
        n_augment, batch_size, seed = _check_arguments(
            model, n_augment, batch_size, seed, solver, dtype, solver_options, augment, **flags
        )
        choice, self.groups, self.sparsity = _plan_layers(model, layers, skip_depthwise, sparsity)
        self.device = resolve_device(device)
        augment, spec, sample = resolve_augment(
            model, sample, augment, input_size, mean, std, device=self.device, fn_name="spade_trace"
        )
        self._plan(model, choice, spec, solver, channels_last)

        # ---- where to compute: the caller's model is never moved; another device gets a copy
        compute, layers_c = _compute_model(model, choice.inner, choice.layers, self.device)
        with flush_denormals(), eval_mode(compute), torch.no_grad():
            stats = record_statistics(
                compute,
                layers_c,
                sample,
                augment,
                n_augment,
                batch_size=batch_size,
                seed=seed,
                dtype=dtype,
                channels_last=channels_last,
                progress=progress,
                input_spec=spec,
                fn_name="spade_trace",
            )[n_augment]
            self._solve(choice.inner, stats, dict(solver_options or {}), progress)

    def _plan(
        self, model, choice: LayerChoice, spec: InputSpec | None, solver: str, channels_last: bool
    ) -> None:
        """The attributes every trace has before its statistics (``groups``, ``sparsity``, ``device`` set)."""
        self.input_spec: InputSpec | None = spec
        self.model, self.layers, self.skipped = model, choice.layers, choice.skipped
        self.solver = solver
        self.channels_last = channels_last
        self.pre_pad: dict[str, str] = {}
        self._applied: contextlib.ExitStack | None = None
        self.timings = {"augment": 0.0, "statistics": 0.0, "solve": 0.0}

    def _solve(self, inner: nn.Module, stats, options: dict, progress: bool) -> None:
        """Solve the caller's layers on the statistics recorded on the model (or its copy)."""
        sparse, records = solve_layers(
            inner,
            stats,
            self.sparsity,
            solver=self.solver,
            solver_options=options,
            device=self.device,
            progress=progress,
        )
        self._adopt(stats, sparse, records)

    def _adopt(self, stats, sparse_weights: dict[str, torch.Tensor], records) -> None:
        """Take the statistics' probe findings and timings, the sparse weights and their records."""
        self.pre_pad, self.channels_last = stats.pre_pad, stats.channels_last
        self.timings.update(stats.seconds)
        self.sparse_weights, self.records = sparse_weights, records
        self.timings["solve"] += float(self.records["seconds"].sum())

    @classmethod
    def _assemble(
        cls, model, choice: LayerChoice, groups, targets, device, spec, solver, stats, sparse_weights, records
    ) -> SpadeTrace:
        """A trace whose statistics and weights were computed elsewhere (:func:`spade_utils.batched.spade_traces`
        solves many samples at once); the arguments are what ``__init__`` would have computed."""
        self = cls.__new__(cls)
        self.groups, self.sparsity, self.device = groups, targets, device
        self._plan(model, choice, spec, solver, stats.channels_last)
        self._adopt(stats, sparse_weights, records)
        return self

    def apply(self) -> None:
        """Put the sparse weights into the model (keeping a copy of the dense ones).

        Raises RuntimeError if this trace is already applied, or if any of its layers carries another
        trace's sparse weights now (restoring in the wrong order would leave sparse weights behind)."""
        if self._applied is not None:
            raise RuntimeError("this trace is already applied")
        busy = [n for n, m in self.layers.items() if m in _APPLIED]
        if busy:
            raise RuntimeError(
                f"layers {busy} carry the sparse weights of another trace; leave its `with` block "
                "before applying this one"
            )
        stack = contextlib.ExitStack()
        stack.enter_context(swapped_weights(self.layers, self.sparse_weights))
        self._applied = stack
        for m in self.layers.values():
            _APPLIED[m] = self

    def restore(self) -> None:
        """Put the dense weights back, bit for bit."""
        if self._applied is None:
            return
        stack, self._applied = self._applied, None
        stack.close()
        for m in self.layers.values():
            if _APPLIED.get(m) is self:
                del _APPLIED[m]

    def __enter__(self) -> SpadeTrace:
        self.apply()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def __repr__(self) -> str:
        return f"SpadeTrace({len(self.layers)} layers, solver={self.solver!r}, applied={self._applied is not None})"


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
    return SpadeTrace(**locals())  # the first statement: locals() is exactly the parameters above


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
    trace = SpadeTrace(**locals())  # the first statement: locals() is exactly the parameters above
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
