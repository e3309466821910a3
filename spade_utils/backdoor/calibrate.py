"""The SPADE paper's per-block sparsity calibration: a greedy search, from the classifier backwards, for the
sparsity of each block of layers that gives saliency maps the best mean Trojan AUC on calibration samples.

Source: SPADE (Moakhar, Iofinova, Frantar, Alistarh, ICML 2024, arXiv 2310.04519), the appendix on
hyper-parameter tuning, as this project's issue 14 (section 3) states it: the trace's sparsity is tuned per
block of the network (for ResNet-50 the residual blocks and the classifier), one block at a time starting from
the classifier and moving towards the input; every block takes the value of the grid
{0, .2, .4, .6, .8, .9, .95, .99} with the best mean Trojan AUC on calibration samples (never the evaluation
samples), the blocks already tuned keep their values and the blocks not yet tuned stay dense; the search is run
for each saliency method. (The paper's appendix text was not reachable where this was written; the tie rule
below is this module's choice.)

The statistics ``H = 2 X X^T / N`` of a layer depend on the sample and its views, not on the sparsity of any
layer (a trace's statistics are recorded on the dense model), so each calibration sample's statistics are
recorded once (:func:`spade_utils.trace_steps.record_statistics`), each (sample, block, sparsity) is solved once
(:func:`spade_utils.trace_steps.solve_layers`, cached and shared by every method) and a configuration is scored
with the solved weights swapped into a private copy of the model
(:func:`spade_utils.trace_steps.swapped_weights`), instead of a full trace per candidate and sample. The result
equals that of the same greedy search with one :func:`spade_utils.spade.spade_trace` per candidate and sample
(the tests check it against such a loop).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..layer_select import choose_layers, shared_weight_groups, unwrap_model
from ..runtime import resolve_device
from ..trace_steps import LayerStatistics, record_statistics, resolve_augment, solve_layers, swapped_weights
from ..validation import check_int, check_sparsity
from ..widgets import progress_bar as tqdm
from .evaluate import TriggeredSample, normalize, trojan_saliency_scores

__all__ = [
    "PAPER_GRID",
    "BlockCalibration",
    "block_groups",
    "calibrate_block_sparsity",
    "calibration_sample_scores",
    "read_calibration_table",
]

PAPER_GRID = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)
"""The sparsity grid of the SPADE paper's calibration (fractions of zero weights)."""

_VALUES = ("auc", "auc_signed", "auc_absolute", "pointing")
_TIE = 1e-12  # candidates whose mean is within this of the best are tied


