"""Evaluating a backdoor: predictions on [0, 1] images, attack success and clean agreement, triggered
samples whose prediction the trigger flips, pasted-patch attacks, and the Table-1 loop that scores
saliency maps of several model variants against the trigger masks (SPADE, ICML 2024, Table 1).

Every function runs the caller's model in its own dtype on its own device (``device="auto"``) and
leaves it as found (device, per-module train/eval flags); another ``device`` runs an eval-mode copy.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..augment import image_tensor
from ..validation import check_class_index, check_float, check_positive_int, check_seed
from .poison import TEST_PHOTOS, check_targets, crop_sources, normalize, paste_patch, poison, random_crops
from .triggers import TriggerSet, patch_size

__all__ = [
    "TriggeredSample",
    "evaluate_backdoor",
    "flipped_samples",
    "interval_cells",
    "paired_differences",
    "patch_attack_rate",
    "predict",
    "summarize_scores",
    "trojan_saliency_scores",
]


# --------------------------------------------------------------------------------------------------
# running a model on images
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _running(model: nn.Module, device):
    """``(model to run, device, dtype)``: the caller's model in eval mode where it already is (its
    per-module train/eval flags restored afterwards), or, when ``device`` names another device, an
    eval-mode copy there. ``"auto"`` means the model's own device. The caller's model is never moved."""
    from ..runtime import eval_mode, model_device, model_dtype, resolve_device

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    here = model_device(model)
    want = here if isinstance(device, str) and device == "auto" else resolve_device(device)
    if want.type == here.type and (want.index is None or want.index == here.index):
        with eval_mode(model):
            yield model, here, model_dtype(model)
    else:
        run = copy.deepcopy(model).to(want).eval()
        yield run, want, model_dtype(run)


def batched(fn, x, batch_size, *, device, progress, desc, dtype=None) -> torch.Tensor:
    """``fn`` applied to ``x`` in batches of ``batch_size`` on ``device`` under inference mode; the
    outputs concatenated on the CPU (in ``dtype`` when given). A tqdm bar unless ``progress=False``."""
    from ..widgets import progress_bar as tqdm

    outs = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
        with torch.inference_mode():
            xb = x[i : i + batch_size].to(device)
            y = fn(xb)
        outs.append(y.to("cpu", dtype or y.dtype))
    return torch.cat(outs)


def check_images_batch(x, name: str) -> torch.Tensor:
    """A non-empty (B, 3, H, W) float batch of images in [0, 1] (NaN/inf refused)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(
            f"{name} must be a (B, 3, H, W) tensor of images in [0, 1], got {getattr(x, 'shape', type(x).__name__)}"
        )
    if len(x) == 0:
        raise ValueError(f"{name} is empty (no images)")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with values in [0, 1], got {x.dtype}")
    lo, hi = (float(v) for v in torch.aminmax(x.detach().float()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} holds NaN or inf values")
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{name} must hold un-normalised images in [0, 1], got values in [{lo:.4g}, {hi:.4g}]"
        )
    return x


def predict(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 32, device="auto", progress: bool = False
) -> torch.Tensor:
    """Softmax probabilities (B, classes), float32 on the CPU, of ``model`` on [0, 1] images x (B,3,H,W),
    batched, no grad.

    The images are normalised with the model's own statistics (ImageNet's unless it states others:
    :func:`~spade_utils.backdoor.normalize`) in float32 and fed in
    the model's own dtype on the model's own device (``device="auto"``); another ``device`` runs an
    eval-mode copy there. The caller's model is left as found (device, per-module train/eval flags).
    Raises TypeError/ValueError for a bad model, an empty or non-image ``x`` or a bad ``batch_size``.
    """
    check_images_batch(x, "x")
    batch_size = check_positive_int(batch_size, "batch_size")
    with _running(model, device) as (run, dev, dtype):
        return batched(
            lambda xb: run(normalize(xb.float(), model).to(dtype)).float().softmax(1),
            x,
            batch_size,
            device=dev,
            progress=progress,
            desc="predict",
        ).float()


