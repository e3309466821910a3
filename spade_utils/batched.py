"""Batched SPADE traces: B samples' views through one forward pass, each layer solved for all B at once.

>>> traces = spade_traces(model, images, seeds=[11, 12, 13], layers=["layer4*", "fc"], sparsity=0.95)
>>> with traces[1]:                  # sample 1's sparse weights in the model
...     logits = model(x)

On a GPU one sample's trace leaves most of the device idle (issue 18 §2). Here the views of B samples go
through the model together (``batch_size`` views of every sample per forward pass, so ``B * batch_size``
per pass), a forward hook on each chosen layer splits its input batch back into the B samples and adds
each slice to that sample's own statistics (:meth:`spade_utils.hessian.HessianRecorder.add`, the code the
one-by-one trace runs), and each layer is then solved for the B samples in one call of the solver, whose
leading dimension holds B (x groups) independent problems (:func:`spade_utils.solvers.solve`).

The result is a list of :class:`~spade_utils.spade.SpadeTrace`, one per sample, each what
``spade_trace(model, samples[b], seed=seeds[b], ...)`` returns with the same arguments: the views of
sample b come from its own generator, drawn in the same batches; the probe, layer choice, shared weights
and records are those of :mod:`spade_utils.spade`. What can differ is rounding: the model may compute a
view's activations differently inside a larger batch (on this CPU EfficientNet-Lite0's do not: the tests
compare masks and weights with the one-by-one traces). Exceptions, kept so that the one-by-one masks are
kept too:

- exact OBC (``solver="obc"``) is solved sample by sample: its route (Woodbury for low-rank statistics or
  dense) is chosen for all the problems of one call together, and a sample's route must not depend on
  its batch-mates;
- SparseGPT's inner-loop route (``sequential``) is fixed to what one sample would get, and on a GPU the
  samples are solved in chunks that keep its triangular solve within the same memory bound.

Each trace's ``timings`` are the batch's seconds divided by B (the per-sample share).

Method: SPADE (Moakhar, Iofinova, Frantar, Alistarh, ICML 2024, arXiv 2310.04519, §3).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .hessian import HessianRecorder, weight_matrix
from .layer_probe import PROBE_VIEWS, probe_layers
from .layer_select import LayerSelection
from .runtime import eval_mode, flush_denormals, model_device, model_dtype, resolve_device
from .solvers import solve
from .spade import SpadeTrace, _check_arguments, _compute_model, _plan_layers
from .trace_steps import Augment, _as_model_input, _records, _snapshot, make_views, resolve_augment
from .validation import check_seed
from .widgets import progress_bar as tqdm

__all__ = ["spade_traces"]

_SPARSEGPT_BLOCK_BYTES = (
    2**30
)  # sparsegpt_prune's bound on its triangular-solve memory (rows x B x B per group)


def _as_samples(samples) -> list:
    if isinstance(samples, torch.Tensor):
        if samples.dim() != 4 or samples.shape[0] < 1:
            raise ValueError(
                f"samples as a tensor must be (B, C, H, W) with B >= 1, got {tuple(samples.shape)}"
            )
        return list(samples.unbind(0))
    if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence) or not len(samples):
        raise TypeError("samples must be a (B, C, H, W) tensor or a non-empty sequence of samples")
    return list(samples)


def _as_seeds(seeds, n: int) -> list[int]:
    if isinstance(seeds, Sequence) and not isinstance(seeds, (str, bytes)):
        if len(seeds) != n:
            raise ValueError(f"seeds must give one seed per sample ({n}), got {len(seeds)}")
        return [check_seed(s, "seeds") for s in seeds]
    return [check_seed(seeds, "seeds")] * n


def spade_traces(
    model: nn.Module,
    samples,
    *,
    layers: LayerSelection,
    sparsity: float | Mapping[str, float],
    seeds: int | Sequence[int] = 0,
    n_augment: int = 128,
    augment: Augment | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    solver: str = "sparsegpt",
    batch_size: int = 64,
    device: str | torch.device = "auto",
    progress: bool = True,
    skip_depthwise: bool = False,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    solver_options: Mapping | None = None,
) -> list[SpadeTrace]:
    """The SPADE traces of B samples, computed together: a list of B :class:`~spade_utils.spade.SpadeTrace`.

    Parameters
    ----------
    samples : (B, 3, H, W) tensor in [0, 1], or a sequence of B samples
        Each sample as :func:`~spade_utils.spade.spade_trace` takes it (with a custom ``augment``: whatever
        it accepts). A 4-d tensor is always B samples (``spade_trace`` reads a (1, 3, H, W) tensor as one).
    seeds : int or sequence of B ints, default 0
        The seed of each sample's views (``spade_trace``'s ``seed``); one int gives every sample that seed.
    batch_size : int, default 64
        Views **per sample** per forward pass: a pass carries ``B * batch_size`` views. The one-by-one
        trace with the same ``batch_size`` draws the same views.
    layers, sparsity, n_augment, augment, input_size, mean, std, solver, device, progress, skip_depthwise,
    dtype, channels_last, solver_options
        As in :func:`~spade_utils.spade.spade_trace` (one value for every sample).

    Returns
    -------
    list of SpadeTrace
        ``traces[b]`` is sample b's trace (``records``, ``sparse_weights``, ``timings``: the batch's seconds
        / B). The model must treat the views of a batch independently along dimension 0 (eval-mode CNNs
        do); a chosen layer whose input batch is not ``B x`` the views per sample raises RuntimeError.

    Raises
    ------
    TypeError, ValueError
        What ``spade_trace`` refuses, plus samples that are neither a 4-d tensor nor a non-empty sequence
        and ``seeds`` of the wrong length, all before any forward pass.
    """
    samples = _as_samples(samples)
    seeds = _as_seeds(seeds, len(samples))
    flags = dict(progress=progress, skip_depthwise=skip_depthwise, channels_last=channels_last)
    n_augment, batch_size, _ = _check_arguments(
        model, n_augment, batch_size, seeds[0], solver, dtype, solver_options, augment, **flags
    )
    choice, groups, targets = _plan_layers(model, layers, skip_depthwise, sparsity)
    dev = resolve_device(device)
    made = [
        resolve_augment(
            model,
            s,
            augment,
            input_size,
            mean,
            std,
            device=dev,
            fn_name="spade_traces",
            sample_name=f"samples[{b}]",
        )
        for b, s in enumerate(samples)
    ]
    make, spec = made[0][0], made[0][1]
    samples = [m[2] for m in made]
    compute, layers_c = _compute_model(model, choice.inner, choice.layers, dev)
    with flush_denormals(), eval_mode(compute), torch.no_grad():
        stats = _record_batched(
            compute,
            layers_c,
            samples,
            make,
            seeds,
            n_augment,
            batch_size,
            dtype,
            channels_last,
            progress,
            spec,
        )
        sparse, seconds = _solve_batched(
            choice.layers, stats, groups, targets, solver, dict(solver_options or {}), dev, progress
        )
        records = [
            _records(choice.layers, sparse[b], stats[b], targets, seconds[b], groups, dev)
            for b in range(len(samples))
        ]
    return [
        SpadeTrace._assemble(
            model, choice, groups, targets, dev, spec, solver, stats[b], sparse[b], records[b]
        )
        for b in range(len(samples))
    ]


def _record_batched(model, layers, samples, make, seeds, n, batch_size, dtype, channels_last, progress, spec):
    """Per-sample :class:`~spade_utils.trace_steps.LayerStatistics` after ``n`` views, from shared passes."""
    B = len(samples)
    # the probe: model properties (padding in forward, channels-last), found on sample 0's probe views
    probe_views = make_views(model, make, samples[0], PROBE_VIEWS, torch.Generator().manual_seed(seeds[0]))
    probe = probe_layers(
        model, layers, probe_views, channels_last=channels_last, input_spec=spec, fn_name="spade_traces"
    )
    recorders = [HessianRecorder(dict(layers), dtype=dtype, pre_pad=probe.pre_pad) for _ in range(B)]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    device, view_dtype = model_device(model), model_dtype(model)
    seconds = {"augment": 0.0, "statistics": 0.0}
    per_sample = [0]

    def hook_for(name):
        def hook(module, inputs, output):
            x, m = inputs[0], per_sample[0]
            if x.shape[0] != B * m:
                raise RuntimeError(
                    f"spade_traces: layer {name!r} got a batch of {x.shape[0]} inputs for {B} samples x {m} "
                    "views; batched traces need a model that keeps the views along dimension 0 "
                    "(use spade_trace one sample at a time)"
                )
            for b, rec in enumerate(recorders):
                rec.add(name, x[b * m : (b + 1) * m])

        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in layers.items()]
    try:
        bar = tqdm(total=n * B, desc=f"SPADE statistics x{B}", unit="img", disable=not progress, leave=False)
        done = 0
        while done < n:
            m = min(batch_size, n - done)
            t0 = time.perf_counter()
            views = torch.cat([make(s, m, g) for s, g in zip(samples, gens, strict=True)])
            seconds["augment"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            per_sample[0] = m
            model(_as_model_input(views, device, view_dtype, probe.channels_last))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds["statistics"] += time.perf_counter() - t0
            done += m
            bar.update(m * B)
        bar.close()
    finally:
        for h in handles:
            h.remove()
    share = {k: v / B for k, v in seconds.items()}
    return [_snapshot(rec, n, share, probe) for rec in recorders]


def _one_sample_sequential(W: torch.Tensor, options: Mapping) -> bool:
    """The ``sequential`` that :func:`~spade_utils.solvers.sparsegpt_prune` picks for one sample's problem."""
    if options.get("sequential") is not None:
        return bool(options["sequential"])
    G, rows = (W.shape[0], W.shape[1]) if W.dim() == 3 else (1, W.shape[0])
    size = 4 if W.dtype in (torch.float16, torch.bfloat16) else W.element_size()
    return (
        W.device.type == "cpu"
        or G * rows * options.get("blocksize", 128) ** 2 * size > _SPARSEGPT_BLOCK_BYTES
    )