@dataclass(frozen=True)
class BlockCalibration:
    """The result of :func:`calibrate_block_sparsity`.

    - ``blocks``: block label -> its layer names (inside any wrapper), blocks in the order given (input first);
    - ``sparsity``: method -> block label -> the chosen sparsity (0.0: the block stays dense);
    - ``candidates``: DataFrame, one row per method x search step x grid value: ``method``, ``step`` (0 = the
      last block, searched first), ``block``, ``sparsity`` (the candidate value of that block), ``config``
      (the sparsity of every block in this candidate, a dict label -> value), ``mean`` (mean of ``value`` over
      the samples), ``n`` (samples), ``chosen`` (the value kept), ``reused`` (the same configuration was
      already scored for this method at an earlier step, so its scores were reused);
    - ``scores``: DataFrame, the per-sample rows behind every candidate (the columns of
      :func:`~spade_utils.backdoor.trojan_saliency_scores` plus ``step``, ``block``, ``sparsity``);
    - ``cost``: what the search did: ``samples``, ``statistics_passes`` (one per sample), ``views``,
      ``block_solves`` (solve calls, one per sample x block x non-zero grid value), ``layer_solves``,
      ``saliency_evaluations`` (attribution calls), ``candidates`` (methods x blocks x grid values),
      ``naive_traces`` (full traces a trace-per-candidate search needs: candidates x samples),
      ``statistics_bytes`` (memory the statistics of all samples take), ``seconds`` (``statistics``,
      ``solve``, ``saliency``, ``total``).
    """

    blocks: dict[str, list[str]]
    sparsity: dict[str, dict[str, float]]
    candidates: pd.DataFrame
    scores: pd.DataFrame
    cost: dict

    def layer_sparsity(self, method: str) -> dict[str, float]:
        """Layer name -> the chosen sparsity of its block, for ``method`` (0.0 for dense blocks)."""
        if method not in self.sparsity:
            raise ValueError(f"method {method!r} was not calibrated; calibrated: {list(self.sparsity)}")
        return {n: self.sparsity[method][b] for b, names in self.blocks.items() for n in names}

    def trace_arguments(self, method: str) -> dict:
        """``{"layers": [...], "sparsity": {...}}`` for :func:`~spade_utils.spade.spade_trace`: the layers of
        the blocks with a non-zero sparsity and their targets. An empty ``layers`` list means every block
        stays dense: use the dense model (a trace needs at least one layer)."""
        chosen = {n: s for n, s in self.layer_sparsity(method).items() if s > 0}
        return {"layers": list(chosen), "sparsity": chosen}

    def table(self) -> pd.DataFrame:
        """The chosen sparsities, one row per method x block (blocks input first): columns ``method``,
        ``block`` (the label), ``sparsity`` and ``layers`` (the block's layer names, comma-joined). The format
        of notebook 04's ``04_sparsity_calibration.csv``; ``spade-run merge --experiment calibrate``'s
        ``sparsity.csv`` is the same without ``layers``. :meth:`from_table` reads either back."""
        rows = [
            dict(method=m, block=b, sparsity=float(v[b]), layers=",".join(self.blocks[b]))
            for m, v in self.sparsity.items()
            for b in self.blocks
        ]
        return pd.DataFrame(rows, columns=["method", "block", "sparsity", "layers"])

    @classmethod
    def from_table(cls, model: nn.Module, table, *, skip_depthwise: bool = False) -> BlockCalibration:
        """A calibration read back from :meth:`table`'s format (a DataFrame, or a CSV file's path): each block's
        ``layers`` (or, without that column, its label read as comma-joined layer names/globs, as
        :func:`calibrate_block_sparsity` labels a list of patterns) resolved on ``model`` with
        ``skip_depthwise`` as the search resolved them. ``candidates`` and ``scores``
        come back empty, ``cost`` as ``{}``. Raises ValueError naming ``table`` for missing columns, a method
        without every block, a sparsity outside [0, 1), or a label that matches no layer of ``model``."""
        if not isinstance(skip_depthwise, bool):
            raise TypeError(f"skip_depthwise must be a bool, got {type(skip_depthwise).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        patterns, sparsity = read_calibration_table(table)
        try:
            blocks = _check_blocks(model, patterns, skip_depthwise)
        except (TypeError, ValueError) as err:
            raise ValueError(f"table: {err}") from None
        return cls(
            blocks=blocks, sparsity=sparsity, candidates=pd.DataFrame(), scores=pd.DataFrame(), cost={}
        )


def read_calibration_table(table) -> tuple[dict[str, list[str]], dict[str, dict[str, float]]]:
    """``(block label -> layer names/globs, method -> block label -> sparsity)`` from a calibration table
    (:meth:`BlockCalibration.table`'s format: a DataFrame or a CSV path with columns ``method``, ``block``,
    ``sparsity`` and optionally ``layers``), checked without a model so a run can refuse a bad file before any
    work. Blocks come in the table's order. Raises ValueError naming ``table`` for an unreadable file, missing
    columns, a blank method or block, an empty layer name (``"fc,"``: an empty name would select every layer),
    a block whose ``layers`` differ between rows, a sparsity that is not a number in [0, 1), or a method that
    does not give every block exactly one sparsity."""
    if not isinstance(table, pd.DataFrame):
        if not isinstance(table, (str, os.PathLike)) and not hasattr(table, "read"):
            raise TypeError(f"table must be a DataFrame or a CSV file's path, got {type(table).__name__}")
        try:
            table = pd.read_csv(table)
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"table: cannot read {table!r} as a CSV file ({err})") from None
    missing = {"method", "block", "sparsity"} - set(table.columns)
    if missing or table.empty:
        raise ValueError(
            f"table must have rows with columns method, block, sparsity; got columns {list(table.columns)}"
        )
    for col in ["method", "block"] + (["layers"] if "layers" in table.columns else []):
        blank = [i for i, v in enumerate(table[col]) if not isinstance(v, str) or not v.strip()]
        if blank:
            raise ValueError(f"table: column {col!r} is blank or not text in row(s) {blank}")
    patterns: dict[str, list[str]] = {}
    for i, row in enumerate(table.itertuples(index=False)):
        names = [p.strip() for p in str(getattr(row, "layers", row.block)).split(",")]
        if not all(names):
            raise ValueError(f"table: row {i} names an empty layer in {names} (a stray comma?)")
        if patterns.setdefault(str(row.block), names) != names:
            raise ValueError(f"table: block {row.block!r} has different layers in different rows")
    values = pd.to_numeric(table["sparsity"], errors="coerce")
    sparsity: dict[str, dict[str, float]] = {}
    for method, group in table.assign(_value=values).groupby("method", sort=False):
        chosen: dict[str, float] = {}
        for b, raw, v in zip(group["block"], group["sparsity"], group["_value"], strict=True):
            if isinstance(raw, bool) or v != v:
                raise ValueError(f"table: sparsity of {method!r}, block {b!r} must be a number, got {raw!r}")
            chosen[str(b)] = check_sparsity(float(v), f"table's sparsity of {method!r}, block {b!r}")
        if sorted(chosen) != sorted(patterns) or len(group) != len(patterns):
            raise ValueError(f"table: method {method!r} must give each block {list(patterns)} one sparsity")
        sparsity[str(method)] = {b: chosen[b] for b in patterns}
    return patterns, sparsity