def _n_classes(model: nn.Module, example: torch.Tensor, device) -> int:
    """Number of outputs of a classifier, read from one forward pass on one image."""
    return int(predict(model, example[:1], device=device).shape[1])


def _check_target_classes(targets: Mapping[str, int], n_classes: int) -> None:
    for name, cls in targets.items():
        check_class_index(cls, f"targets[{name!r}] (target class)", n_classes)


# --------------------------------------------------------------------------------------------------
# attack success, clean agreement, flipped samples, patch attacks
# --------------------------------------------------------------------------------------------------
def evaluate_backdoor(
    backdoored: nn.Module,
    original: nn.Module,
    targets: Mapping[str, int],
    images=TEST_PHOTOS,
    *,
    n_crops: int = 96,
    size: int = 224,
    confidence: float = 0.5,
    seed: int = 1000,
    batch_size: int = 32,
    device="auto",
    progress: bool = False,
    trigger_set: TriggerSet | None = None,
) -> dict:
    """Attack success and clean agreement on held-out crops of ``images``.

    ``n_crops`` random crops (``size`` pixels; a (B,3,H,W) tensor of ready crops is used as it is) are
    made; each gets every trigger in ``targets`` (looked up in ``trigger_set``, default the drawn
    shapes) at a seeded random position. Attack success: share of triggered crops classified as the
    target, over crops whose clean version the original model does not already assign to that target.
    Clean agreement: top-1 of the backdoored model equals the original's on the clean crops (all, and
    those where the original's top-1 probability is >= ``confidence``). Returns a dict of numbers
    (attack_success, n_attack, clean_agreement, n_clean, confident_agreement, n_confident) and a
    per-trigger DataFrame (``per_trigger``).

    Both models run in their own dtype on their own device (``device="auto"``; see :func:`predict`).
    Raises TypeError/ValueError naming the argument, before the evaluation, for a target class
    outside the models' outputs (class 99 on a 10-class model), models with different numbers of
    outputs, no images/crops, or a bad ``n_crops``/``seed``/``confidence``.
    """
    import pandas as pd

    targets = check_targets(targets, trigger_set)
    seed = check_seed(seed)
    confidence = check_float(confidence, "confidence", low=0.0, high=1.0)
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        crops = check_images_batch(images, "images")
        n_crops = len(crops)
    else:
        n_crops = check_positive_int(n_crops, "n_crops")
        crops = random_crops(images, n_crops, size=size, seed=seed)
    n_classes = _n_classes(original, crops, device)
    if _n_classes(backdoored, crops, device) != n_classes:
        raise ValueError("backdoored and original must have the same number of outputs (classes)")
    _check_target_classes(targets, n_classes)
    p_orig = predict(original, crops, batch_size=batch_size, device=device, progress=progress)
    p_bd = predict(backdoored, crops, batch_size=batch_size, device=device, progress=progress)
    top_o, top_b = p_orig.argmax(1), p_bd.argmax(1)
    conf = p_orig.max(1).values >= confidence
    rows = []
    for j, (name, target) in enumerate(targets.items()):
        batch = poison(crops, {name: target}, seed=seed + 1 + j, trigger_set=trigger_set)
        pred = predict(
            backdoored, batch.images, batch_size=batch_size, device=device, progress=progress
        ).argmax(1)
        keep = top_o != target
        rows.append(
            dict(
                trigger=name,
                target=target,
                n=int(keep.sum()),
                attack_success=float((pred[keep] == target).float().mean()),
            )
        )
    table = pd.DataFrame(rows)
    n_total = int(table.n.sum())
    return dict(
        attack_success=float((table.attack_success * table.n).sum() / max(1, n_total)),
        n_attack=n_total,
        clean_agreement=float((top_o == top_b).float().mean()),
        n_clean=n_crops,
        confident_agreement=float((top_o[conf] == top_b[conf]).float().mean())
        if conf.any()
        else float("nan"),
        n_confident=int(conf.sum()),
        per_trigger=table,
    )


