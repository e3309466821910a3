"""Quantitative checks of saliency maps: insertion/deletion AUC, Trojan AUC, pointing game."""

from __future__ import annotations


# --------------------------------------------------------------------------------------------------
# Trojan (backdoor) localisation: Trojan AUC and the pointing game
# --------------------------------------------------------------------------------------------------
def _maps_and_masks(saliency, mask, fn_name: str):
    """Saliency (H,W) or (B,H,W) and bool masks of the same shape (a single (H,W) mask is broadcast)
    -> float64 numpy (B,H,W), bool numpy (B,H,W), and whether the input was a single map."""
    import numpy as np
    import torch

    def as_np(a, name):
        if isinstance(a, torch.Tensor):
            return a.detach().cpu().numpy()
        if isinstance(a, np.ndarray):
            return a
        raise TypeError(f"{fn_name}: {name} must be a numpy array or torch tensor, got {type(a).__name__}")

    s, m = as_np(saliency, "saliency"), as_np(mask, "mask")
    if s.ndim not in (2, 3):
        raise ValueError(f"{fn_name}: saliency must be (H, W) or (B, H, W) (sum channels first), got shape {s.shape}")
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
    """ROC-AUC of scores for bool labels (Mann-Whitney U with averaged ranks: ties count one half)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores.ravel())
    pos = labels.ravel()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def trojan_auc(saliency, mask, *, mode: str = "best"):
    """Pixel ROC-AUC of a saliency map against the trigger's pixel mask (the paper's Trojan AUC).

    ``saliency``: a channel-summed map (H, W) or a batch (B, H, W) (see :func:`channel_sum`);
    ``mask``: bool (H, W) or (B, H, W), True on the trigger's own pixels. ``mode``: ``"signed"``
    ranks pixels by the map itself, ``"absolute"`` by its magnitude, ``"best"`` (the paper's choice)
    takes the better of the two per map. A map equal to the mask scores 1, its negative 0 (signed),
    a constant map 0.5. Returns a float for one map, a numpy array of B values for a batch.
    """
    import numpy as np

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
    """Pointing game (Zhang et al. 2016): is the map's maximum on the trigger?

    A hit when the highest-scoring pixel (of the map, or of its magnitude with ``absolute=True``)
    lies within ``tolerance`` pixels (Chebyshev distance) of a mask pixel. When several pixels share
    the maximum, the hit is the share of them that land on the (dilated) mask, so a constant map
    scores the mask's area share instead of a lucky first pixel. Returns a float (or an array for a batch).
    """
    import numpy as np

    if not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise ValueError(f"tolerance must be an int >= 0, got {tolerance!r}")
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
    if attribution.ndim not in (3, 4):
        raise ValueError(f"attribution must be (C, H, W) or (B, C, H, W), got shape {tuple(attribution.shape)}")
    return attribution.sum(-3)


def bootstrap_ci(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap ``level`` interval: ``(mean, low, high)``."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("values must not be empty")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


# --------------------------------------------------------------------------------------------------
# Insertion and deletion AUC (the SPADE paper's Table 2 protocol)
# --------------------------------------------------------------------------------------------------
def _insertion_inputs(model, x, saliency, target, n_steps, batch_size, fn_name):
    import torch
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn_name}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"{fn_name}: x must be a float (B, C, H, W) tensor of normalised images")
    if not isinstance(saliency, torch.Tensor):
        import numpy as np

        if not isinstance(saliency, np.ndarray):
            raise TypeError(f"{fn_name}: saliency must be a torch tensor or numpy array, got {type(saliency).__name__}")
        saliency = torch.from_numpy(saliency)
    if saliency.dim() == 4:
        saliency = saliency.sum(1)
    if saliency.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"{fn_name}: saliency must be (B, H, W) (or (B, C, H, W), summed over C) matching x "
                         f"{tuple(x.shape)}, got {tuple(saliency.shape)}")
    if not torch.isfinite(saliency).all():
        raise ValueError(f"{fn_name}: saliency contains NaN or inf")
    if isinstance(target, bool):
        raise TypeError(f"{fn_name}: target must be an int or a sequence/tensor of ints")
    if isinstance(target, int):
        t = torch.full((x.shape[0],), target, dtype=torch.long)
    else:
        try:
            t = torch.as_tensor(target).long().reshape(-1).cpu()
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{fn_name}: target must be an int or a sequence/tensor of ints") from err
    if t.numel() != x.shape[0]:
        raise ValueError(f"{fn_name}: target has {t.numel()} entries for a batch of {x.shape[0]}")
    for name, value in (("n_steps", n_steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{fn_name}: {name} must be an int, got {type(value).__name__}")
        if value < (2 if name == "n_steps" else 1):
            raise ValueError(f"{fn_name}: {name} must be >= {2 if name == 'n_steps' else 1}, got {value}")
    return saliency.detach().float().cpu(), t


def pixel_ranks(saliency):
    """Rank of every pixel by its (channel-summed) saliency: 0 for the highest. (B, H, W) -> (B, H, W) long.

    Ties keep raster order (a stable sort), so the ranking is deterministic.
    """
    import torch

    flat = torch.as_tensor(saliency).flatten(1)
    order = torch.sort(-flat, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1]).expand_as(order))
    return ranks.view(torch.as_tensor(saliency).shape)


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
    progress: bool = False,
):
    """Class-probability curves as the most salient pixels are kept (insertion) or removed (deletion).

    For step ``k = 0 … n_steps-1`` the top ``round(k / n_steps · H·W)`` pixels by the channel-summed map
    are kept (insertion: every other pixel set to 0 in normalised space, i.e. the dataset mean colour) or
    set to 0 (deletion). The score is the softmax probability of ``target`` on the masked image divided by
    its probability on the unmasked image, clipped to [0, 1]. ``model`` should be the dense model (maps
    from a SPADE trace are scored on the dense network). Returns a numpy array (B, n_steps).
    """
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from .models import resolve_device

    if mode not in ("insertion", "deletion"):
        raise ValueError(f"mode must be 'insertion' or 'deletion', got {mode!r}")
    sal, targets = _insertion_inputs(model, x, saliency, target, n_steps, batch_size, "insertion_deletion_curves")
    dev = resolve_device(device)
    net = model
    params = list(model.parameters())
    if params and params[0].device != dev:
        import copy

        net = copy.deepcopy(model).to(dev)
    was_training = net.training
    b, _, h, w = x.shape
    counts = torch.round(torch.arange(n_steps, dtype=torch.float64) / n_steps * h * w).long()
    ranks = pixel_ranks(sal)
    curves = np.empty((b, n_steps))
    try:
        net.eval()
        with torch.no_grad():
            xd = x.detach().to(dev)
            full = torch.softmax(net(xd).float(), dim=1)[torch.arange(b), targets.to(dev)]
            for i in tqdm(range(b), disable=not progress, desc=mode, leave=False):
                keep = (ranks[i][None] < counts[:, None, None]).to(dev)  # (n_steps, H, W): top pixels
                if mode == "deletion":
                    keep = ~keep
                probs = []
                for s in range(0, n_steps, batch_size):
                    masked = xd[i][None] * keep[s : s + batch_size, None].to(xd.dtype)
                    probs.append(torch.softmax(net(masked).float(), dim=1)[:, targets[i]])
                ratio = torch.cat(probs) / full[i].clamp_min(torch.finfo(torch.float32).tiny)
                curves[i] = ratio.clamp(0, 1).cpu().double().numpy()
    finally:
        net.train(was_training)
    return curves


def curve_auc(curves):
    """Trapezoid area under curves (…, n_steps) whose steps are spread evenly over [0, 1]."""
    import numpy as np

    c = np.asarray(curves, dtype=np.float64)
    if c.shape[-1] < 2:
        raise ValueError(f"curves need at least 2 steps, got shape {c.shape}")
    return ((c[..., 1:] + c[..., :-1]) / 2).sum(-1) / (c.shape[-1] - 1)


def insertion_deletion_auc(model, x, saliency, target, *, n_steps: int = 100, batch_size: int = 50,
                           device="auto", progress: bool = False):
    """Insertion and deletion AUC per image: ``{"insertion": (B,), "deletion": (B,)}`` numpy arrays.

    Higher insertion and lower deletion AUC mean the map ranks the pixels that the model's decision rests
    on first. See :func:`insertion_deletion_curves` for the protocol and :func:`curve_auc` for the area.
    """
    return {
        mode: curve_auc(insertion_deletion_curves(model, x, saliency, target, mode=mode, n_steps=n_steps,
                                                  batch_size=batch_size, device=device, progress=progress))
        for mode in ("insertion", "deletion")
    }


def summarize_aucs(table, *, baseline: str = "dense", n_boot: int = 2000, level: float = 0.95, seed: int = 0):
    """Per method and explainer: mean insertion/deletion AUC with bootstrap intervals, and the paired
    difference to the ``baseline`` explainer (same images) with its interval.

    ``table``: long DataFrame with columns image, method, explainer, insertion, deletion (as returned by
    :func:`spade_utils.saliency.attribution_aucs`). Returns one row per (method, explainer).
    """
    import pandas as pd

    needed = {"image", "method", "explainer", "insertion", "deletion"}
    if not isinstance(table, pd.DataFrame) or not needed <= set(table.columns):
        raise ValueError(f"table must be a DataFrame with columns {sorted(needed)}")
    if baseline not in set(table["explainer"]):
        raise ValueError(f"baseline {baseline!r} is not an explainer in the table")
    rows = []
    for (method, explainer), group in table.groupby(["method", "explainer"], sort=False):
        row = {"method": method, "explainer": explainer, "n_images": len(group)}
        base = table[(table["method"] == method) & (table["explainer"] == baseline)].set_index("image")
        for metric in ("insertion", "deletion"):
            mean, lo, hi = bootstrap_ci(group[metric].to_numpy(), n_boot=n_boot, level=level, seed=seed)
            row.update({metric: mean, f"{metric}_lo": lo, f"{metric}_hi": hi})
            if explainer != baseline:
                diff = group.set_index("image")[metric] - base[metric].reindex(group["image"]).to_numpy()
                d, dlo, dhi = bootstrap_ci(diff.to_numpy(), n_boot=n_boot, level=level, seed=seed)
                row.update({f"{metric}_diff": d, f"{metric}_diff_lo": dlo, f"{metric}_diff_hi": dhi})
        rows.append(row)
    return pd.DataFrame(rows)