# --------------------------------------------------------------------------------------------
# checks before any work
# --------------------------------------------------------------------------------------------
def _check_samples(samples) -> list[TriggeredSample]:
    if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence):
        raise TypeError(f"samples must be a sequence of TriggeredSample, got {type(samples).__name__}")
    if len(samples) == 0:
        raise ValueError("samples is empty: the calibration needs at least one calibration sample")
    for i, s in enumerate(samples):
        if not isinstance(s, TriggeredSample):
            raise TypeError(f"samples[{i}] must be a TriggeredSample, got {type(s).__name__}")
        img, mask = s.image, s.mask
        if (
            not isinstance(img, torch.Tensor)
            or img.dim() != 3
            or img.shape[0] != 3
            or not img.is_floating_point()
        ):
            raise ValueError(f"samples[{i}].image must be a float (3, H, W) tensor in [0, 1]")
        if not bool(torch.isfinite(img).all()) or float(img.min()) < 0 or float(img.max()) > 1:
            raise ValueError(f"samples[{i}].image must hold finite values in [0, 1]")
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(img.shape[1:]):
            raise ValueError(
                f"samples[{i}].mask must be an (H, W) tensor matching its image {tuple(img.shape[1:])}"
            )
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"samples[{i}].mask must be boolean (or 0/1), got values other than 0 and 1")
        m = mask.bool()
        if not (m.any() and not m.all()):
            raise ValueError(f"samples[{i}].mask needs both trigger and background pixels")
        if isinstance(s.target, bool) or not isinstance(s.target, (int, np.integer)) or s.target < 0:
            raise ValueError(f"samples[{i}].target must be a class index (int >= 0), got {s.target!r}")
    return list(samples)


def _check_methods(methods, attribute_fn) -> list[str]:
    if isinstance(methods, (str, bytes)) or not isinstance(methods, Sequence) or not methods:
        raise TypeError("methods must be a non-empty list of saliency method names (not a single str)")
    if not all(isinstance(m, str) for m in methods):
        raise TypeError(f"methods must be names (str), got {list(methods)!r}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods holds duplicates: {list(methods)}")
    if attribute_fn is None:
        from ..saliency import SALIENCY_METHODS

        unknown = [m for m in methods if m not in SALIENCY_METHODS]
        if unknown:
            raise ValueError(f"methods {unknown} are not in SALIENCY_METHODS {SALIENCY_METHODS}")
    return list(methods)


def _check_grid(grid) -> list[float]:
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence) or len(grid) == 0:
        raise TypeError("grid must be a non-empty sequence of sparsities in [0, 1)")
    values = [check_sparsity(v, f"grid[{i}]") for i, v in enumerate(grid)]
    if len(set(values)) != len(values):
        raise ValueError(f"grid holds duplicates: {list(grid)}")
    return sorted(values)


