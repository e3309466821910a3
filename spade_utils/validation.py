"""Argument checks shared by every public function: one message style, raised before any work starts.

Each check returns the value converted to a plain Python type, or raises ``TypeError`` (wrong kind
of value) / ``ValueError`` (right kind, bad value) with a message that names the argument.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch


def check_int(value, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (Python or numpy, not bool, not a float such as 1.7 or 2.0) in [minimum, maximum]."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_positive_int(value, name: str) -> int:
    """``value`` as an int >= 1; TypeError (bool, float, non-int) or ValueError naming ``name`` otherwise."""
    return check_int(value, name, minimum=1)


def check_seed(value, name: str = "seed") -> int:
    """A seed: an int in [0, 2**63). Floats (1.7) are refused rather than truncated."""
    return check_int(value, name, minimum=0, maximum=2**63 - 1)


def numpy_seed(seed: int) -> int:
    """A seed accepted by numpy's legacy RNGs ([0, 2**32)) derived from any :func:`check_seed` value."""
    return int(seed) % (2**32)


def check_float(
    value,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number (int or float, not bool, not NaN/inf) in the given interval."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def check_sparsity(value, name: str = "sparsity") -> float:
    """A sparsity: the fraction of weights set to zero, in [0, 1)."""
    return check_float(value, name, low=0.0, high=1.0, high_open=True)


def check_probability(value, name: str) -> float:
    """``value`` as a float in [0, 1]; TypeError or ValueError (NaN, inf, out of range) naming ``name``."""
    return check_float(value, name, low=0.0, high=1.0)


def check_finite_tensor(x: torch.Tensor, name: str) -> torch.Tensor:
    """Refuse tensors holding NaN or inf (they pass range checks and fail much later, misleadingly)."""
    if x.is_floating_point() or x.is_complex():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} holds NaN or inf values")
    return x


def check_class_index(value, name: str, n_classes: int | None = None) -> int:
    """A class index: a non-negative int (``-1`` and ``3.7`` are refused), below ``n_classes`` when given."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.dtype == torch.bool:
            raise TypeError(
                f"{name} must be an int class index, got a {value.dtype} tensor of shape {tuple(value.shape)}"
            )
        value = int(value.item())
    return check_int(value, name, minimum=0, maximum=None if n_classes is None else n_classes - 1)


def check_nonempty(seq, name: str):
    """Refuse an empty sequence / array / tensor with a message naming it."""
    try:
        n = len(seq)
    except TypeError:
        return seq
    if n == 0:
        raise ValueError(f"{name} is empty")
    return seq