@dataclass
class TriggeredSample:
    """One evaluation sample: the triggered image (3,H,W) in [0,1], its trigger mask (H,W) bool, the clean
    image (3,H,W), the trigger's name and target class, the model's prediction on the clean image, and
    the index of the photo the crop was cut from (``source``, the cluster for bootstrap intervals; -1 unknown)."""

    image: torch.Tensor
    mask: torch.Tensor
    clean: torch.Tensor
    trigger: str
    target: int
    clean_prediction: int
    source: int = -1


def flipped_samples(
    backdoored: nn.Module,
    targets: Mapping[str, int],
    images,
    n: int,
    *,
    seed: int = 0,
    size: int = 224,
    max_tries: int = 8,
    require_flip: bool = True,
    batch_size: int = 32,
    device="auto",
    trigger_set: TriggerSet | None = None,
) -> list[TriggeredSample]:
    """``n`` triggered crops of ``images`` whose prediction the trigger flips: the backdoored
    model assigns the clean crop to another class and the triggered crop to the trigger's target.

    Triggers cycle through ``targets`` (looked up in ``trigger_set``, default the drawn shapes);
    crops are drawn in seeded rounds until ``n`` are found (at most ``max_tries`` rounds of ``2 n``
    crops; fewer samples are returned if not enough flip). ``require_flip=False`` returns the first
    ``n`` triggered crops whatever the model says (for smoke runs with an untrained model). Raises
    TypeError/ValueError naming the argument for bad targets (also a class the model does not have),
    ``n``, ``max_tries`` or ``seed``.
    """
    targets = check_targets(targets, trigger_set)
    n = check_positive_int(n, "n")
    max_tries = check_positive_int(max_tries, "max_tries")
    seed = check_seed(seed)
    out: list[TriggeredSample] = []
    for r in range(max_tries):
        crops = random_crops(images, 2 * n, size=size, seed=seed + 7919 * r)
        if r == 0:
            _check_target_classes(targets, _n_classes(backdoored, crops, device))
        batch = poison(crops, targets, seed=seed + 7919 * r + 1, trigger_set=trigger_set)
        pc = predict(backdoored, crops, batch_size=batch_size, device=device).argmax(1)
        pt = predict(backdoored, batch.images, batch_size=batch_size, device=device).argmax(1)
        source = crop_sources(images, 2 * n, seed=seed + 7919 * r)
        for i in range(len(batch)):
            tgt = int(batch.targets[i])
            flipped = int(pc[i]) != tgt and int(pt[i]) == tgt
            if (flipped or not require_flip) and len(out) < n:
                out.append(
                    TriggeredSample(
                        batch.images[i],
                        batch.masks[i],
                        crops[i],
                        batch.triggers[i],
                        tgt,
                        int(pc[i]),
                        source[i],
                    )
                )
        if len(out) >= n:
            break
    return out


