"""Bootstrap confidence intervals: plain, paired, and cluster-aware (resample clusters, then members).

:func:`bootstrap_ci` and :func:`paired_bootstrap_diff` run :func:`scipy.stats.bootstrap` (percentile, basic or
BCa) on independent values; with ``clusters=`` they resample whole clusters (e.g. the photos crops were cut
from), then members within each drawn cluster (a two-stage bootstrap; Davison & Hinkley 1997, §3.8), so crops
of one photo do not count as independent evidence. Every entry point checks its arguments before any work and
raises ``TypeError``/``ValueError`` naming the argument.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from .validation import check_float, check_int, check_seed

# --------------------------------------------------------------------------------------------------
# Bootstrap intervals: plain, paired, cluster-aware
# --------------------------------------------------------------------------------------------------
_BOOT_METHODS = ("percentile", "basic", "BCa")


def _finite_vector(values, name: str, fn_name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{fn_name}: {name} must be a sequence of numbers, got {type(values).__name__}")
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{fn_name}: {name} must be a sequence of numbers ({err})") from err
    v = v.ravel()
    if v.size < 2:
        raise ValueError(f"{fn_name}: {name} needs at least 2 values for an interval, got {v.size}")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise ValueError(f"{fn_name}: {name} holds NaN or inf (first at position {int(bad[0])} of {v.size})")
    return v


def _boot_settings(n_boot, level, seed, method, fn_name):
    level = check_float(level, "level", low=0.0, high=1.0, low_open=True, high_open=True)
    n_boot = check_int(n_boot, "n_boot", minimum=1)
    need = math.ceil(2 / (1 - level) - 1e-9)
    if n_boot < need:
        raise ValueError(
            f"{fn_name}: n_boot={n_boot} resamples cannot place a {level:g} interval (no resample "
            f"beyond each end); use n_boot >= {need}"
        )
    seed = check_seed(seed)
    if method not in _BOOT_METHODS:
        raise ValueError(f"{fn_name}: method must be one of {_BOOT_METHODS}, got {method!r}")
    return n_boot, level, seed


def _cluster_codes(clusters, n: int, fn_name: str) -> np.ndarray:
    if isinstance(clusters, torch.Tensor):
        clusters = clusters.detach().cpu().numpy()
    if isinstance(clusters, (str, bytes)):
        raise TypeError(f"{fn_name}: clusters must be a sequence of labels, one per value")
    import pandas as pd

    try:
        labels = list(clusters)
        codes, _ = pd.factorize(pd.Series(labels, dtype=object))
    except TypeError as err:
        raise TypeError(f"{fn_name}: clusters must be a sequence of hashable labels ({err})") from err
    if len(labels) != n:
        raise ValueError(f"{fn_name}: clusters has {len(labels)} labels for {n} values")
    if (codes < 0).any():
        raise ValueError(
            f"{fn_name}: clusters holds a missing label (None/NaN) at position {int(np.argmin(codes))}"
        )
    if codes.max() < 1:
        raise ValueError(
            f"{fn_name}: clusters holds a single cluster; an interval over clusters needs at least 2"
        )
    return codes.ravel()


def _cluster_boot_means(
    d: np.ndarray, codes: np.ndarray, n_boot: int, rng: np.random.Generator, within: bool = True
) -> np.ndarray:
    """Bootstrap distribution (n_boot,) of the mean of ``d`` under cluster resampling: draw G clusters with
    replacement out of the G present, then (``within``) as many items as each drawn cluster holds, with
    replacement from it; the statistic is the mean over all drawn items."""
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    d_sorted = d[order]
    g, m = len(sizes), int(sizes.max())
    slot = np.arange(m)
    chunk = max(1, 4_000_000 // (g * m))
    out = np.empty(n_boot)
    for b0 in range(0, n_boot, chunk):
        nb = min(chunk, n_boot - b0)
        pick = rng.integers(0, g, size=(nb, g))  # (nb, G) drawn clusters
        size = sizes[pick]  # (nb, G)
        valid = slot[None, None, :] < size[..., None]  # (nb, G, m)
        if within:
            pos = np.floor(rng.random((nb, g, m)) * size[..., None]).astype(np.int64)
        else:
            pos = np.broadcast_to(slot, (nb, g, m))
        pos = np.minimum(pos, size[..., None] - 1)
        vals = d_sorted[starts[pick][..., None] + pos]
        out[b0 : b0 + nb] = np.where(valid, vals, 0.0).sum((1, 2)) / size.sum(1)
    return out


def _scipy_bootstrap(data, statistic, *, paired, n_boot, level, seed, method):
    from scipy import stats

    rng_kw = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"
    n = len(data[0])
    res = stats.bootstrap(
        data,
        statistic,
        paired=paired,
        vectorized=True,
        n_resamples=n_boot,
        batch=max(1, 4_000_000 // n),
        confidence_level=level,
        method=method,
        **{rng_kw: np.random.default_rng(seed)},
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _interval(estimate, low, high, method, fn_name):
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(
            f"{fn_name}: the {method} interval is undefined for these values (constant data?); "
            "use method='percentile'"
        )
    return float(estimate), float(low), float(high)


def bootstrap_ci(
    values,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    clusters=None,
    method: str = "percentile",
    within: bool = True,
) -> tuple[float, float, float]:
    """Mean of ``values`` and its bootstrap ``level`` interval: ``(mean, low, high)``.

    ``values``: at least 2 finite numbers (any shape, flattened). Without ``clusters`` the interval is
    :func:`scipy.stats.bootstrap` (``method``: ``"percentile"`` (default), ``"basic"`` or ``"BCa"``; Efron &
    Tibshirani 1993) over ``n_boot`` resamples of the values. With ``clusters`` (one label per value, e.g. the
    photo each crop comes from; at least 2 clusters) values of one cluster are not independent, so whole
    clusters are resampled, then (``within=True``) the items inside each drawn cluster (two-stage bootstrap,
    Davison & Hinkley 1997 §3.8; it errs on the wide side), and the percentile interval is returned.
    ``n_boot`` must leave at least one resample beyond each end of the interval (>= 40 at level 0.95);
    ``seed`` makes the result reproducible.

    Raises TypeError for non-numeric input, ValueError for fewer than 2 values, NaN/inf values, ``level`` not
    in (0, 1), too few ``n_boot``, an unknown ``method``, a ``clusters`` of the wrong length or with one cluster.
    """
    fn = "bootstrap_ci"
    v = _finite_vector(values, "values", fn)
    n_boot, level, seed = _boot_settings(n_boot, level, seed, method, fn)
    if clusters is None:
        lo, hi = _scipy_bootstrap(
            (v,), np.mean, paired=False, n_boot=n_boot, level=level, seed=seed, method=method
        )
        return _interval(v.mean(), lo, hi, method, fn)
    return _cluster_interval(v, clusters, n_boot, level, seed, method, within, fn)


def _mean_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def paired_bootstrap_diff(
    a,
    b,
    clusters=None,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
    within: bool = True,
) -> tuple[float, float, float]:
    """Mean paired difference ``mean(a - b)`` and its bootstrap ``level`` interval: ``(diff, low, high)``.

    ``a`` and ``b``: the same items measured two ways (e.g. the insertion AUC of SPADE's and the dense
    model's map on the same crops), equal lengths >= 2, finite. Pairs are resampled together, so the
    between-item spread cancels. Without ``clusters`` this is :func:`scipy.stats.bootstrap` with
    ``paired=True``; with ``clusters`` (one label per pair, e.g. the photo a crop was cut from) whole clusters
    are resampled, then pairs within them (see :func:`bootstrap_ci`). Other arguments and errors as in
    :func:`bootstrap_ci`.
    """
    fn = "paired_bootstrap_diff"
    av, bv = _finite_vector(a, "a", fn), _finite_vector(b, "b", fn)
    if av.size != bv.size:
        raise ValueError(f"{fn}: a and b must pair up, got {av.size} and {bv.size} values")
    n_boot, level, seed = _boot_settings(n_boot, level, seed, method, fn)
    d = av - bv
    if clusters is None:
        lo, hi = _scipy_bootstrap(
            (av, bv), _mean_difference, paired=True, n_boot=n_boot, level=level, seed=seed, method=method
        )
        return _interval(d.mean(), lo, hi, method, fn)
    return _cluster_interval(d, clusters, n_boot, level, seed, method, within, fn)


def _cluster_interval(v, clusters, n_boot, level, seed, method, within, fn):
    """Mean of ``v`` and the percentile interval of the two-stage cluster bootstrap (see :func:`bootstrap_ci`)."""
    if method != "percentile":
        raise ValueError(f"{fn}: with clusters only method='percentile' is available, got {method!r}")
    codes = _cluster_codes(clusters, v.size, fn)
    means = _cluster_boot_means(v, codes, n_boot, np.random.default_rng(seed), within=bool(within))
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return _interval(v.mean(), lo, hi, method, fn)


# --------------------------------------------------------------------------------------------------
# Reading an interval
# --------------------------------------------------------------------------------------------------
def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def interval_text(estimate, low, high, *, scale: float = 100.0, signed: bool = False, digits: int = 1) -> str:
    """``"12.3 [10.1, 14.2]"``: an estimate and its interval times ``scale`` (default 100: fractions as
    percent or points), with ``digits`` decimals and, with ``signed``, an explicit sign (for differences).
    NaN bounds (too few values to resample) print as ``nan``. Raises TypeError for a non-number or a non-bool
    ``signed``, ValueError for ``low > high``, a NaN estimate or ``digits`` outside 0..6."""
    estimate, low, high = (_number(v, n) for v, n in ((estimate, "estimate"), (low, "low"), (high, "high")))
    scale = check_float(scale, "scale")
    digits = check_int(digits, "digits", minimum=0, maximum=6)
    if not isinstance(signed, (bool, np.bool_)):
        raise TypeError(f"signed must be a bool, got {type(signed).__name__}")
    if math.isnan(estimate):
        raise ValueError("estimate is NaN")
    if low > high:
        raise ValueError(f"low ({low}) is above high ({high})")
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    return "{} [{}, {}]".format(
        *(v if math.isnan(v) else fmt.format(scale * v) for v in (estimate, low, high))
    )


def excludes_zero(low, high) -> bool:
    """Whether the interval ``[low, high]`` lies wholly on one side of 0: a difference resolved at its level.
    False when a bound is NaN (too few values to resample). Raises TypeError for a non-number, ValueError for
    ``low > high``."""
    low, high = _number(low, "low"), _number(high, "high")
    if math.isnan(low) or math.isnan(high):
        return False
    if low > high:
        raise ValueError(f"low ({low}) is above high ({high})")
    return low > 0 or high < 0