def _check_blocks(model: nn.Module, blocks, skip_depthwise: bool) -> dict[str, list[str]]:
    """Block label -> layer names (model order), blocks in the order given; refuses overlaps and weights
    shared across blocks (a shared weight gets one sparsity)."""
    if isinstance(blocks, Mapping):
        items = list(blocks.items())
        if not all(isinstance(k, str) for k, _ in items):
            raise TypeError("blocks: the labels (mapping keys) must be str")
    elif isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence):
        raise TypeError(
            "blocks must be a list of blocks (each a layer name/glob or a list of them), input first, or a "
            f"mapping label -> such a block; got {type(blocks).__name__}"
        )
    else:
        items = []
        for b in blocks:
            label = b if isinstance(b, str) else ",".join(b) if isinstance(b, Sequence) else repr(b)
            items.append((label, b))
    if not items:
        raise ValueError("blocks is empty")
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for label, patterns in items:
        if label in out:
            raise ValueError(f"blocks: the label {label!r} appears twice")
        if not isinstance(patterns, str):
            if (
                not isinstance(patterns, Sequence)
                or not patterns
                or not all(isinstance(p, str) for p in patterns)
            ):
                raise TypeError(f"blocks[{label!r}] must be a layer name/glob or a non-empty list of them")
            patterns = list(patterns)
        try:  # stacklevel 5 (+1 inside choose_layers): the warning names the line calling calibrate_block_sparsity
            names = list(choose_layers(model, patterns, skip_depthwise=skip_depthwise, stacklevel=5).layers)
        except (TypeError, ValueError) as err:
            raise type(err)(f"blocks[{label!r}]: {err}") from err
        twice = [n for n in names if n in owner]
        if twice:
            raise ValueError(f"blocks[{label!r}] and blocks[{owner[twice[0]]!r}] both hold layers {twice}")
        owner.update({n: str(label) for n in names})
        out[label] = names
    inner, _ = unwrap_model(model)
    named = dict(inner.named_modules())
    try:
        groups = shared_weight_groups(inner, {n: named[n] for n in owner})
    except (TypeError, ValueError) as err:
        raise type(err)(f"blocks: {err}") from err
    for names in groups:
        labels = sorted({owner[n] for n in names})
        if len(labels) > 1:
            raise ValueError(f"blocks: layers {names} share one weight but sit in different blocks {labels}")
    return out


def _check_search_arguments(
    model: nn.Module,
    samples,
    blocks,
    methods,
    grid,
    value,
    attribute_fn,
    attribute_kwargs,
    skip_depthwise: bool,
) -> tuple[list[TriggeredSample], list[str], list[float], dict[str, list[str]]]:
    """The search's own arguments, checked in this order before any work: (samples, methods, the grid sorted,
    block label -> layer names)."""
    samples = _check_samples(samples)
    if attribute_fn is not None and not callable(attribute_fn):
        raise TypeError(f"attribute_fn must be callable or None, got {type(attribute_fn).__name__}")
    if attribute_kwargs is not None and not isinstance(attribute_kwargs, Mapping):
        raise TypeError(f"attribute_kwargs must be a mapping or None, got {type(attribute_kwargs).__name__}")
    methods = _check_methods(methods, attribute_fn)
    values = _check_grid(grid)
    if not isinstance(value, str) or value not in _VALUES:
        raise ValueError(f"value must be one of {_VALUES}, got {value!r}")
    return samples, methods, values, _check_blocks(model, blocks, skip_depthwise)


def _subset(stats: LayerStatistics, names: Sequence[str]) -> LayerStatistics:
    return LayerStatistics(
        {n: stats.hessians[n] for n in names},
        {n: stats.counts[n] for n in names},
        stats.n_views,
        dict(stats.seconds),
        {n: stats.pre_pad[n] for n in names if n in stats.pre_pad},
        stats.channels_last,
    )


# --------------------------------------------------------------------------------------------
# the search
# --------------------------------------------------------------------------------------------
def _working_copy(
    model: nn.Module, block_layers: dict[str, list[str]], samples: list[TriggeredSample], dev: torch.device
) -> tuple[nn.Module, dict[str, nn.Module]]:
    """(a deep copy of the model inside its wrappers, in eval mode on ``dev``; its searched layers by name),
    refusing a target that is not a class of the model (one forward pass on the copy)."""
    inner, _ = unwrap_model(model)
    work = copy.deepcopy(inner).to(dev).eval()
    named = dict(work.named_modules())
    layers = {n: named[n] for names in block_layers.values() for n in names}
    with torch.no_grad():  # the targets must be classes of the model (a forward pass on the copy)
        n_classes = int(
            work(normalize(samples[0].image.float(), model).to(dev, next(work.parameters()).dtype)).shape[1]
        )
    bad = [(i, s.target) for i, s in enumerate(samples) if s.target >= n_classes]
    if bad:
        raise ValueError(
            f"samples[{bad[0][0]}].target {bad[0][1]} is not a class of the model ({n_classes} outputs)"
        )
    return work, layers


