"""Quantitative checks of saliency maps: Trojan AUC, pointing game, insertion/deletion AUC (intervals: :mod:`.intervals`).

Every entry point checks its arguments before any work starts and raises ``TypeError``/``ValueError`` naming
the argument. Every function that runs a model feeds it inputs in the model's own dtype and on its device, and
leaves the model (weights, per-module train/eval flags, device) as found.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from .intervals import bootstrap_ci, paired_bootstrap_diff
from .runtime import eval_mode, model_device, model_dtype, resolve_device
from .validation import check_class_index, check_finite_tensor, check_float, check_int

# insertion/deletion refuse to score a class whose clean probability is below this (a score relative to it is
# meaningless); callers that explain a given class (a true label) use it to set such images aside first
MIN_CLEAN_PROB = 1e-3


def _as_numpy(a, name: str, fn_name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    if isinstance(a, np.ndarray):
        return a
    raise TypeError(f"{fn_name}: {name} must be a numpy array or torch tensor, got {type(a).__name__}")


# --------------------------------------------------------------------------------------------------
# Trojan (backdoor) localisation: Trojan AUC and the pointing game
# --------------------------------------------------------------------------------------------------
def _maps_and_masks(saliency, mask, fn_name: str):
    """Saliency (H,W) or (B,H,W) and bool masks of the same shape (a single (H,W) mask is broadcast)
    -> float64 numpy (B,H,W), bool numpy (B,H,W), and whether the input was a single map."""
    s, m = _as_numpy(saliency, "saliency", fn_name), _as_numpy(mask, "mask", fn_name)
    if s.ndim not in (2, 3):
        raise ValueError(
            f"{fn_name}: saliency must be (H, W) or (B, H, W) (sum channels first), got shape {s.shape}"
        )
    if s.size == 0:
        raise ValueError(f"{fn_name}: saliency is empty (shape {s.shape})")
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == bool) or np.iscomplexobj(s):
        raise TypeError(f"{fn_name}: saliency must hold real numbers, got dtype {s.dtype}")
    single = s.ndim == 2
    s = s[None] if single else s
    if m.ndim == 2 and m.shape == s.shape[1:]:
        m = np.broadcast_to(m, s.shape)
    if m.shape != s.shape:
        raise ValueError(f"{fn_name}: mask shape {m.shape} does not match saliency shape {s.shape}")
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError(f"{fn_name}: mask must be boolean (or 0/1)")
        m = m.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError(f"{fn_name}: saliency contains NaN or inf")
    for i in range(len(m)):
        if not m[i].any() or m[i].all():
            raise ValueError(f"{fn_name}: mask {i} must contain both trigger and non-trigger pixels")
    return s.astype(np.float64), m, single


def _pixel_auc(scores, labels):
    """ROC-AUC of ``scores`` for bool ``labels`` (scikit-learn's; tied scores count one half)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels.ravel(), scores.ravel()))


def trojan_auc(saliency, mask, *, mode: str = "best"):
    """Pixel ROC-AUC of a saliency map against the trigger's pixel mask (the paper's Trojan AUC).

    ``saliency``: a channel-summed map (H, W) or a batch (B, H, W) (see :func:`channel_sum`), finite;
    ``mask``: bool or 0/1 (H, W) or (B, H, W), True on the trigger's own pixels (each mask needs both kinds of
    pixel). ``mode``: ``"signed"`` ranks pixels by the map itself, ``"absolute"`` by its magnitude, ``"best"``
    (the paper's choice, SPADE §5.2) takes the better of the two per map. The AUC is
    :func:`sklearn.metrics.roc_auc_score` over pixels: the probability that a random trigger pixel outscores a
    random other pixel, ties counting one half. A map equal to the mask scores 1, its negative 0 (signed), a
    constant map 0.5. Returns a float for one map, a numpy array of B values for a batch.

    Raises TypeError for non-array inputs, ValueError for a bad ``mode``, empty or non-finite maps, shape
    mismatches, and masks without trigger or without background pixels.
    """
    if mode not in ("best", "signed", "absolute"):
        raise ValueError(f"mode must be 'best', 'signed' or 'absolute', got {mode!r}")
    s, m, single = _maps_and_masks(saliency, mask, "trojan_auc")
    out = np.empty(len(s))
    for i in range(len(s)):
        signed = _pixel_auc(s[i], m[i]) if mode != "absolute" else -np.inf
        absolute = _pixel_auc(np.abs(s[i]), m[i]) if mode != "signed" else -np.inf
        out[i] = max(signed, absolute)
    return float(out[0]) if single else out


def pointing_game(saliency, mask, *, tolerance: int = 0, absolute: bool = False):
    """Pointing game (Zhang et al. 2016, "Top-down neural attention by excitation backprop"): is the map's
    maximum on the trigger?

    A hit when the highest-scoring pixel (of the map, or of its magnitude with ``absolute=True``)
    lies within ``tolerance`` pixels (Chebyshev distance, an int >= 0) of a mask pixel. When several pixels
    share the maximum, the hit is the share of them that land on the (dilated) mask, so a constant map
    scores the mask's area share instead of a lucky first pixel. Shapes and errors as :func:`trojan_auc`.
    Returns a float in [0, 1] (or an array of B values for a batch).
    """
    tolerance = check_int(tolerance, "tolerance", minimum=0)
    if not isinstance(absolute, (bool, np.bool_)):
        raise TypeError(f"absolute must be a bool, got {type(absolute).__name__}")
    s, m, single = _maps_and_masks(saliency, mask, "pointing_game")
    if absolute:
        s = np.abs(s)
    if tolerance:
        from scipy.ndimage import binary_dilation

        m = np.stack([binary_dilation(mi, np.ones((2 * tolerance + 1,) * 2, bool)) for mi in m])
    out = np.empty(len(s))
    for i in range(len(s)):
        top = s[i] == s[i].max()
        out[i] = (top & m[i]).sum() / top.sum()
    return float(out[0]) if single else out


def channel_sum(attribution):
    """(B, C, H, W) or (C, H, W) attributions -> channel-summed maps (B, H, W) or (H, W)."""
    if not isinstance(attribution, (torch.Tensor, np.ndarray)):
        raise TypeError(
            f"attribution must be a torch tensor or numpy array, got {type(attribution).__name__}"
        )
    if attribution.ndim not in (3, 4):
        raise ValueError(
            f"attribution must be (C, H, W) or (B, C, H, W), got shape {tuple(attribution.shape)}"
        )
    return attribution.sum(-3)


# --------------------------------------------------------------------------------------------------
# Insertion and deletion AUC (the SPADE paper's Table 2 protocol, after RISE)
# --------------------------------------------------------------------------------------------------
def curve_fractions(n_steps: int):
    """The insertion/deletion grid: the fractions ``k / n_steps`` of the pixels, ``k = 0 … n_steps``.

    ``n_steps + 1`` points with both ends included (no pixel and every pixel), as in RISE (Petsiuk et al.
    2018, "RISE: Randomized Input Sampling for Explanation of Black-box Models", §4.1). Returns float64 numpy
    (n_steps + 1,). Raises TypeError/ValueError unless ``n_steps`` is an int >= 1.
    """
    n = check_int(n_steps, "n_steps", minimum=1)
    return np.arange(n + 1, dtype=np.float64) / n


def pixel_counts(n_steps: int, n_pixels: int):
    """Pixels inserted (or deleted) at each step of the grid: ``round(k · n_pixels / n_steps)``, halves rounded
    up, in exact integer arithmetic; ``k = 0 … n_steps``. Returns int64 numpy (n_steps + 1,), from 0 to
    ``n_pixels``. When ``n_pixels`` is a multiple of ``n_steps`` the counts are exactly the grid of
    :func:`curve_fractions`; otherwise a count is off the grid by at most half a pixel."""
    n = check_int(n_steps, "n_steps", minimum=1)
    p = check_int(n_pixels, "n_pixels", minimum=1)
    k = np.arange(n + 1, dtype=np.int64)
    return (2 * k * p + n) // (2 * n)


def _check_targets(target, batch: int, fn_name: str) -> torch.Tensor:
    """A class index for every image: an int (the same for all) or a sequence/array/1-d tensor of ints."""
    if isinstance(target, (str, bytes)):
        raise TypeError(
            f"{fn_name}: target must be an int or a sequence/tensor of ints, got {type(target).__name__}"
        )
    if isinstance(target, np.ndarray) and target.ndim == 0:
        target = target.item()
    if (isinstance(target, torch.Tensor) and target.dim() == 0) or not hasattr(target, "__len__"):
        t = [check_class_index(target, "target")] * batch
    else:
        if isinstance(target, (torch.Tensor, np.ndarray)) and target.ndim != 1:
            raise ValueError(f"{fn_name}: target must be 1-d, got shape {tuple(target.shape)}")
        t = [check_class_index(v, f"target[{i}]") for i, v in enumerate(target)]
    if len(t) != batch:
        raise ValueError(f"{fn_name}: target has {len(t)} entries for a batch of {batch}")
    return torch.tensor(t, dtype=torch.long)


def _insertion_inputs(model, x, saliency, target, n_steps, batch_size, min_clean_prob, fn_name):
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn_name}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"{fn_name}: x must be a float (B, C, H, W) tensor of normalised images")
    if x.numel() == 0:
        raise ValueError(f"{fn_name}: x is empty (shape {tuple(x.shape)})")
    check_finite_tensor(x, "x")
    if not isinstance(saliency, torch.Tensor):
        if not isinstance(saliency, np.ndarray):
            raise TypeError(
                f"{fn_name}: saliency must be a torch tensor or numpy array, got {type(saliency).__name__}"
            )
        saliency = torch.from_numpy(saliency)
    if saliency.dim() == 4:
        saliency = saliency.sum(1)
    if saliency.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(
            f"{fn_name}: saliency must be (B, H, W) (or (B, C, H, W), summed over C) matching x "
            f"{tuple(x.shape)}, got {tuple(saliency.shape)}"
        )
    if saliency.dtype == torch.bool or saliency.is_complex():
        raise TypeError(f"{fn_name}: saliency must hold real numbers, got {saliency.dtype}")
    if not torch.isfinite(saliency).all():
        raise ValueError(f"{fn_name}: saliency contains NaN or inf")
    t = _check_targets(target, x.shape[0], fn_name)
    check_int(n_steps, "n_steps", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    min_clean_prob = check_float(min_clean_prob, "min_clean_prob", low=0.0, high=1.0, low_open=True)
    return saliency.detach().double().cpu(), t, min_clean_prob


def pixel_ranks(saliency):
    """Rank of every pixel by its (channel-summed) saliency: 0 for the highest. (B, H, W) -> (B, H, W) long.

    Ties keep raster order (a stable sort), so the ranking is deterministic.
    """
    flat = torch.as_tensor(saliency).flatten(1)
    order = torch.sort(-flat, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
    return ranks.view(torch.as_tensor(saliency).shape)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    if a.type == "cuda":
        current = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)
    return a.index is None or b.index is None or a.index == b.index


def _probabilities(net, x, fn_name):
    """Softmax probabilities (float64) of ``net`` on ``x``; refuses outputs that are not (B, C>=2) logits."""
    out = net(x)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{fn_name}: model must return a logits tensor, got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(f"{fn_name}: model must return (B, n_classes) logits, got shape {tuple(out.shape)}")
    if out.shape[1] < 2:
        raise ValueError(
            f"{fn_name}: model returns {out.shape[1]} logit per image; a softmax over one class is "
            "always 1, so insertion/deletion would score 1 for every map (needs >= 2 classes)"
        )
    return torch.softmax(out.double(), dim=1)


def insertion_deletion_curves(
    model,
    x,
    saliency,
    target,
    *,
    mode: str = "insertion",
    n_steps: int = 100,
    batch_size: int = 50,
    device="auto",
    min_clean_prob: float = MIN_CLEAN_PROB,
    progress: bool = False,
):
    """Class-probability curves as the most salient pixels are kept (insertion) or removed (deletion).

    Protocol (SPADE's Table 2, after RISE, Petsiuk et al. 2018): at step ``k = 0 … n_steps`` (``n_steps + 1``
    points, both ends included, so not a 0…99% grid: see :func:`curve_fractions`) the top ``pixel_counts(n_steps, H·W)[k]``
    pixels of the channel-summed map are kept (insertion: every other pixel set to 0 in normalised space, i.e.
    the dataset mean colour) or set to 0 (deletion); ties in the map keep raster order (:func:`pixel_ranks`).
    The score is the softmax probability of ``target`` on the masked image divided by its probability on the
    intact image, clipped to [0, 1]; so insertion ends, and deletion starts, at 1.

    ``model``: the dense model that scores every map (maps from a SPADE trace are scored on the dense
    network), returning (B, n_classes >= 2) logits. ``x``: (B, C, H, W) normalised images, finite.
    ``saliency``: (B, H, W) or (B, C, H, W) (summed over C), finite. ``target``: an int class index for all
    images, or one per image (non-negative ints below n_classes). ``n_steps``: int >= 1. ``batch_size``:
    masked images per forward pass. ``device``: ``"auto"`` (CUDA when present), a device, or ``None`` for the
    model's own device; the model is never moved (work on another device runs on a copy) and inputs are cast
    to its dtype. ``min_clean_prob`` in (0, 1]: a relative score of a class the model does not predict is
    noise over a near-zero baseline (a clean probability of 1e-30 would score insertion = deletion = 1), so
    images whose clean probability of ``target`` is below it are refused (the default 1e-3 is chance level
    for 1000 classes).

    Returns float64 numpy (B, n_steps + 1). Raises TypeError/ValueError naming the argument for bad input, a
    target the model does not have, a model with one output, or a clean probability under ``min_clean_prob``.
    """
    from .widgets import progress_bar as tqdm

    fn = "insertion_deletion_curves"
    if mode not in ("insertion", "deletion"):
        raise ValueError(f"mode must be 'insertion' or 'deletion', got {mode!r}")
    sal, targets, min_clean_prob = _insertion_inputs(
        model, x, saliency, target, n_steps, batch_size, min_clean_prob, fn
    )
    dev = model_device(model) if device is None else resolve_device(device)
    net = model if _same_device(dev, model_device(model)) else copy.deepcopy(model).to(dev)
    dtype = model_dtype(net)
    b, _, h, w = x.shape
    counts = torch.from_numpy(pixel_counts(n_steps, h * w))
    ranks = pixel_ranks(sal)
    curves = np.empty((b, n_steps + 1))
    with eval_mode(net), torch.no_grad():
        xd = x.detach().to(device=dev, dtype=dtype)
        clean = torch.cat([_probabilities(net, xd[s : s + batch_size], fn) for s in range(0, b, batch_size)])
        n_classes = clean.shape[1]
        bad = (targets >= n_classes).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"{fn}: target[{bad[0]}] = {int(targets[bad[0]])} but the model has {n_classes} classes"
            )
        full = clean[torch.arange(b), targets.to(dev)]
        low = (full < min_clean_prob).nonzero().flatten().tolist()
        if low:
            raise ValueError(
                f"{fn}: the model gives target a clean probability below min_clean_prob="
                f"{min_clean_prob:g} on image(s) {low[:10]} (e.g. {float(full[low[0]]):.3g}); a score "
                "relative to it is meaningless: explain a class the model predicts, or lower "
                "min_clean_prob"
            )
        for i in tqdm(range(b), disable=not progress, desc=mode, leave=False):
            keep = (ranks[i][None] < counts[:, None, None]).to(dev)  # (n_steps + 1, H, W): top pixels
            if mode == "deletion":
                keep = ~keep
            probs = []
            for s in range(0, n_steps + 1, batch_size):
                masked = xd[i][None] * keep[s : s + batch_size, None].to(dtype)
                probs.append(_probabilities(net, masked, fn)[:, targets[i]])
            curves[i] = (torch.cat(probs) / full[i]).clamp(0, 1).cpu().numpy()
    return curves