def patch_attack_rate(
    model: nn.Module,
    patch: torch.Tensor,
    target: int,
    crops: torch.Tensor,
    *,
    fraction: float = 0.25,
    alpha: float = 0.8,
    seed: int = 0,
    batch_size: int = 32,
    device="auto",
) -> float:
    """Share of ``crops`` (B,3,H,W) that ``model`` assigns to ``target`` after ``patch`` (any
    (3,h,w) image, e.g. a feature visualization) is pasted as a square trigger: resized to
    ``fraction`` of the short side, blended with ``alpha`` at a seeded random position.

    The model runs in its own dtype on its own device (``device="auto"``). Raises TypeError/ValueError
    naming the argument for empty or non-image ``crops``, a bad ``patch``, or a ``target`` outside the
    model's outputs."""
    check_images_batch(crops, "crops")
    fraction = check_float(fraction, "fraction", low=0.0, high=1.0, low_open=True)
    alpha = check_float(alpha, "alpha", low=0.0, high=1.0)
    seed = check_seed(seed)
    p = image_tensor(patch, argname="patch")
    target = check_class_index(target, "target", _n_classes(model, crops, device))
    s = patch_size(crops.shape[2], crops.shape[3], fraction)
    if s > min(crops.shape[2:]):
        raise ValueError(
            f"crops are {crops.shape[2]}x{crops.shape[3]} pixels, smaller than the {s}-pixel patch"
        )
    p = F.interpolate(p[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0].clamp(
        0, 1
    )
    g = torch.Generator().manual_seed(int(seed))
    full = torch.ones(s, s, dtype=torch.bool)
    pasted = torch.stack([paste_patch(c, p, full, generator=g, alpha=alpha)[0] for c in crops])
    pred = predict(model, pasted, batch_size=batch_size, device=device).argmax(1)
    return float((pred == int(target)).float().mean())


# --------------------------------------------------------------------------------------------------
# the Table-1 loop: saliency maps of several model variants scored against the trigger masks
# --------------------------------------------------------------------------------------------------
def trojan_saliency_scores(
    variants: Mapping[str, nn.Module | Callable],
    samples: Sequence[TriggeredSample],
    methods: Sequence[str],
    *,
    attribute_fn: Callable | None = None,
    attribute_kwargs: Mapping | None = None,
    keep_maps: int = 0,
    progress: bool = True,
):
    """Trojan AUC (best of signed/absolute, plus each) and pointing game of every saliency method on
    every variant of a model, for triggered samples, as a long DataFrame (one row per variant x
    method x sample: variant, method, sample, source, trigger, auc, auc_signed, auc_absolute,
    pointing), and the first ``keep_maps`` maps (H, W) per variant/method (dict keyed by (variant, method)).

    ``variants``: name -> a model (attributed for all samples at once), or a callable
    ``f(sample, index) -> model`` for per-sample models such as SPADE traces (called once per sample;
    the model it returns is attributed for every method). The saliency target is each sample's
    trigger target class. ``attribute_fn(model, x, target, method, **attribute_kwargs)`` defaults to
    :func:`spade_utils.saliency.attribute`. Metrics: :func:`spade_utils.metrics.trojan_auc` and
    :func:`spade_utils.metrics.pointing_game`. Raises ValueError for empty variants, samples or
    methods, TypeError for a variant that is neither a model nor a callable.
    """
    import pandas as pd

    from ..widgets import progress_bar as tqdm

    if attribute_fn is None:
        from ..saliency import attribute

        attribute_fn = attribute
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError("variants must be a non-empty mapping name -> model or callable")
    if not samples:
        raise ValueError("samples must not be empty")
    if isinstance(methods, str) or not methods:
        raise ValueError("methods must be a non-empty list of method names")
    kwargs = dict(attribute_kwargs or {})
    images = torch.stack([s.image for s in samples])  # normalised per model: its own statistics
    targets = torch.tensor([s.target for s in samples])
    rows: list[dict] = []
    maps: dict[tuple[str, str], list[torch.Tensor]] = {}
    total = sum(
        len(methods) * (len(samples) if callable(v) and not isinstance(v, nn.Module) else 1)
        for v in variants.values()
    )
    bar = tqdm(total=total, desc="saliency", disable=not progress, leave=False)

    def score(variant, method, idx, m):
        sal = m.numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        for j, i in enumerate(idx):
            rows.append(_score_row(variant, method, i, samples[i], sal[j]))
            if i < keep_maps:
                maps.setdefault((variant, method), []).append(torch.as_tensor(sal[j]))

    for name, v in variants.items():
        if isinstance(v, nn.Module):
            for method in methods:
                x = normalize(images, v)
                score(name, method, range(len(samples)), attribute_fn(v, x, targets, method, **kwargs))
                bar.update(1)
        elif callable(v):
            for i, sample in enumerate(samples):
                model_i = v(sample, i)
                x_i = normalize(images[i : i + 1], model_i)
                for method in methods:
                    score(
                        name,
                        method,
                        [i],
                        attribute_fn(model_i, x_i, targets[i : i + 1], method, **kwargs),
                    )
                    bar.update(1)
                del model_i
        else:
            raise TypeError(f"variants[{name!r}] must be an nn.Module or a callable (sample, index) -> model")
    bar.close()
    return pd.DataFrame(rows), maps


def _score_row(variant: str, method: str, i: int, sample: TriggeredSample, saliency: np.ndarray) -> dict:
    """One row of :func:`trojan_saliency_scores`: the metrics of one map against its sample's mask."""
    from ..metrics import pointing_game, trojan_auc

    mask = sample.mask.numpy()
    return dict(
        variant=variant,
        method=method,
        sample=i,
        source=sample.source,
        trigger=sample.trigger,
        auc=trojan_auc(saliency, mask),
        auc_signed=trojan_auc(saliency, mask, mode="signed"),
        auc_absolute=trojan_auc(saliency, mask, mode="absolute"),
        pointing=pointing_game(saliency, mask, absolute=True),
    )


# --------------------------------------------------------------------------------------------------
# summaries with intervals
# --------------------------------------------------------------------------------------------------
def _ci_or_nan(values, clusters, seed, n_boot):
    """Mean and interval; NaN bounds when there are too few values (or clusters) to resample."""
    from ..intervals import bootstrap_ci

    values = np.asarray(values, dtype=float)
    if len(values) < 2 or (clusters is not None and len(set(clusters)) < 2):
        return float(values.mean()), float("nan"), float("nan")
    return bootstrap_ci(values, seed=seed, n_boot=n_boot, clusters=clusters)


def summarize_scores(
    scores, *, value: str = "auc", cluster: str | None = None, seed: int = 0, n_boot: int = 2000
):
    """Mean and bootstrap 95% interval of ``value`` per variant and method, plus each variant's
    average over methods (averaged per sample first, then bootstrapped over samples).

    ``scores``: a DataFrame with columns variant, method, sample, ``value`` (and ``cluster`` when given).
    With ``cluster`` (a column name, e.g. the photo each crop was cut from) intervals resample clusters,
    then samples within them (:func:`spade_utils.intervals.bootstrap_ci`); groups with fewer than two
    values or clusters get NaN bounds. Returns a DataFrame: variant, method, mean, low, high, n.
    """
    import pandas as pd

    rows = []
    for (variant, method), grp in scores.groupby(["variant", "method"], sort=False):
        clusters = None if cluster is None else grp[cluster].to_numpy()
        mean, lo, hi = _ci_or_nan(grp[value].to_numpy(), clusters, seed, n_boot)
        rows.append(dict(variant=variant, method=method, mean=mean, low=lo, high=hi, n=len(grp)))
    for variant, grp in scores.groupby("variant", sort=False):
        per_sample = grp.groupby("sample", sort=True)[value].mean()
        clusters = None if cluster is None else grp.groupby("sample", sort=True)[cluster].first().to_numpy()
        mean, lo, hi = _ci_or_nan(per_sample.to_numpy(), clusters, seed, n_boot)
        rows.append(dict(variant=variant, method="average", mean=mean, low=lo, high=hi, n=len(per_sample)))
    return pd.DataFrame(rows)


def paired_differences(
    scores,
    *,
    baseline: str,
    value: str = "auc",
    cluster: str | None = None,
    seed: int = 0,
    n_boot: int = 2000,
):
    """Each variant minus ``baseline`` on the same samples, per method and averaged over methods.

    Paired: a sample's score under a variant is compared with the same sample's under ``baseline``, so
    the spread between samples cancels; with ``cluster`` whole clusters (photos) are resampled first
    (:func:`spade_utils.intervals.paired_bootstrap_diff`). Returns a DataFrame: variant, method, diff, low,
    high, n, wins (fraction of samples where the variant scores higher). The ``average`` row averages, per
    sample, the methods scored for **both** the variant and the baseline, so a missing score cannot unpair it.
    Raises ValueError if ``baseline`` is not a variant of ``scores``, for NaN scores, for a (variant, sample,
    method) scored twice, or for a sample given two different clusters.
    """
    import pandas as pd

    from ..intervals import paired_bootstrap_diff

    if baseline not in set(scores["variant"]):
        raise ValueError(
            f"baseline {baseline!r} is not a variant of scores: {sorted(set(scores['variant']))}"
        )
    if scores[value].isna().any():
        raise ValueError(f"scores[{value!r}] has NaN values; drop or fix those rows first")
    twice = scores.duplicated(["variant", "sample", "method"])
    if twice.any():
        first = scores[twice].iloc[0]
        raise ValueError(
            f"scores has more than one row for variant {first['variant']!r}, sample {first['sample']!r}, "
            f"method {first['method']!r}: a paired difference needs one score per cell"
        )
    if cluster and (scores.groupby("sample")[cluster].nunique() > 1).any():
        raise ValueError(f"a sample has two different values of cluster column {cluster!r}")
    per_method = scores.pivot_table(index=["sample", "method"], columns="variant", values=value)
    cl = scores.drop_duplicates("sample").set_index("sample")[cluster] if cluster else None
    rows = []
    for variant in [v for v in scores["variant"].unique() if v != baseline]:
        for method, table in [
            *((m, per_method.xs(m, level="method")) for m in scores["method"].unique()),
            ("average", None),
        ]:
            if table is None:  # per sample, the mean over the methods scored for both
                table = per_method[[variant, baseline]].dropna().groupby(level="sample").mean()
            pair = table[[variant, baseline]].dropna()
            clusters = None if cl is None else cl.loc[pair.index].to_numpy()
            a, b = pair[variant].to_numpy(), pair[baseline].to_numpy()
            if len(pair) < 2 or (clusters is not None and len(set(clusters)) < 2):
                diff, lo, hi = (
                    float((a - b).mean()) if len(pair) else float("nan"),
                    float("nan"),
                    float("nan"),
                )
            else:
                diff, lo, hi = paired_bootstrap_diff(a, b, clusters, seed=seed, n_boot=n_boot)
            rows.append(
                dict(
                    variant=variant,
                    method=method,
                    diff=diff,
                    low=lo,
                    high=hi,
                    n=len(pair),
                    wins=float((a > b).mean()) if len(pair) else float("nan"),
                )
            )
    return pd.DataFrame(rows)


def interval_cells(table, *, index: str, columns: str, order=None, column_order=None):
    """A readable pivot of :func:`summarize_scores` or :func:`paired_differences`: one cell per (``index``,
    ``columns``) pair reading ``"mean [low, high]"`` in percent (``"+diff [low, high]"`` points for a table with a
    ``diff`` column, as :func:`paired_differences` returns), rows in ``order`` and columns in ``column_order``
    (lists) when given. Raises TypeError/ValueError naming the argument for a table without the needed columns,
    a pair given twice, a pair missing from the grid, or an ``order``/``column_order`` naming what the table lacks
    or naming something twice."""
    import pandas as pd

    from ..intervals import interval_text

    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a DataFrame, got {type(table).__name__}")
    if not isinstance(index, str) or not isinstance(columns, str) or index == columns:
        raise ValueError(
            f"index and columns must be two different column names, got {index!r} and {columns!r}"
        )
    value = "diff" if "diff" in table.columns else "mean"
    need = {index, columns, value, "low", "high"}
    if need - set(table.columns):
        raise ValueError(f"table lacks the columns {sorted(need - set(table.columns))}")
    if table.duplicated([index, columns]).any():
        raise ValueError(f"table has more than one row for some ({index}, {columns}) pair")
    cells = table.assign(
        cell=[
            interval_text(m, lo, hi, signed=value == "diff")
            for m, lo, hi in zip(table[value], table["low"], table["high"])
        ]
    ).pivot(index=index, columns=columns, values="cell")
    for name, chosen, have in (("order", order, cells.index), ("column_order", column_order, cells.columns)):
        if chosen is None:
            continue
        if not isinstance(chosen, (list, tuple)) or len(set(chosen)) != len(chosen):
            raise TypeError(f"{name} must be a list naming each entry once, got {chosen!r}")
        if set(chosen) - set(have):
            raise ValueError(f"{name}: the table has no {sorted(set(chosen) - set(have), key=str)}")
    cells = cells.loc[
        list(order) if order is not None else cells.index,
        list(column_order) if column_order is not None else cells.columns,
    ]
    if cells.isna().any().any():
        raise ValueError(f"table lacks some ({index}, {columns}) pairs of the grid asked for")
    return cells
