"""Experiments on the layer-wise pruning solvers (notebook 02): tiny problems, real layers, cost, traces.

Everything here calls the engine (:mod:`spade_utils.solvers`, :mod:`spade_utils.trace_steps`,
:mod:`spade_utils.layer_select`) and returns pandas DataFrames; nothing prints.

Sweeps over trace settings (number of augmentations, dampening, sparsity) reuse one recording
of the layer-input statistics: :func:`record_statistics` is the engine's statistics step (the one
:func:`spade_utils.spade.spade_trace` runs) with snapshots of every layer's H after the first N
views for each requested N, so ``solve_layers(model, stats[N], ...)`` (the engine's solve step) gives
the sparse weights and records of ``spade_trace(model, image, n_augment=N, ...)`` with the same
``seed`` and ``batch_size`` without repeating the forward passes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import trace_steps as engine
from .bruteforce import brute_force_optimum
from .hessian import weight_matrix
from .layer_select import LayerSelection, choose_layers, resolve_sparsity, select_layers, unwrap_model
from .runtime import flush_denormals
from .solvers import SOLVERS, expected_zeros, layer_relative_error, obc_prune, solve
from .trace_steps import LayerStatistics, check_checkpoints
from .validation import check_positive_int
from .widgets import progress_bar as tqdm


# --------------------------------------------------------------------------------------------
# synthetic problems
# --------------------------------------------------------------------------------------------
def random_problem(
    rows: int,
    cols: int,
    n_samples: int | None = None,
    *,
    correlated: bool = True,
    rho: float = 0.9,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random weights ``W`` (rows x cols) and ``H = 2 X X^T / n`` from ``n_samples`` random inputs.

    Correlated inputs follow an AR(1) chain (correlation ``rho`` between neighbouring inputs) with
    a random scale per input, like neighbouring channels of real activations; otherwise the
    inputs are independent standard normals. ``n_samples`` defaults to ``3 * cols`` (full rank).
    """
    for name, v in (("rows", rows), ("cols", cols)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    n = 3 * cols if n_samples is None else n_samples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if not 0 <= rho < 1:
        raise ValueError(f"rho must be in [0, 1), got {rho}")
    g = torch.Generator().manual_seed(int(seed))
    X = torch.randn(cols, n, generator=g, dtype=dtype)
    if correlated:
        # AR(1): x_i = rho x_{i-1} + sqrt(1 - rho^2) z_i, then a random scale per input
        for i in range(1, cols):
            X[i] = rho * X[i - 1] + math.sqrt(1 - rho**2) * X[i]
        X = X * (0.2 + torch.rand(cols, 1, generator=g, dtype=dtype))
    W = torch.randn(rows, cols, generator=g, dtype=dtype)
    return W, 2 * X @ X.T / n


# --------------------------------------------------------------------------------------------
# section 2: tiny problems against the brute-force optimum
# --------------------------------------------------------------------------------------------
def tiny_problem_study(
    n_problems: int,
    *,
    sparsities: Sequence[float] = (0.25, 0.5, 0.75),
    cols: int = 8,
    max_rows: int = 4,
    n_samples: int = 24,
    correlated: Sequence[bool] = (False, True),
    methods: Sequence[str] = SOLVERS,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Solve many random tiny layers and compare each solver's loss with the brute-force optimum.

    Solvers run without dampening (``percdamp=0``) so that they optimise exactly the problem the
    brute force solves. Returns one row per (problem, sparsity, method) with ``loss``,
    ``optimum`` and ``ratio = loss / optimum`` (1 is optimal; a ratio below 1 would be a bug).
    """
    if isinstance(n_problems, bool) or not isinstance(n_problems, int) or n_problems < 1:
        raise ValueError(f"n_problems must be a positive int, got {n_problems!r}")
    unknown = [m for m in methods if m not in SOLVERS]
    if unknown:
        raise ValueError(f"methods must be among {SOLVERS}, got {unknown}")
    out = []
    total = n_problems * len(correlated)
    bar = tqdm(total=total, desc="tiny problems", disable=not progress, leave=False)
    for corr in correlated:
        for p in range(n_problems):
            g = torch.Generator().manual_seed(int(seed) * 100_003 + p)
            rows = int(torch.randint(1, max_rows + 1, (1,), generator=g))
            W, H = random_problem(rows, cols, n_samples, correlated=corr, seed=int(seed) * 100_003 + p)
            for s in sparsities:
                k = expected_zeros(tuple(W.shape), float(s), "sparsegpt")
                opt = brute_force_optimum(W, H, k)
                for m in methods:
                    opts = {} if m == "magnitude" else {"percdamp": 0.0}
                    W_sparse, loss = solve(W, H, float(s), method=m, **opts)
                    out.append(
                        {
                            "inputs": "correlated" if corr else "independent",
                            "problem": p,
                            "rows": rows,
                            "cols": cols,
                            "sparsity": float(s),
                            "zeros": int((W_sparse == 0).sum()),
                            "method": m,
                            "loss": float(loss),
                            "optimum": opt,
                            "ratio": float(loss) / opt if opt > 0 else float("nan"),
                        }
                    )
            bar.update(1)
    bar.close()
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------
# section 3: real layers, error vs sparsity
# --------------------------------------------------------------------------------------------
def error_vs_sparsity(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsities: Sequence[float],
    methods: Mapping[str, Mapping] | Sequence[str] = SOLVERS,
    *,
    layer: str = "",
    progress: bool = True,
) -> pd.DataFrame:
    """Relative reconstruction error ``||WX - W'X||^2 / ||WX||^2`` and solve time per method and sparsity.

    ``methods`` is a list of solver names, or a mapping label -> options (with ``method=`` and the
    solver's keyword options), e.g. ``{"sparsegpt, one block": {"method": "sparsegpt", "blocksize": 10**9}}``.
    For grouped weights (G, rows, cols) the error is that of the whole layer (sum over groups).
    """
    spec = {m: {"method": m} for m in methods} if not isinstance(methods, Mapping) else dict(methods)
    for label, opts in spec.items():
        if opts.get("method") not in SOLVERS:
            raise ValueError(f"methods[{label!r}] needs method= one of {SOLVERS}, got {opts.get('method')!r}")
    out = []
    jobs = [(label, s) for label in spec for s in sparsities]
    with flush_denormals():
        for label, s in tqdm(jobs, desc=f"solve {layer}".strip(), disable=not progress, leave=False):
            opts = dict(spec[label])
            method = opts.pop("method")
            t0 = time.perf_counter()
            W_sparse, loss = solve(W, H, float(s), method=method, **opts)
            seconds = time.perf_counter() - t0
            out.append(
                {
                    "layer": layer,
                    "method": label,
                    "sparsity": float(s),
                    "achieved_sparsity": float((W_sparse == 0).float().mean()),
                    "rel_error": layer_relative_error(W, W_sparse, H),
                    "seconds": seconds,
                }
            )
    return pd.DataFrame(out)


def ratio_table(
    df: pd.DataFrame,
    numerator: str = "sparsegpt",
    denominator: str = "obc",
    *,
    equal_sparsity: bool = True,
    tol: float = 1e-3,
) -> pd.DataFrame:
    """rel_error(numerator) / rel_error(denominator) per layer (rows) and target sparsity (columns).

    Only layers where both methods ran appear. With ``equal_sparsity`` a cell is left empty (NaN)
    when the two methods reached achieved sparsities more than ``tol`` apart (the solvers round
    zero counts differently, which matters on tiny mask groups such as depthwise channels): such a
    ratio compares two different problems. The result has a ``layer`` column, then one column per
    sparsity.
    """
    wide = df.pivot_table(index=["layer", "sparsity"], columns="method", values="rel_error")
    if numerator not in wide or denominator not in wide:
        raise ValueError(f"df needs rel_error for both {numerator!r} and {denominator!r}")
    ratio = (wide[numerator] / wide[denominator]).dropna()
    if equal_sparsity:
        ach = df.pivot_table(index=["layer", "sparsity"], columns="method", values="achieved_sparsity")
        differ = (ach[numerator] - ach[denominator]).abs().reindex(ratio.index) > tol
        ratio = ratio.mask(differ)
    ratio = ratio.rename("ratio").reset_index()
    table = ratio.pivot(index="layer", columns="sparsity", values="ratio")
    order = list(dict.fromkeys(df["layer"]))
    table = table.reindex([name for name in order if name in table.index])
    table.columns = [f"{c:g}" for c in table.columns]
    return table.reset_index()


# --------------------------------------------------------------------------------------------
# section 4: cost
# --------------------------------------------------------------------------------------------
STRAIGHTFORWARD_OBC = "obc (straightforward)"


def solve_time_vs_columns(
    widths: Sequence[int],
    *,
    rows: int = 64,
    sparsity: float = 0.9,
    methods: Mapping[str, int | None] | Sequence[str] = ("sparsegpt", "obc"),
    repeats: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Seconds to solve a random (rows x d) float32 layer, for each width d and method.

    ``methods``: names of :data:`spade_utils.solvers.SOLVERS` (``"obc"`` is the fast exact OBC of
    :mod:`spade_utils.obc`) or ``"obc (straightforward)"`` (:func:`spade_utils.solvers.obc_prune`, one weight
    and one rank-1 downdate per step, both greedy passes: the same masks, the reference implementation); a
    mapping gives each the largest width it is timed at (None: all widths). The fastest of ``repeats`` runs is
    kept (the least disturbed by other work on the machine). Returns columns method, cols, rows, seconds.
    Raises ValueError for an unknown method.
    """
    limits = dict(methods) if isinstance(methods, Mapping) else {m: None for m in methods}
    unknown = sorted(set(limits) - set(SOLVERS) - {STRAIGHTFORWARD_OBC})
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; choose from {list(SOLVERS) + [STRAIGHTFORWARD_OBC]}")
    out = []
    jobs = [(m, d) for m, cap in limits.items() for d in widths if cap is None or d <= cap]
    with flush_denormals():
        for m, d in tqdm(jobs, desc="timing solvers", disable=not progress, leave=False):
            W, H = random_problem(rows, int(d), seed=seed + int(d), dtype=torch.float32)
            best = float("inf")
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                if m == STRAIGHTFORWARD_OBC:
                    obc_prune(W, H, sparsity)
                else:
                    solve(W, H, sparsity, method=m)
                best = min(best, time.perf_counter() - t0)
            out.append({"method": m, "cols": int(d), "rows": rows, "seconds": best})
    return pd.DataFrame(out)


def power_law_exponent(df: pd.DataFrame, x: str = "cols", y: str = "seconds", min_x: float = 0) -> float:
    """Slope of log(y) against log(x) (least squares) over the rows with x >= min_x."""
    d = df[df[x] >= min_x]
    if len(d) < 2:
        return float("nan")
    return float(np.polyfit(np.log(d[x].to_numpy(float)), np.log(d[y].to_numpy(float)), 1)[0])


# --------------------------------------------------------------------------------------------
# sections 3, 5, 6: statistics of a real network, and traces built from them
# --------------------------------------------------------------------------------------------
def record_statistics(
    model: nn.Module,
    image,
    layers: LayerSelection,
    checkpoints: int | Sequence[int],
    *,
    augment=None,
    batch_size: int = 16,
    seed: int = 0,
    skip_depthwise: bool = False,
    channels_last: bool = True,
    progress: bool = True,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[int, LayerStatistics]:
    """Layer-input statistics after the first N augmented views of ``image``, for every N in ``checkpoints``.

    The engine's :func:`spade_utils.trace_steps.record_statistics` (the one ``spade_trace`` runs) on the
    layers :func:`~spade_utils.layer_select.choose_layers` picks for ``layers`` (names, globs or a
    predicate; ``skip_depthwise`` leaves depthwise convs out of globs), with the views of
    ``spade_trace(model, image, n_augment=N, batch_size=batch_size, seed=seed)``: every checkpoint but
    the largest must be a multiple of ``batch_size``, and each snapshot is the H that trace records.
    ``augment`` defaults to :class:`~spade_utils.augment.ImageAugmenter` at the input size and
    normalisation the model states (``input_size``/``mean``/``std`` override them, see
    :mod:`spade_utils.inputs`). Returns ``{N: LayerStatistics}``; each reads as a mapping layer name -> H
    ((d, d), or (groups, d, d) for a grouped conv). Raises TypeError/ValueError before any forward pass
    on bad arguments.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_checkpoints(checkpoints, check_positive_int(batch_size, "batch_size"))
    choice = choose_layers(model, layers, skip_depthwise=skip_depthwise)
    augment, spec, image = engine.resolve_augment(
        model, image, augment, input_size, mean, std, fn_name="record_statistics", sample_name="image"
    )
    return engine.record_statistics(
        model,
        choice.layers,
        image,
        augment,
        checkpoints,
        batch_size=batch_size,
        seed=seed,
        channels_last=channels_last,
        progress=progress,
        input_spec=spec,
    )


def solve_layers(
    model: nn.Module,
    hessians: Mapping[str, torch.Tensor],
    sparsity: float | Mapping[str, float],
    *,
    solver: str = "sparsegpt",
    solver_options: Mapping | None = None,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """Solve every layer named in ``hessians`` as the trace does: (sparse weights by name, per-layer records).

    The engine's :func:`spade_utils.trace_steps.solve_layers` (the one ``spade_trace`` runs), with a
    ``weights`` column (the number of weights of each layer, for :func:`global_sparsity`) after ``shape``.
    ``hessians``: a snapshot from :func:`record_statistics` (or a mapping name -> H); ``sparsity``: a
    float or a mapping name-prefix -> sparsity, as in ``spade_trace``.
    """
    sparse, records = engine.solve_layers(
        model, hessians, sparsity, solver=solver, solver_options=solver_options, progress=progress
    )
    named = dict(unwrap_model(model)[0].named_modules())
    records.insert(3, "weights", [weight_matrix(named[n]).numel() for n in records["layer"]])
    return sparse, records


@contextlib.contextmanager
def swapped_weights(model: nn.Module, sparse: Mapping[str, torch.Tensor]):
    """Inside the block the named layers carry ``sparse`` weights; the dense ones come back bit for bit.

    :func:`spade_utils.trace_steps.swapped_weights` on the layers of ``model`` that ``sparse`` names (names
    inside any torch.compile/DataParallel wrapper). Raises ValueError for a name the model lacks."""
    named = dict(unwrap_model(model)[0].named_modules())
    missing = [n for n in sparse if n not in named]
    if missing:
        raise ValueError(f"sparse names layers the model lacks: {missing}")
    with engine.swapped_weights({n: named[n] for n in sparse}, sparse):
        yield model


def mean_error_on(
    model: nn.Module, sparse: Mapping[str, torch.Tensor], hessians: Mapping[str, torch.Tensor]
) -> float:
    """Mean over layers of the relative error of ``sparse`` weights measured on other statistics ``hessians``.

    Used to judge a trace built from few views on the statistics of many views of the same sample.
    """
    named = dict(unwrap_model(model)[0].named_modules())
    errs = []
    for name, w in sparse.items():
        W = weight_matrix(named[name]).to(hessians[name].dtype)
        errs.append(layer_relative_error(W, w.reshape(W.shape).to(W.dtype), hessians[name]))
    return float(np.mean(errs))


def global_sparsity(records: pd.DataFrame) -> float:
    """Fraction of zeros over all pruned layers of a records table (weights-weighted)."""
    return float((records["achieved_sparsity"] * records["weights"]).sum() / records["weights"].sum())


def schedule_sparsity(
    model: nn.Module, layers, schedule: Mapping[str, float], *, skip_depthwise: bool = False
) -> float:
    """Global (weights-weighted) sparsity that a per-prefix ``schedule`` gives over ``layers``."""
    chosen = select_layers(model, layers, skip_depthwise=skip_depthwise)
    targets = resolve_sparsity(schedule, list(chosen), unwrap_model(model)[1])
    sizes = {n: weight_matrix(m).numel() for n, m in chosen.items()}
    return sum(targets[n] * sizes[n] for n in chosen) / sum(sizes.values())


def prediction_summary(model: nn.Module, views: torch.Tensor, reference: torch.Tensor) -> dict:
    """The model's verdict on ``views`` against the dense model's top-1 class per view, ``reference``.

    ``views[0]`` is the plain centre crop and ``reference[0]`` the dense class the logit is read
    for. Returns the centre crop's top-1 and whether it equals ``reference[0]``, the agreement
    (share of views whose top-1 equals the dense top-1 *of the same view*), and the centre crop's
    logit and probability of ``reference[0]``.
    """
    reference = torch.as_tensor(reference).reshape(-1)
    if reference.numel() != len(views):
        raise ValueError(f"reference needs one dense class per view ({len(views)}), got {reference.numel()}")
    with torch.no_grad():
        logits = model(views)
    top1 = logits.argmax(dim=1).cpu()
    ref = int(reference[0])
    return {
        "top1": int(top1[0]),
        "top1_agrees": bool(top1[0] == ref),
        "agreement": float((top1 == reference.cpu()).float().mean()),
        "logit": float(logits[0, ref]),
        "prob": float(logits[0].softmax(0)[ref]),
    }


def sweep_traces(
    model: nn.Module,
    statistics: Mapping[int, Mapping[str, torch.Tensor]],
    settings: Sequence[Mapping],
    views: torch.Tensor,
    reference: torch.Tensor,
    *,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build one trace per setting from recorded statistics and evaluate it on ``views``.

    ``reference`` holds the dense model's top-1 class of every view (see :func:`prediction_summary`).

    Each setting is a dict with ``n_augment`` (a key of ``statistics``), ``sparsity`` (float or
    prefix mapping), optional ``solver`` (default sparsegpt) and ``solver_options``; any other
    keys (labels for plots) are copied into the result. Returns (one row per setting with
    :func:`prediction_summary`, mean/max layer error and global sparsity; per-layer records).
    """
    summary, per_layer = [], []
    for i, setting in enumerate(tqdm(settings, desc="traces", disable=not progress, leave=False)):
        s = dict(setting)
        n = s.pop("n_augment")
        if n not in statistics:
            raise ValueError(f"settings[{i}]: n_augment={n} was not recorded; recorded: {sorted(statistics)}")
        sparsity = s.pop("sparsity")
        solver = s.pop("solver", "sparsegpt")
        options = s.pop("solver_options", None)
        sparse, records = solve_layers(model, statistics[n], sparsity, solver=solver, solver_options=options)
        with swapped_weights(model, sparse):
            verdict = prediction_summary(model, views, reference)
        labels = {"n_augment": n, "solver": solver, **s}
        summary.append(
            {
                **labels,
                **verdict,
                "global_sparsity": global_sparsity(records),
                "mean_rel_error": float(records["rel_error"].mean()),
                "max_rel_error": float(records["rel_error"].max()),
                "solve_seconds": float(records["seconds"].sum()),
            }
        )
        per_layer.append(records.assign(setting=i, **labels))
    return pd.DataFrame(summary), pd.concat(per_layer, ignore_index=True)


# --------------------------------------------------------------------------------------------
# section 1: equations next to the code that implements them
# --------------------------------------------------------------------------------------------
def source_lines(func, *needles: str) -> str:
    """The lines of ``func``'s source that contain any of ``needles``, each prefixed ``file:line``.

    Lets a notebook quote the exact engine lines behind an equation; a rename in the engine
    raises a ValueError here instead of quoting stale code.
    """
    import inspect
    from pathlib import Path

    lines, start = inspect.getsourcelines(func)
    fname = Path(inspect.getsourcefile(func) or inspect.getfile(func)).name
    out = []
    for needle in needles:
        hits = [(start + i, ln.rstrip()) for i, ln in enumerate(lines) if needle in ln]
        if not hits:
            raise ValueError(f"{needle!r} does not occur in {func.__qualname__}")
        out += [f"{fname}:{no:<4d} {text.strip()}" for no, text in hits]
    return "\n".join(out)