@dataclass
class _Search:
    """One greedy search in progress: the working copy and its layers, each sample's statistics, the solved
    weights ``(sample, block, sparsity) -> layer -> weight``, each method's choices so far, the scores of every
    configuration tried (reused when a configuration repeats), the result rows and what the search cost."""

    work: nn.Module
    layers: dict[str, nn.Module]
    samples: list[TriggeredSample]
    block_layers: dict[str, list[str]]
    methods: list[str]
    values: list[float]
    value: str
    solver: str
    solver_options: Mapping | None
    device: torch.device
    attribute_fn: Callable | None
    attribute_kwargs: dict
    bar: Any
    stats: list[LayerStatistics] = field(default_factory=list)
    stats_bytes: int = 0
    solved: dict[tuple[int, str, float], dict[str, torch.Tensor]] = field(default_factory=dict)
    decided: dict[str, dict[str, float]] = field(default_factory=dict)
    scored: dict[tuple[str, tuple[float, ...]], pd.DataFrame] = field(default_factory=dict)
    cand_rows: list[dict] = field(default_factory=list)
    score_frames: list[pd.DataFrame] = field(default_factory=list)
    seconds: dict[str, float] = field(
        default_factory=lambda: {"statistics": 0.0, "solve": 0.0, "saliency": 0.0}
    )
    counts: dict[str, int] = field(
        default_factory=lambda: {"block_solves": 0, "layer_solves": 0, "saliency_evaluations": 0}
    )
    units: dict[str, list[str]] = field(default_factory=dict)  # search label -> the methods it averages

    def __post_init__(self) -> None:
        self.decided = {m: {} for m in self.methods}
        if not self.units:
            self.units = {m: [m] for m in self.methods}

    def record(self, views_of: list, n_augment: int, **options) -> None:
        """Every sample's statistics, once (they do not depend on any sparsity), held in host memory."""
        for aug, spec, img in views_of:
            t0 = time.perf_counter()
            st = record_statistics(
                self.work,
                self.layers,
                img,
                aug,
                n_augment,
                **options,
                progress=False,
                input_spec=spec,
                fn_name="calibrate_block_sparsity",
            )[n_augment]
            hessians = {n: h.cpu() for n, h in st.hessians.items()}
            self.stats_bytes += sum(h.numel() * h.element_size() for h in hessians.values())
            self.stats.append(
                LayerStatistics(hessians, st.counts, st.n_views, st.seconds, st.pre_pad, st.channels_last)
            )
            self.seconds["statistics"] += time.perf_counter() - t0
            self.bar.update(1)

    def solve_block(self, label: str) -> None:
        """Every non-zero grid value of block ``label``, for every sample, solved once for all methods; then
        this block's statistics are dropped."""
        names = self.block_layers[label]
        for i in range(len(self.samples)):
            sub = _subset(self.stats[i], names)
            for s in self.values:
                if s > 0:
                    t0 = time.perf_counter()
                    self.solved[(i, label, s)], _ = solve_layers(
                        self.work,
                        sub,
                        s,
                        solver=self.solver,
                        solver_options=self.solver_options,
                        device=self.device,
                    )
                    self.seconds["solve"] += time.perf_counter() - t0
                    self.counts["block_solves"] += 1
                    self.counts["layer_solves"] += len(names)
            for n in names:  # this block's statistics are not needed any more
                del self.stats[i].hessians[n]

    def evaluate(self, method: str, config: dict[str, float]) -> pd.DataFrame:
        """The per-sample scores of search ``method`` (each of its saliency methods, :attr:`units`) with every
        block at its ``config`` sparsity (0: dense)."""
        rows = []
        for i, sample in enumerate(self.samples):
            sparse: dict[str, torch.Tensor] = {}
            for b, s in config.items():
                if s > 0:
                    sparse.update(self.solved[(i, b, s)])
            t0 = time.perf_counter()
            with swapped_weights(self.layers, sparse):
                df, _ = trojan_saliency_scores(
                    {"candidate": self.work},
                    [sample],
                    self.units[method],
                    attribute_fn=self.attribute_fn,
                    attribute_kwargs=self.attribute_kwargs,
                    progress=False,
                )
            self.seconds["saliency"] += time.perf_counter() - t0
            self.counts["saliency_evaluations"] += 1
            rows.append(df.assign(sample=i))
        return pd.concat(rows, ignore_index=True).drop(columns="variant")

    def search_block(self, method: str, step: int, label: str) -> None:
        """Try every grid value for block ``label`` (the blocks searched before at their chosen values, the
        others dense) and keep the best mean ``value``, ties to the lower sparsity."""
        labels = list(self.block_layers)
        means = []
        for s in self.values:
            config = {b: self.decided[method].get(b, 0.0) for b in labels}
            config[label] = s
            key = (method, tuple(config[b] for b in labels))
            reused = key in self.scored
            if not reused:
                self.scored[key] = self.evaluate(method, config)
            table = self.scored[key]
            mu = float(table[self.value].mean())
            if not math.isfinite(mu):
                raise RuntimeError(f"method {method!r}, config {config}: the mean {self.value} is {mu}")
            means.append(mu)
            self.cand_rows.append(
                dict(
                    method=method,
                    step=step,
                    block=label,
                    sparsity=s,
                    config=config,
                    mean=mu,
                    n=len(table),
                    chosen=False,
                    reused=reused,
                )
            )
            self.score_frames.append(table.assign(step=step, block=label, sparsity=s))
            self.bar.update(1)
        best = max(means)
        choice = min(s for s, mu in zip(self.values, means) if mu >= best - _TIE)
        self.decided[method][label] = choice
        for row in self.cand_rows[-len(self.values) :]:
            row["chosen"] = row["sparsity"] == choice

    def drop_unchosen(self, label: str) -> None:
        """Forget the solves of block ``label`` that no method chose."""
        keep = {self.decided[m][label] for m in self.methods}
        for stale in [k for k in self.solved if k[1] == label and k[2] not in keep]:
            del self.solved[stale]

    def result(self, n_augment: int, n_candidates: int, t_start: float) -> BlockCalibration:
        self.seconds["total"] = time.perf_counter() - t_start
        n_samples = len(self.samples)
        cost = dict(
            samples=n_samples,
            statistics_passes=n_samples,
            views=n_samples * n_augment,
            **self.counts,
            candidates=n_candidates,
            naive_traces=n_candidates * n_samples,
            statistics_bytes=self.stats_bytes,
            seconds=self.seconds,
        )
        scores = pd.concat(self.score_frames, ignore_index=True) if self.score_frames else pd.DataFrame()
        return BlockCalibration(
            blocks=self.block_layers,
            sparsity={m: {b: self.decided[m][b] for b in self.block_layers} for m in self.methods},
            candidates=pd.DataFrame(self.cand_rows),
            scores=scores,
            cost=cost,
        )