def curve_auc(curves, fractions=None):
    """Area under curves (…, K) by the trapezoid rule (:func:`numpy.trapezoid`).

    ``fractions``: the K x-positions in [0, 1], non-decreasing (e.g. ``pixel_counts(n, H·W) / (H·W)``); by
    default K points spread evenly over [0, 1] with both ends included, the grid of :func:`curve_fractions`.
    The rule is exact for curves linear between grid points. Returns float64 numpy of shape ``curves.shape[:-1]``
    (a numpy float for one curve). Raises ValueError for fewer than 2 points, NaN/inf, or bad ``fractions``.
    """
    c = np.asarray(curves, dtype=np.float64)
    if c.ndim == 0 or c.shape[-1] < 2:
        raise ValueError(f"curves need at least 2 points on the last axis, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("curves hold NaN or inf")
    if fractions is None:
        xs = np.linspace(0.0, 1.0, c.shape[-1])
    else:
        xs = np.asarray(fractions, dtype=np.float64)
        if xs.shape != (c.shape[-1],):
            raise ValueError(f"fractions must have shape ({c.shape[-1]},), got {xs.shape}")
        if not np.isfinite(xs).all() or xs[0] < 0 or xs[-1] > 1 or (np.diff(xs) < 0).any():
            raise ValueError("fractions must be finite, non-decreasing and within [0, 1]")
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return trapezoid(c, x=xs, axis=-1)


def insertion_deletion_auc(
    model,
    x,
    saliency,
    target,
    *,
    n_steps: int = 100,
    batch_size: int = 50,
    device="auto",
    min_clean_prob: float = MIN_CLEAN_PROB,
    progress: bool = False,
):
    """Insertion and deletion AUC per image: ``{"insertion": (B,), "deletion": (B,)}`` float64 numpy arrays.

    The curves of :func:`insertion_deletion_curves` (arguments and errors as there) integrated by the
    trapezoid rule over the fraction of pixels actually inserted (``pixel_counts(n_steps, H·W) / (H·W)``), from
    no pixel to every pixel. A score therefore does not drift with ``n_steps``: a curve linear in that fraction
    gets its exact area at every step count (before this grid, the last point was step (n-1)/n and the area
    assumed 1, which biased insertion down and deletion up by 1/(2n)). Higher insertion and lower deletion AUC
    mean the map ranks the pixels that the model's decision rests on first.
    """
    out = {}
    for mode in ("insertion", "deletion"):
        curves = insertion_deletion_curves(
            model,
            x,
            saliency,
            target,
            mode=mode,
            n_steps=n_steps,
            batch_size=batch_size,
            device=device,
            min_clean_prob=min_clean_prob,
            progress=progress,
        )
        n_pixels = x.shape[-2] * x.shape[-1]
        out[mode] = curve_auc(curves, pixel_counts(n_steps, n_pixels) / n_pixels)
    return out


def summarize_aucs(
    table,
    *,
    baseline: str = "dense",
    cluster: str | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
):
    """Per method and explainer: mean insertion/deletion AUC with bootstrap intervals, and the paired
    difference to the ``baseline`` explainer (same images) with its interval.

    ``table``: long DataFrame with columns image, method, explainer, insertion, deletion (as returned by
    :func:`spade_utils.saliency.attribution_aucs`), finite scores. ``cluster``: optional name of a column that
    groups images that are not independent (e.g. the photo each crop was cut from); the intervals then
    resample clusters, then images within them (:func:`bootstrap_ci`, :func:`paired_bootstrap_diff`).
    Returns one row per (method, explainer) with ``n_images`` (and ``n_clusters`` with ``cluster``); a group
    too small for an interval (one image, or one cluster) gets NaN bounds. Raises ValueError for a missing
    column or baseline, or an explainer scored on images the baseline lacks.
    """
    import pandas as pd

    needed = {"image", "method", "explainer", "insertion", "deletion"} | (
        {cluster} if cluster is not None else set()
    )
    if not isinstance(table, pd.DataFrame) or not needed <= set(table.columns):
        raise ValueError(f"table must be a DataFrame with columns {sorted(needed)}")
    if len(table) == 0:
        raise ValueError("table is empty")
    if baseline not in set(table["explainer"]):
        raise ValueError(f"baseline {baseline!r} is not an explainer in the table")
    opts: dict = dict(n_boot=n_boot, level=level, seed=seed)

    def groups_of(frame):
        return None if cluster is None else frame[cluster].to_numpy()

    def enough(frame):
        return len(frame) >= 2 and (cluster is None or frame[cluster].nunique() >= 2)

    rows = []
    for (method, explainer), group in table.groupby(["method", "explainer"], sort=False):
        row = {"method": method, "explainer": explainer, "n_images": len(group)}
        if cluster is not None:
            row["n_clusters"] = group[cluster].nunique()
        base = table[(table["method"] == method) & (table["explainer"] == baseline)].set_index("image")
        missing = sorted(set(group["image"]) - set(base.index), key=str)
        if explainer != baseline and missing:
            raise ValueError(
                f"explainer {explainer!r} ({method}) has images the baseline lacks: {missing[:5]}"
            )
        for metric in ("insertion", "deletion"):
            if enough(group):
                mean, lo, hi = bootstrap_ci(group[metric].to_numpy(), clusters=groups_of(group), **opts)
            else:
                mean, lo, hi = float(group[metric].mean()), math.nan, math.nan
            row.update({metric: mean, f"{metric}_lo": lo, f"{metric}_hi": hi})
            if explainer != baseline:
                a = group[metric].to_numpy()
                b = base[metric].reindex(group["image"]).to_numpy()
                if enough(group):
                    d, dlo, dhi = paired_bootstrap_diff(a, b, groups_of(group), **opts)
                else:
                    d, dlo, dhi = float(np.mean(a - b)), math.nan, math.nan
                row.update({f"{metric}_diff": d, f"{metric}_diff_lo": dlo, f"{metric}_diff_hi": dhi})
        rows.append(row)
    return pd.DataFrame(rows)