def _solve_batched(layers, stats, groups, targets, solver, options, device, progress):
    """Per sample: (name -> sparse weight, name -> seconds), each weight group solved for all samples at once."""
    B = len(stats)
    sparse: list[dict[str, torch.Tensor]] = [{} for _ in range(B)]
    seconds: list[dict[str, float]] = [{} for _ in range(B)]
    for names in tqdm(groups, desc=f"SPADE {solver} x{B}", disable=not progress, leave=False):
        module = layers[names[0]]
        t0 = time.perf_counter()
        Hs = []
        for st in stats:  # pooled exactly as trace_steps._solve_groups pools a shared weight
            dev = st[names[0]].device if device is None else device
            total = sum(st.counts[n] for n in names)
            Hs.append(sum(st[n].to(dev) * (st.counts[n] / total) for n in names))
        W = weight_matrix(module).to(dev, Hs[0].dtype)
        one = W.dim()  # 2: (rows, d), 3: (groups, rows, d)
        opts = dict(options)
        if solver == "obc":
            chunk = 1  # the Woodbury/dense route is chosen per call: keep it per sample
        elif solver == "sparsegpt":
            opts["sequential"] = _one_sample_sequential(W, options)
            G = W.shape[0] if one == 3 else 1
            per = G * W.shape[-2] * opts.get("blocksize", 128) ** 2 * 4
            chunk = B if opts["sequential"] else max(1, _SPARSEGPT_BLOCK_BYTES // per)
        else:
            chunk = B
        outs = []
        for b0 in range(0, B, chunk):
            Hb = torch.stack(Hs[b0 : b0 + chunk])  # (c, d, d) or (c, groups, d, d)
            c = Hb.shape[0]
            Wb = W.unsqueeze(0).expand(c, *W.shape)
            if one == 3:
                Hb, Wb = Hb.flatten(0, 1), Wb.flatten(0, 1)
            W_sparse, _ = solve(Wb.contiguous(), Hb, targets[names[0]], method=solver, **opts)
            outs.extend(W_sparse.reshape(c, *W.shape).unbind(0))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        elapsed = (time.perf_counter() - t0) / (B * len(names))
        for b in range(B):
            w_new = outs[b].reshape(module.weight.shape).to(module.weight.device, module.weight.dtype)
            for n in names:
                sparse[b][n] = w_new
                seconds[b][n] = elapsed
    return sparse, seconds