def block_groups(patterns: Sequence[str], n: int | None) -> list[list[str]]:
    """Layer patterns grouped into ``n`` calibration blocks of consecutive patterns, the last pattern (the
    classifier) alone in the last block; ``None`` or ``n >= len(patterns)``: one block per pattern. The other
    ``n - 1`` blocks split the rest as evenly as rounding allows. Raises TypeError naming the argument for
    ``patterns`` that is not a list/tuple of strings or an ``n`` that is not an int, ValueError for no patterns, a
    pattern given twice or ``n < 2``."""
    if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"patterns must be a list of layer patterns, got {patterns!r}")
    if not patterns or len(set(patterns)) != len(patterns):
        raise ValueError(f"patterns must be non-empty and each pattern given once, got {list(patterns)}")
    patterns = list(patterns)
    if n is not None:
        n = check_int(n, "n", minimum=2)
    if n is None or n >= len(patterns):
        return [[p] for p in patterns]
    body = patterns[:-1]
    cuts = [round(k * len(body) / (n - 1)) for k in range(n)]
    return [body[a:b] for a, b in zip(cuts, cuts[1:])] + [patterns[-1:]]


def calibrate_block_sparsity(
    model: nn.Module,
    samples: Sequence[TriggeredSample],
    blocks,
    methods: Sequence[str],
    *,
    grid: Sequence[float] = PAPER_GRID,
    value: str = "auc",
    n_augment: int = 128,
    augment: Callable | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    solver: str = "sparsegpt",
    solver_options: Mapping | None = None,
    batch_size: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    skip_depthwise: bool = False,
    device: str | torch.device = "auto",
    attribute_fn: Callable | None = None,
    attribute_kwargs: Mapping | None = None,
    pool_methods: bool = False,
    progress: bool = True,
) -> BlockCalibration:
    """Greedy per-block sparsity search of the SPADE paper, per saliency method, on calibration samples.

    For every method independently: the blocks are visited from the last (the classifier) to the first; at
    each, every ``grid`` value is tried with the blocks already visited at their chosen values and the blocks
    not yet visited dense (never pruned), and the block keeps the value whose saliency maps have the best mean
    ``value`` over ``samples``. Ties (means within 1e-12) go to the **lower** sparsity: a block is pruned only
    when pruning it helps, so a block the metric cannot see stays dense and the choice does not depend on the
    grid's order. A sparsity of 0 means the block's dense weights (no solve). Every sample's trace uses the
    same ``seed`` for its views, as :func:`~spade_utils.spade.spade_trace` with that seed would.

    Parameters
    ----------
    model : nn.Module
        The (backdoored) classifier; never modified: statistics, solves and attributions run on a deep copy on
        ``device`` (the caller's weights, train/eval flags, hooks, dtype and device are left as found).
    samples : sequence of :class:`~spade_utils.backdoor.TriggeredSample`
        Calibration samples (never the evaluation samples): ``image`` (3, H, W) in [0, 1], ``mask`` (H, W)
        with trigger and background pixels, ``target`` the class the saliency map explains.
    blocks : list of blocks, input first, or a mapping label -> block
        Each block a layer name/glob or a list of them (``[["layer4.0.*"], ["layer4.1.*"], ["layer4.2.*"],
        ["fc"]]``); the last is searched first. Labels: the mapping's keys, else the patterns joined by ",".
        Blocks must not overlap, and layers sharing a weight must sit in one block.
    methods : list of str
        Saliency methods (:data:`spade_utils.saliency.SALIENCY_METHODS` unless ``attribute_fn`` is given).
    grid : sequence of floats in [0, 1), default :data:`PAPER_GRID` ``(0, .2, .4, .6, .8, .9, .95, .99)``.
    value : {"auc", "auc_signed", "auc_absolute", "pointing"}, default "auc"
        The column of :func:`~spade_utils.backdoor.trojan_saliency_scores` maximised (``"auc"``: the paper's
        Trojan AUC, the better of signed and absolute ranking per map).
    n_augment, augment, input_size, mean, std, solver, solver_options, batch_size, seed, dtype, channels_last,
    skip_depthwise
        As in :func:`~spade_utils.spade.spade_trace` (defaults 128 views, SparseGPT, batches of 64, seed 0).
    device : "auto" (CUDA when present) or a device: where the copy, the statistics and the solves live; the
        statistics are kept in host memory between solves.
    attribute_fn, attribute_kwargs : as in :func:`~spade_utils.backdoor.trojan_saliency_scores` (default
        :func:`spade_utils.saliency.attribute`, to which ``device`` is passed unless ``attribute_kwargs`` sets it).
    pool_methods : bool, default False
        False: one search per method (the paper). True: one search for all ``methods`` together, each candidate
        scored by the mean ``value`` over methods and samples; the result's method label is the methods joined
        by "+" (``"saliency+lrp"``): one configuration, so one trace per sample serves every method (a cheaper
        budget than the paper's, for the quick profile).
    progress : bool, default True: one progress bar (statistics passes, then candidates).

    Returns
    -------
    :class:`BlockCalibration` (chosen sparsity per method and block, every candidate's mean, per-sample scores,
    cost). Cost: one statistics pass per sample, at most samples x blocks x non-zero grid values block solves,
    and methods x blocks x grid values x samples attributions (fewer when a configuration repeats); the
    statistics of every sample are held in memory until their block is searched (``cost["statistics_bytes"]``).

    Raises
    ------
    TypeError / ValueError naming the argument, before any statistics pass: a bad model, samples (not
    TriggeredSample, images outside [0, 1], masks without trigger or background pixels, a target class the
    model does not have), blocks (matching no prunable layer, overlapping, sharing a weight across blocks),
    methods, grid (outside [0, 1), duplicates), value, or any of the trace arguments.
    """
    from ..spade import _check_arguments

    flags = dict(progress=progress, skip_depthwise=skip_depthwise, channels_last=channels_last)
    n_augment, batch_size, seed = _check_arguments(
        model, n_augment, batch_size, seed, solver, dtype, solver_options, augment, **flags
    )
    samples, methods, values, block_layers = _check_search_arguments(
        model, samples, blocks, methods, grid, value, attribute_fn, attribute_kwargs, skip_depthwise
    )
    dev = resolve_device(device)
    views_of = [
        resolve_augment(
            model, smp.image, augment, input_size, mean, std, device=dev, fn_name="calibrate_block_sparsity"
        )
        for smp in samples
    ]
    kwargs = dict(attribute_kwargs or {})
    if attribute_fn is None:
        kwargs.setdefault("device", dev)

    t_start = time.perf_counter()
    if not isinstance(pool_methods, bool):
        raise TypeError(f"pool_methods must be a bool, got {type(pool_methods).__name__}")
    units = {"+".join(methods): list(methods)} if pool_methods else {m: [m] for m in methods}
    work, layers = _working_copy(model, block_layers, samples, dev)
    n_candidates = len(units) * len(block_layers) * len(values)
    bar = tqdm(total=len(samples) + n_candidates, desc="calibration", disable=not progress, leave=False)
    search = _Search(
        work,
        layers,
        samples,
        block_layers,
        list(units),
        values,
        value,
        solver,
        solver_options,
        dev,
        attribute_fn,
        kwargs,
        bar,
        units=units,
    )
    search.record(
        views_of, n_augment, batch_size=batch_size, seed=seed, dtype=dtype, channels_last=channels_last
    )
    for step, label in enumerate(list(block_layers)[::-1]):  # from the classifier backwards
        search.solve_block(label)
        for method in units:
            search.search_block(method, step, label)
        search.drop_unchosen(label)
    bar.close()
    return search.result(n_augment, n_candidates, t_start)


