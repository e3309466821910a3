"""FastSPADE*: SPADE traces whose sparsity is tuned, per saliency method, for insertion AUC on calibration images.

The SPADE paper's Table 2 (Moakhar, Iofinova, Frantar, Alistarh, ICML 2024, arXiv 2310.04519) has a column
FastSPADE*: FastSPADE (SPADE with SparseGPT) with its sparsity tuned for the insertion metric. Tuning on the images
that are then scored would grade the search on its own training set, so here the search sees **calibration
images only**, and the chosen sparsity is then applied to the held-out images:

1. :func:`tune_sparsity_on_insertion`: for every calibration image, one statistics pass on its augmented views
   (the statistics do not depend on the sparsity) and one solve per non-zero grid value; for every saliency
   method and grid value, the maps of each calibration image's own trace are scored by insertion AUC on the dense
   network; each method keeps the value with the best mean (ties: the lower sparsity; 0 is the dense network).
2. :func:`score_with_tuned_sparsity`: each held-out image's trace at its method's chosen sparsity, scored by
   insertion and deletion AUC like every other column of the table.

One sparsity for all traced layers (a *global* sparsity per method), not the paper's per-block values; the
per-block greedy search of the paper's appendix is :func:`spade_utils.backdoor.calibrate_block_sparsity` (for
Trojan AUC). A trace here equals :func:`spade_utils.spade.spade_trace` with the same layers, views, seed and
solver (the tests check it against one full trace per candidate).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .augment import augment_image
from .data import preprocess
from .intervals import interval_text, paired_bootstrap_diff
from .layer_select import choose_layers
from .metrics import (
    MIN_CLEAN_PROB,
    curve_auc,
    insertion_deletion_auc,
    insertion_deletion_curves,
    pixel_counts,
)
from .runtime import eval_mode, model_device, resolve_device
from .saliency import SALIENCY_METHODS, attribute
from .solvers import SOLVERS
from .trace_steps import record_statistics, resolve_augment, solve_layers, swapped_weights
from .validation import check_class_index, check_positive_int, check_seed, check_sparsity

__all__ = [
    "PAPER_TABLE2",
    "QUICK_GRID",
    "InsertionSample",
    "InsertionTuning",
    "auc_scorer",
    "beside_paper_table2",
    "explained_inputs",
    "score_with_tuned_sparsity",
    "tune_sparsity_on_insertion",
]

QUICK_GRID = (0.5, 0.7, 0.9)
"""A small sparsity grid for quick runs (the paper's is :data:`spade_utils.backdoor.PAPER_GRID`)."""

PAPER_TABLE2 = {
    "Dense": {"insertion": 44.18, "deletion": 10.62},
    "FastSPADE": {"insertion": 47.20, "deletion": 9.82},
    "FastSPADE*": {"insertion": 47.25, "deletion": 9.81},
    "Sparse FC": {"insertion": 44.64, "deletion": 10.91},
}
"""The SPADE paper's Table 2, averaged over its saliency methods: insertion and deletion AUC in percent for each
column (ResNet-50, ImageNet validation images, each explained for its true class). The one copy of these numbers:
notebook 03 prints them beside its own and REPRODUCE.md's text is checked against them
(``tests/test_readme_numbers.py``)."""

_TIE = 1e-12  # candidates whose means are within this of the best are tied (the lower sparsity wins)

Scorer = Callable[[nn.Module, torch.Tensor, torch.Tensor, str], Mapping[str, Any]]
"""``score(explainer, inputs, targets, method) -> {"insertion": (B,), "deletion": (B,)}``."""


@dataclass(frozen=True)
class InsertionSample:
    """One image that gets a trace, and the inputs explained and scored with that trace.

    ``name``: a label (unique among the samples of one call); ``image``: the photo whose augmented views build
    the trace (PIL image, array or (3, H, W) tensor in [0, 1]); ``inputs``: (B, 3, h, w) images normalised as the
    model expects (held-out crops of the photo, or the image itself); ``targets``: (B,) the class each input's map
    explains; ``ids``: optional B labels of the inputs in the result tables (default ``"name/k"``)."""

    name: str
    image: Any
    inputs: torch.Tensor
    targets: torch.Tensor | Sequence[int]
    ids: Sequence | None = None

    def input_ids(self) -> list:
        """The labels of the inputs in result tables: ``ids``, or ``"name/k"`` for input k."""
        return (
            list(self.ids) if self.ids is not None else [f"{self.name}/{k}" for k in range(len(self.inputs))]
        )


@dataclass(frozen=True)
class InsertionTuning:
    """The result of :func:`tune_sparsity_on_insertion`.

    ``sparsity``: method -> the chosen sparsity (0.0: the dense network); ``candidates``: one row per method x grid
    value: ``method``, ``sparsity``, ``insertion`` (mean over every calibration input), ``n`` (inputs), ``chosen``;
    ``scores``: the per-input rows behind them: ``image`` (input id), ``sample``, ``method``, ``sparsity``,
    ``insertion``; ``calibration``: the names of the calibration samples."""

    sparsity: dict[str, float]
    candidates: pd.DataFrame
    scores: pd.DataFrame
    calibration: tuple[str, ...]


def explained_inputs(
    model: nn.Module,
    images: Mapping[str, Any],
    *,
    labels: Mapping[str, int] | None = None,
    crops_per_image: int = 1,
    seed: int = 0,
) -> tuple[list[InsertionSample], list[str]]:
    """The inputs an insertion/deletion table explains, one :class:`InsertionSample` per image (name -> image).

    With ``labels`` (name -> true class; the paper's protocol for ImageNet validation images): each image itself,
    :func:`~spade_utils.data.preprocess`-ed (resize 256, centre crop 224), explained for its true class; an image
    whose true class the dense ``model`` gives a probability below
    :data:`~spade_utils.metrics.MIN_CLEAN_PROB` is set aside (insertion and deletion are relative to that
    probability) and its name returned. Without: ``crops_per_image`` held-out crops of each image
    (:func:`~spade_utils.augment.augment_image` with ``seed``: use another seed than the trace's views), each
    explained for the dense top-1 class on it. Input ids are ``"name/k"``, k counting the explained inputs over
    all images in order. Returns ``(samples, set_aside)``. Raises TypeError/ValueError naming the argument for an
    empty ``images``, labels that do not cover them, or every image set aside."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(images, Mapping) or not images:
        raise TypeError("images must be a non-empty mapping name -> image")
    crops_per_image = check_positive_int(crops_per_image, "crops_per_image")
    seed = check_seed(seed)
    if labels is not None:
        if not isinstance(labels, Mapping) or set(labels) != set(images):
            raise ValueError("labels must map exactly the names of images to classes")
        labels = {n: check_class_index(labels[n], f"labels[{n!r}]") for n in images}
        groups = {n: preprocess(img) for n, img in images.items()}
    else:
        groups = {n: augment_image(img, crops_per_image, seed=seed) for n, img in images.items()}
    device, samples, set_aside, k = model_device(model), [], [], 0
    with torch.no_grad(), eval_mode(model):  # BatchNorm statistics are read, never updated
        for name, inputs in groups.items():
            probs = model(inputs.to(device)).softmax(1).cpu()
            if labels is not None:
                if labels[name] >= probs.shape[1]:
                    raise ValueError(
                        f"labels[{name!r}]: class {labels[name]} of a model with {probs.shape[1]}"
                    )
                targets = torch.tensor([labels[name]])
                if float(probs[0, targets[0]]) < MIN_CLEAN_PROB:
                    set_aside.append(name)
                    continue
            else:
                targets = probs.argmax(1)
            ids = [f"{name}/{k + j}" for j in range(len(inputs))]
            samples.append(InsertionSample(name, images[name], inputs, targets, ids=ids))
            k += len(inputs)
    if not samples:
        raise ValueError(
            f"images: the dense model gives every true class a probability below {MIN_CLEAN_PROB}; nothing to score"
        )
    return samples, set_aside


def beside_paper_table2(
    per_input: pd.DataFrame,
    columns: Sequence[str],
    *,
    baseline: str = "dense",
    paper_names: Mapping[str, str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Our insertion/deletion averages beside :data:`PAPER_TABLE2`'s, one row per column of ``columns``.

    ``per_input``: one row per explained input, method and explainer (columns ``image``, ``photo``,
    ``explainer``, ``insertion``, ``deletion``; AUCs in [0, 1]). Per column: the mean over inputs of the
    per-input average over methods, in percent; with two or more photos, the paired difference to ``baseline``
    on the same inputs and its 95% interval (:func:`~spade_utils.intervals.paired_bootstrap_diff`, photos
    then inputs resampled, ``seed``), as text; the paper's value and its difference to the paper's Dense
    (``paper_names`` maps our labels to the paper's where they differ; NaN/"" where the paper has no such
    column). Raises ValueError naming the argument for missing columns or explainers."""
    need = {"image", "photo", "explainer", "method", "insertion", "deletion"}
    if not isinstance(per_input, pd.DataFrame) or need - set(per_input.columns):
        raise ValueError(f"per_input must be a DataFrame with columns {sorted(need)}")
    if (
        isinstance(columns, str)
        or not all(isinstance(c, str) for c in columns)
        or len(set(columns)) != len(columns)
    ):
        raise TypeError(f"columns must be a list of explainer labels, each once, got {columns!r}")
    seed = check_seed(seed)
    missing = [c for c in [baseline, *columns] if c not in set(per_input["explainer"])]
    if missing:
        raise ValueError(f"columns: no rows for {missing} in per_input")
    aucs = per_input[["insertion", "deletion"]].to_numpy(dtype=float, na_value=np.nan)
    if per_input[["image", "photo", "explainer", "method"]].isna().any().any() or not (
        np.isfinite(aucs).all() and (aucs >= 0).all() and (aucs <= 1).all()
    ):
        raise ValueError("per_input: AUCs must be fractions in [0, 1] and no key may be missing")
    if per_input.duplicated(["image", "explainer", "method"]).any():
        raise ValueError("per_input has more than one row for some (image, explainer, method)")
    if per_input.groupby("image")["photo"].nunique().gt(1).any():
        raise ValueError("per_input gives one image two photos")
    per_method = per_input.groupby(["explainer", "image"])["method"].nunique()
    if per_method.nunique() != 1 or per_input.groupby("explainer")["image"].nunique().nunique() != 1:
        raise ValueError("per_input: every explainer must score the same inputs with the same methods")
    names = {baseline: "Dense", **(paper_names or {})}
    per = per_input.pivot_table(
        index=["image", "photo"], columns="explainer", values=["insertion", "deletion"]
    )
    photos = per.index.get_level_values("photo").to_numpy()
    rows = []
    for col in columns:
        paper = PAPER_TABLE2.get(names.get(col, col), {})
        row: dict[str, Any] = {"column": col}
        for metric in ("insertion", "deletion"):
            row[f"{metric} (ours)"] = 100 * per[metric][col].mean()
            row[f"{metric} (paper)"] = paper.get(metric, float("nan"))
            row[f"{metric} − dense (ours)"] = ""
            if col != baseline and len(set(photos)) >= 2:
                d, lo, hi = paired_bootstrap_diff(
                    per[metric][col].to_numpy(), per[metric][baseline].to_numpy(), photos, seed=seed
                )
                row[f"{metric} − dense (ours)"] = interval_text(d, lo, hi, signed=True)
            dense = PAPER_TABLE2["Dense"][metric]
            row[f"{metric} − dense (paper)"] = (
                f"{paper[metric] - dense:+.2f}" if paper and col != baseline else ""
            )
        rows.append(row)
    return pd.DataFrame(rows)


def auc_scorer(
    model: nn.Module,
    *,
    auc_steps: int = 100,
    modes: Sequence[str] = ("insertion", "deletion"),
    batch_size: int = 50,
    device: str | torch.device = "auto",
    **attribute_options,
) -> Scorer:
    """The default scorer: ``score(explainer, inputs, targets, method)`` computes ``method``'s maps of
    ``explainer`` (:func:`spade_utils.saliency.attribute` with ``attribute_options``) and scores them on the dense
    ``model`` by insertion and/or deletion AUC (``modes``) with ``auc_steps`` steps, exactly as
    :func:`spade_utils.metrics.insertion_deletion_auc` does. Returns ``{mode: (B,) float64 numpy}``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    auc_steps = check_positive_int(auc_steps, "auc_steps")
    if isinstance(modes, str) or not modes or not set(modes) <= {"insertion", "deletion"}:
        raise ValueError(f"modes must be a list drawn from ('insertion', 'deletion'), got {modes!r}")
    modes = list(modes)

    def score(explainer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, method: str) -> dict:
        maps = attribute(explainer, inputs, targets, method, device=device, **attribute_options)
        if len(modes) == 2:
            return insertion_deletion_auc(
                model, inputs, maps, targets, n_steps=auc_steps, batch_size=batch_size, device=device
            )
        curves = insertion_deletion_curves(
            model,
            inputs,
            maps,
            targets,
            mode=modes[0],
            n_steps=auc_steps,
            batch_size=batch_size,
            device=device,
        )
        n_pixels = inputs.shape[-2] * inputs.shape[-1]
        return {modes[0]: curve_auc(curves, pixel_counts(auc_steps, n_pixels) / n_pixels)}

    return score


# --------------------------------------------------------------------------------------------
# checks before any work
# --------------------------------------------------------------------------------------------
def _check_samples(samples, argname: str) -> list[InsertionSample]:
    if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence):
        raise TypeError(f"{argname} must be a sequence of InsertionSample, got {type(samples).__name__}")
    if len(samples) == 0:
        raise ValueError(f"{argname} is empty")
    names = set()
    for i, s in enumerate(samples):
        if not isinstance(s, InsertionSample):
            raise TypeError(f"{argname}[{i}] must be an InsertionSample, got {type(s).__name__}")
        if s.name in names:
            raise ValueError(f"{argname}: the name {s.name!r} appears twice")
        names.add(s.name)
        x = s.inputs
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"{argname}[{i}].inputs must be a float (B, 3, H, W) tensor")
        if len(x) == 0 or not bool(torch.isfinite(x).all()):
            raise ValueError(f"{argname}[{i}].inputs must hold at least one image, all values finite")
        t = s.targets
        if isinstance(t, (str, bytes)) or not hasattr(t, "__len__") or len(t) != len(x):
            raise ValueError(f"{argname}[{i}].targets must hold one class per input ({len(x)})")
        for k, v in enumerate(t.tolist() if isinstance(t, torch.Tensor) else t):
            check_class_index(v, f"{argname}[{i}].targets[{k}]")
        if s.ids is not None and len(list(s.ids)) != len(x):
            raise ValueError(f"{argname}[{i}].ids must hold one label per input ({len(x)})")
    return list(samples)


def _check_methods(methods, score_fn) -> list[str]:
    if isinstance(methods, (str, bytes)) or not isinstance(methods, Sequence) or not methods:
        raise TypeError("methods must be a non-empty list of saliency method names (not a single str)")
    if not all(isinstance(m, str) for m in methods):
        raise TypeError(f"methods must be names (str), got {list(methods)!r}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods holds duplicates: {list(methods)}")
    unknown = [m for m in methods if m not in SALIENCY_METHODS]
    if score_fn is None and unknown:
        raise ValueError(f"methods {unknown} are not in SALIENCY_METHODS {SALIENCY_METHODS}")
    return list(methods)


def _check_grid(grid) -> list[float]:
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence) or len(grid) == 0:
        raise TypeError("grid must be a non-empty sequence of sparsities in [0, 1)")
    values = [check_sparsity(v, f"grid[{i}]") for i, v in enumerate(grid)]
    if len(set(values)) != len(values):
        raise ValueError(f"grid holds duplicates: {list(grid)}")
    return sorted(values)


@dataclass(frozen=True)
class _Tracer:
    """The trace settings shared by calibration and scoring, checked once; ``solves`` builds one sample's sparse
    weights at several sparsities from one statistics pass on a private copy of the model."""

    work: nn.Module
    layers: dict[str, nn.Module]
    n_augment: int
    solver: str
    batch_size: int
    seed: int
    device: torch.device

    @classmethod
    def build(cls, model, layers, n_augment, solver, batch_size, seed, skip_depthwise, device) -> _Tracer:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        n_augment = check_positive_int(n_augment, "n_augment")
        batch_size = check_positive_int(batch_size, "batch_size")
        seed = check_seed(seed)
        if not isinstance(solver, str) or solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        if not isinstance(skip_depthwise, bool):
            raise TypeError(f"skip_depthwise must be a bool, got {type(skip_depthwise).__name__}")
        dev = resolve_device(device)
        work = copy.deepcopy(model).to(dev).eval()
        chosen = choose_layers(work, layers, skip_depthwise=skip_depthwise, stacklevel=4).layers
        return cls(work, dict(chosen), n_augment, solver, batch_size, seed, dev)

    def check_targets(self, samples: list[InsertionSample], argname: str) -> None:
        """Every target must be a class of the model (one forward pass of one input)."""
        first = samples[0].inputs[:1].to(self.device, next(self.work.parameters()).dtype)
        with torch.no_grad():
            n_classes = int(self.work(first).shape[1])
        for i, s in enumerate(samples):
            t = s.targets.tolist() if isinstance(s.targets, torch.Tensor) else list(s.targets)
            if max(t) >= n_classes:
                raise ValueError(
                    f"{argname}[{i}].targets: class {max(t)} is not one of the {n_classes} outputs"
                )

    def solves(self, image, values) -> dict[float, dict[str, torch.Tensor]]:
        aug, spec, img = resolve_augment(
            self.work, image, None, device=self.device, fn_name="insertion tuning", sample_name="image"
        )
        stats = record_statistics(
            self.work,
            self.layers,
            img,
            aug,
            self.n_augment,
            batch_size=self.batch_size,
            seed=self.seed,
            progress=False,
            input_spec=spec,
            fn_name="insertion tuning",
        )[self.n_augment]
        return {s: solve_layers(self.work, stats, s, solver=self.solver)[0] for s in values if s > 0}

    def score(self, score_fn, sparse, sample: InsertionSample, method: str) -> Mapping[str, Any]:
        targets = torch.as_tensor(sample.targets).long()
        with swapped_weights(self.layers, sparse):
            return score_fn(self.work, sample.inputs, targets, method)


def _scorer(model, score_fn, auc_steps, attribute_kwargs, modes, device) -> Scorer:
    if score_fn is not None:
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable or None, got {type(score_fn).__name__}")
        return score_fn
    if attribute_kwargs is not None and not isinstance(attribute_kwargs, Mapping):
        raise TypeError(f"attribute_kwargs must be a mapping or None, got {type(attribute_kwargs).__name__}")
    return auc_scorer(model, auc_steps=auc_steps, modes=modes, device=device, **dict(attribute_kwargs or {}))


# --------------------------------------------------------------------------------------------
# the two steps
# --------------------------------------------------------------------------------------------
def tune_sparsity_on_insertion(
    model: nn.Module,
    calibration: Sequence[InsertionSample],
    methods: Sequence[str],
    *,
    layers,
    grid: Sequence[float] = QUICK_GRID,
    n_augment: int = 128,
    solver: str = "sparsegpt",
    batch_size: int = 64,
    seed: int = 0,
    skip_depthwise: bool = False,
    auc_steps: int = 100,
    attribute_kwargs: Mapping | None = None,
    score_fn: Scorer | None = None,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> InsertionTuning:
    """For every saliency method, the trace sparsity with the best mean insertion AUC on calibration images.

    Each calibration sample gets its own trace (the views of ``sample.image``; ``layers``, ``n_augment``,
    ``solver``, ``batch_size``, ``seed``, ``skip_depthwise`` as in :func:`spade_utils.spade.spade_trace`) at every
    ``grid`` value; its ``inputs`` are explained with that trace and scored on the dense ``model``. Only the
    calibration samples are seen: the held-out images are scored afterwards by :func:`score_with_tuned_sparsity`.

    Parameters
    ----------
    model : the dense classifier; never modified (traces and maps use a private copy on ``device``).
    calibration : sequence of :class:`InsertionSample`, the calibration images (never the scored ones).
    methods : saliency method names (:data:`spade_utils.saliency.SALIENCY_METHODS` unless ``score_fn`` is given).
    grid : sparsities in [0, 1), default :data:`QUICK_GRID` (0.5, 0.7, 0.9); 0 means the dense network. The
        paper's grid is ``spade_utils.backdoor.PAPER_GRID`` (0, .2, .4, .6, .8, .9, .95, .99).
    auc_steps, attribute_kwargs : steps of the insertion curve and options of
        :func:`spade_utils.saliency.attribute`, for the default scorer :func:`auc_scorer`.
    score_fn : optional ``score(explainer, inputs, targets, method) -> {"insertion": (B,) ...}`` replacing it.
    device : "auto" (CUDA when present) or a device. progress : a tqdm bar over calibration samples.

    Returns
    -------
    :class:`InsertionTuning`. Cost: one statistics pass and ``len(grid)`` (non-zero values) solves per
    calibration sample, ``len(methods) * len(grid)`` attribution calls per calibration sample.

    Raises
    ------
    TypeError / ValueError naming the argument, before any statistics pass: a model that is not an
    ``nn.Module``, empty or malformed samples (inputs not (B, 3, H, W) finite floats, a target per input that is
    not a class of the model, duplicate names), unknown or duplicate methods, a grid value outside [0, 1) or
    repeated, bad trace arguments, layers matching nothing prunable, a score_fn that is not callable.
    """
    from .widgets import progress_bar as tqdm

    calibration = _check_samples(calibration, "calibration")
    methods = _check_methods(methods, score_fn)
    values = _check_grid(grid)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
    score = _scorer(model, score_fn, auc_steps, attribute_kwargs, ("insertion",), device)
    tracer = _Tracer.build(model, layers, n_augment, solver, batch_size, seed, skip_depthwise, device)
    tracer.check_targets(calibration, "calibration")

    rows = []
    for sample in tqdm(calibration, desc="insertion tuning", disable=not progress, leave=False):
        solved = tracer.solves(sample.image, values)
        for method in methods:
            for s in values:
                aucs = tracer.score(score, solved.get(s, {}), sample, method)
                ins = np.asarray(aucs["insertion"], dtype=np.float64).reshape(-1)
                for image, v in zip(sample.input_ids(), ins, strict=True):
                    rows.append(dict(image=image, sample=sample.name, method=method, sparsity=s, insertion=v))
    scores = pd.DataFrame(rows)
    candidates = scores.groupby(["method", "sparsity"], sort=False)["insertion"].agg(["mean", "size"])
    candidates = candidates.rename(columns={"mean": "insertion", "size": "n"}).reset_index()
    chosen = {}
    for method in methods:
        sub = candidates[candidates["method"] == method]
        if not np.isfinite(sub["insertion"]).all():
            raise RuntimeError(
                f"method {method!r}: a mean insertion AUC is not finite: {sub.to_dict('records')}"
            )
        best = float(sub["insertion"].max())
        chosen[method] = float(sub.loc[sub["insertion"] >= best - _TIE, "sparsity"].min())
    candidates["chosen"] = [
        chosen[m] == s for m, s in zip(candidates["method"], candidates["sparsity"], strict=True)
    ]
    return InsertionTuning(chosen, candidates, scores, tuple(s.name for s in calibration))


def score_with_tuned_sparsity(
    model: nn.Module,
    samples: Sequence[InsertionSample],
    tuning: InsertionTuning,
    *,
    layers,
    label: str = "FastSPADE*",
    n_augment: int = 128,
    solver: str = "sparsegpt",
    batch_size: int = 64,
    seed: int = 0,
    skip_depthwise: bool = False,
    auc_steps: int = 100,
    attribute_kwargs: Mapping | None = None,
    score_fn: Scorer | None = None,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> pd.DataFrame:
    """Insertion and deletion AUC of held-out ``samples`` explained with their traces at ``tuning``'s sparsities.

    Each sample's trace (its own views; the trace arguments as in :func:`tune_sparsity_on_insertion`, and they
    should be the same) is solved once per distinct chosen sparsity; each method's maps use its own chosen
    sparsity and are scored on the dense ``model``. Returns a long DataFrame with the columns of
    :func:`spade_utils.saliency.attribution_aucs` (``image``, ``method``, ``explainer`` = ``label``,
    ``insertion``, ``deletion``) plus ``sparsity``, in method-major order. Raises TypeError/ValueError as
    :func:`tune_sparsity_on_insertion` does, and ValueError when a sample shares its name with a calibration
    sample of ``tuning`` (the scored images must be held out) or ``tuning`` lacks one of its methods.
    """
    from .widgets import progress_bar as tqdm

    if not isinstance(tuning, InsertionTuning):
        raise TypeError(f"tuning must be an InsertionTuning, got {type(tuning).__name__}")
    samples = _check_samples(samples, "samples")
    reused = sorted({s.name for s in samples} & set(tuning.calibration))
    if reused:
        raise ValueError(f"samples {reused} were calibration samples of tuning: score held-out images only")
    if not isinstance(label, str) or not label:
        raise TypeError(f"label must be a non-empty str, got {label!r}")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool, got {type(progress).__name__}")
    methods = list(tuning.sparsity)
    score = _scorer(model, score_fn, auc_steps, attribute_kwargs, ("insertion", "deletion"), device)
    tracer = _Tracer.build(model, layers, n_augment, solver, batch_size, seed, skip_depthwise, device)
    tracer.check_targets(samples, "samples")

    values = sorted(set(tuning.sparsity.values()))
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    for sample in tqdm(samples, desc=f"{label} traces", disable=not progress, leave=False):
        solved = tracer.solves(sample.image, values)
        for method in methods:
            s = tuning.sparsity[method]
            aucs = tracer.score(score, solved.get(s, {}), sample, method)
            ins = np.asarray(aucs["insertion"], dtype=np.float64).reshape(-1)
            dels = np.asarray(aucs["deletion"], dtype=np.float64).reshape(-1)
            for image, i, d in zip(sample.input_ids(), ins, dels, strict=True):
                rows[method].append(
                    dict(image=image, method=method, explainer=label, insertion=i, deletion=d, sparsity=s)
                )
    table = pd.DataFrame([r for m in methods for r in rows[m]])
    if not math.isfinite(float(table[["insertion", "deletion"]].to_numpy().sum())):
        raise RuntimeError(f"{label}: an insertion or deletion AUC is not finite")
    return table
