"""A score against a null distribution of the same score: empirical p-value, the null's mean and 95th percentile.

Used where a score has no meaningful zero (notebook 05: the trigger-template similarity of a feature visualization
is a maximum over thousands of windows, so an image unrelated to the trigger still scores well above 0). The
question is then not "is the score high?" but "is it higher than the same score of images made the same way for
other objectives?". :func:`empirical_p_value` answers with the add-one estimate
``p = (1 + #{null >= score}) / (1 + n)`` (Davison & Hinkley 1997, eq. 4.11; North, Curtis & Sham 2002, "A note on
the calculation of empirical P values from Monte Carlo procedures"), which is never 0 and is a valid p-value when
the score and the null draws are exchangeable under the null hypothesis; its smallest value is ``1 / (1 + n)``.
:func:`best_of_p_value` corrects it for a score that is the best of ``m`` independent draws (Šidák:
``1 - (1 - p)^m``). :func:`null_summary` bundles the numbers a table row needs.
"""

from __future__ import annotations

import numpy as np
import torch

from .validation import check_int

__all__ = ["empirical_p_value", "best_of_p_value", "null_summary"]


def _score(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _null(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"null must be a sequence of numbers, got {type(values).__name__}")
    try:
        arr = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError) as err:
        raise TypeError(f"null must be a sequence of numbers: {err}") from err
    if arr.size == 0:
        raise ValueError("null is empty: give at least one null score")
    if not np.all(np.isfinite(arr)):
        raise ValueError("null holds NaN or infinite values")
    return arr


def empirical_p_value(score, null) -> float:
    """One-sided empirical p-value of ``score`` against the ``null`` scores (higher = more extreme):
    ``(1 + #{null >= score}) / (1 + len(null))``, in ``[1 / (1 + n), 1]``.

    ``score``: a finite real number. ``null``: a non-empty sequence (list, array, tensor) of finite numbers.
    Raises TypeError/ValueError naming the argument."""
    s, arr = _score(score, "score"), _null(null)
    return float((1 + np.count_nonzero(arr >= s)) / (1 + arr.size))


def best_of_p_value(p_value, m) -> float:
    """The p-value of the best of ``m`` independent draws whose single-draw p-value is ``p_value``:
    ``1 - (1 - p)^m`` (Šidák). ``m = 1`` returns ``p_value``. Raises TypeError/ValueError naming the argument."""
    p = _score(p_value, "p_value")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p_value must be in [0, 1], got {p}")
    m = check_int(m, "m", minimum=1)
    return p if m == 1 else float(-np.expm1(m * np.log1p(-p)))  # 1 - (1 - p)^m without round-off at small p


def null_summary(score, null, *, best_of: int = 1) -> dict[str, float]:
    """``{"score", "null_mean", "null_p95", "p_value", "n_null"}`` for one score against its null.

    ``null_p95`` is the null's 95th percentile (NumPy's default linear interpolation); ``p_value`` is
    :func:`empirical_p_value`, corrected by :func:`best_of_p_value` when the score is the best of ``best_of``
    images each comparable with one null draw. Raises TypeError/ValueError naming the argument."""
    s, arr = _score(score, "score"), _null(null)
    best_of = check_int(best_of, "best_of", minimum=1)
    return dict(
        score=s,
        null_mean=float(arr.mean()),
        null_p95=float(np.percentile(arr, 95)),
        p_value=best_of_p_value(empirical_p_value(s, arr), best_of),
        n_null=int(arr.size),
    )