def calibration_sample_scores(
    model: nn.Module,
    sample: TriggeredSample,
    blocks,
    configs: Sequence[tuple[str, Mapping[str, float]]],
    *,
    n_augment: int = 128,
    augment: Callable | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    solver: str = "sparsegpt",
    solver_options: Mapping | None = None,
    batch_size: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    skip_depthwise: bool = False,
    device: str | torch.device = "auto",
    attribute_fn: Callable | None = None,
    attribute_kwargs: Mapping | None = None,
) -> pd.DataFrame:
    """One calibration sample scored under given block configurations: the rows :func:`calibrate_block_sparsity`
    computes for that sample, as a unit of work a sharded search (``spade-run calibrate``) runs anywhere.

    ``configs``: (method, config) pairs, ``config`` mapping every block label of ``blocks`` to a sparsity (0:
    dense), e.g. the candidates of one greedy step. The sample's statistics are recorded once (views seeded by
    ``seed``), each (block, non-zero sparsity) the configs use is solved once, and each pair is scored as
    :func:`calibrate_block_sparsity` scores it (weights swapped into a private copy,
    :func:`~spade_utils.backdoor.trojan_saliency_scores` of ``method``). Other arguments as there.

    Returns a DataFrame with the columns of ``trojan_saliency_scores`` (without ``variant``) and ``config`` (the
    index of the pair in ``configs``), one row per pair, in order. Raises TypeError/ValueError as
    :func:`calibrate_block_sparsity` does, and for a config that does not name exactly the blocks' labels or
    holds a sparsity outside [0, 1), before any work.
    """
    from ..spade import _check_arguments

    flags = dict(progress=False, skip_depthwise=skip_depthwise, channels_last=channels_last)
    n_augment, batch_size, seed = _check_arguments(
        model, n_augment, batch_size, seed, solver, dtype, solver_options, augment, **flags
    )
    if isinstance(configs, (str, bytes)) or not isinstance(configs, Sequence) or not configs:
        raise TypeError("configs must be a non-empty sequence of (method, {block label: sparsity}) pairs")
    if not all(isinstance(c, tuple) and len(c) == 2 and isinstance(c[1], Mapping) for c in configs):
        raise TypeError("configs must be a non-empty sequence of (method, {block label: sparsity}) pairs")
    methods = list(dict.fromkeys(m for m, _ in configs))
    samples, methods, _, block_layers = _check_search_arguments(
        model, [sample], blocks, methods, [0.0], "auc", attribute_fn, attribute_kwargs, skip_depthwise
    )
    for _, config in configs:
        if set(config) != set(block_layers):
            raise ValueError(f"configs: a config names {sorted(config)}, the blocks are {list(block_layers)}")
        for s in config.values():
            check_sparsity(s)
    dev = resolve_device(device)
    views_of = [
        resolve_augment(
            model,
            sample.image,
            augment,
            input_size,
            mean,
            std,
            device=dev,
            fn_name="calibration_sample_scores",
        )
    ]
    kwargs = dict(attribute_kwargs or {})
    if attribute_fn is None:
        kwargs.setdefault("device", dev)
    work, layers = _working_copy(model, block_layers, samples, dev)
    bar = tqdm(total=1, disable=True)
    search = _Search(
        work,
        layers,
        samples,
        block_layers,
        methods,
        [],
        "auc",
        solver,
        solver_options,
        dev,
        attribute_fn,
        kwargs,
        bar,
    )
    search.record(
        views_of, n_augment, batch_size=batch_size, seed=seed, dtype=dtype, channels_last=channels_last
    )
    for label in block_layers:
        search.values = sorted({float(c[label]) for _, c in configs if c[label] > 0})
        search.solve_block(label)
    frames = [
        search.evaluate(method, {b: float(s) for b, s in config.items()}).assign(config=j)
        for j, (method, config) in enumerate(configs)
    ]
    return pd.concat(frames, ignore_index=True).drop(columns="sample")
