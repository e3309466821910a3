"""Checks for the student notebooks in ``exercises/``: each takes the student's function and tests it.

Every ``check_*`` takes one callable ``fn``, runs it on fixed cases (chosen so that the usual mistakes give a
different answer) and on seeded random cases, and compares the result with the library's reference
implementation (:mod:`.hessian`, :mod:`.solvers`, :mod:`.metrics`, :mod:`.toy`) within a tolerance. It
returns ``None`` when everything agrees and raises ``AssertionError`` otherwise, with a message naming the case
and, where the wrong answer matches a known mistake (wrong normalisation, sign, off-by-one in the zero count,
ties, ...), that mistake. A non-callable ``fn`` is refused with ``TypeError`` before anything runs. Whatever
``fn`` raises itself (``NotImplementedError`` from an unfinished stub) propagates unchanged. The student's
function receives copies of the inputs; modifying them in place is reported as a mistake.

The checks and their sources:

==========================  ===========================================================================
check                       what ``fn`` computes
==========================  ===========================================================================
:func:`check_jitter`        the toy's augmentation: Gaussian views of one 2-D point (notebook 01)
:func:`check_gram`          the layer-input statistics ``H = (2/n) sum x x^T`` (SPADE §3; OBC Eq. 1)
:func:`check_reconstruction_loss`  ``tr(dW H dW^T) / 2``, the layer-wise pruning loss
:func:`check_magnitude_prune`      global magnitude pruning to ``round(sparsity * numel)`` zeros
:func:`check_obs_step`      one Optimal Brain Surgeon removal (Hassibi & Stork 1993, Eqs. 5-6)
:func:`check_hinv_downdate` removing one input from ``H^-1`` (OBC, Frantar et al. 2022, Eq. 4)
:func:`check_trojan_auc`    the pixel ROC-AUC of a saliency map against a trigger mask (SPADE §5.2)
:func:`check_pointing_game` whether the map's maximum falls on the trigger (Zhang et al. 2016)
:func:`check_best_trojan_auc`      the better of the signed and absolute map's AUC (SPADE §5.2)
==========================  ===========================================================================
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .hessian import batch_gram
from .metrics import pointing_game, trojan_auc
from .solvers import magnitude_prune, reconstruction_loss

_SEED = 20240716  # the random cases are random, but the same on every run


# --------------------------------------------------------------------------------------------------
# shared plumbing
# --------------------------------------------------------------------------------------------------
def _need_callable(fn, check: str) -> None:
    if not callable(fn):
        raise TypeError(f"{check}: fn must be your function (a callable), got {type(fn).__name__} {fn!r}")


def _fail(check: str, case: str, message: str):
    raise AssertionError(f"{check} [{case}]: {message}")


def _copy(a):
    return a.clone() if isinstance(a, torch.Tensor) else a


def _run(check: str, case: str, fn: Callable, args: Sequence[Any], names: Sequence[str]):
    """Call ``fn`` on copies of ``args``; fail if it modified them."""
    copies = [_copy(a) for a in args]
    out = fn(*copies)
    for name, a, c in zip(names, args, copies):
        if isinstance(a, torch.Tensor) and not torch.equal(a, c):
            _fail(
                check,
                case,
                f"your function modified its argument `{name}` in place; work on a copy (`.clone()`)",
            )
    return out


def _tensor(check: str, case: str, out, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """``out`` as a float64 CPU tensor of ``shape``, or a clear failure."""
    if not isinstance(out, torch.Tensor):
        _fail(check, case, f"{what} must be a torch.Tensor of shape {shape}, got {type(out).__name__}")
    if tuple(out.shape) != shape:
        _fail(check, case, f"{what} must have shape {shape}, got {tuple(out.shape)}")
    if out.is_complex():
        _fail(check, case, f"{what} must be a real tensor, got dtype {out.dtype}")
    out = out.detach().cpu().to(torch.float64)
    if not bool(torch.isfinite(out).all()):
        _fail(check, case, f"{what} holds NaN or inf (a division by zero?)")
    return out


def _number(check: str, case: str, out, what: str) -> float:
    """``out`` (a Python/numpy number or a one-element tensor) as a finite float, or a clear failure."""
    if isinstance(out, torch.Tensor):
        if out.numel() != 1:
            _fail(check, case, f"{what} must be one number, got a tensor of shape {tuple(out.shape)}")
        out = out.detach().cpu().item()
    if isinstance(out, np.ndarray) and out.size == 1:
        out = out.item()
    if isinstance(out, (bool, np.bool_)) or not isinstance(out, (int, float, np.integer, np.floating)):
        _fail(check, case, f"{what} must be a number (float), got {type(out).__name__}")
    value = float(out)
    if not math.isfinite(value):
        _fail(check, case, f"{what} is {value} (a division by zero?)")
    return value


def _close(a, b, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    if isinstance(a, torch.Tensor):
        b = b.to(device=a.device, dtype=a.dtype)
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def _explain(got, want, candidates, *, rtol: float, atol: float) -> str:
    """The message of the first known mistake that reproduces ``got``, else the size of the difference."""
    matches = [message for message, value in candidates if _close(got, value, rtol, atol)]
    if matches:  # on some cases two mistakes give the same answer: name each
        return " -- or: ".join(dict.fromkeys(matches))
    if isinstance(got, torch.Tensor):
        diff = float((got - want).abs().max())
        return f"differs from the reference by up to {diff:.3g} (reference max |value| {float(want.abs().max()):.3g})"
    return f"got {got:.6g}, expected {want:.6g}"


def _generator(offset: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(_SEED + offset)


def _random_spd(d: int, g: torch.Generator) -> torch.Tensor:
    """A well-conditioned random statistics matrix (2/n) X X^T, float64."""
    X = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
    # elementwise rather than a BLAS product: no thread pool to wake for a 6 x 6 matrix
    return (2.0 / X.shape[1]) * (X.unsqueeze(1) * X.unsqueeze(0)).sum(-1) + 0.1 * torch.eye(
        d, dtype=torch.float64
    )


# --------------------------------------------------------------------------------------------------
# notebook 01: the toy's augmentation, the statistics, the loss
# --------------------------------------------------------------------------------------------------
def check_jitter(fn: Callable) -> None:
    """Check ``fn(sample: Tensor[2], n: int, std: float, generator: torch.Generator) -> Tensor[n, 2]``.

    The toy's augmentation (:func:`spade_utils.toy.jitter`): ``n`` views ``sample + std * z`` with ``z`` standard
    normal, independent per view and per coordinate, drawn from ``generator`` (so a seeded generator gives the
    same views). Statistical checks on 20 000 views (mean, per-coordinate standard deviation, correlation, the
    share within one standard deviation) plus ``std = 0`` (exact copies) and reproducibility. Diagnosed: the
    variance used as standard deviation, one noise value shared by both coordinates, non-Gaussian noise, the
    sample not added, the generator ignored. Returns None; AssertionError on a mismatch, TypeError for a
    non-callable ``fn``.
    """
    check = "check_jitter"
    _need_callable(fn, check)
    names = ("sample", "n", "std", "generator")
    sample = torch.tensor([1.5, -0.5])
    n = 20000
    # the reference's own statistics stay inside the bounds below (a sanity check of the bounds themselves)
    for std in (0.5, 2.0):
        case = f"sample={sample.tolist()}, n={n}, std={std}"
        views = _tensor(
            check, case, _run(check, case, fn, (sample, n, std, _generator()), names), (n, 2), "views"
        )
        mean, sd = views.mean(0), views.std(0)
        corr = float(torch.corrcoef(views.T)[0, 1]) if bool((sd > 0).all()) else 1.0
        if bool((sd < 1e-12).all()):
            _fail(
                check, case, "all views are identical: add noise std * torch.randn(n, 2, generator=generator)"
            )
        if _close(sd, torch.full((2,), std**2), rtol=0.05, atol=0):
            _fail(
                check, case, f"the spread is std**2 = {std**2}: `std` is a standard deviation, not a variance"
            )
        if abs(corr) > 0.2:
            _fail(
                check,
                case,
                f"the two coordinates are correlated (r = {corr:.2f}): draw noise of shape (n, 2), "
                "one independent value per coordinate",
            )
        if bool((mean.abs() < 5 * std / math.sqrt(n)).all()) and bool(sample.abs().max() > 0.2):
            _fail(check, case, "the views are centred on 0: add the noise to the sample")
        if not bool(((mean - sample.double()).abs() < 5 * std / math.sqrt(n)).all()):
            _fail(check, case, f"the views' mean is {mean.tolist()}, expected the sample {sample.tolist()}")
        if not _close(sd, torch.full((2,), std), rtol=0.05, atol=0):
            _fail(
                check, case, f"the views' standard deviation is {sd.tolist()}, expected {std} per coordinate"
            )
        inside = float(((views - sample.double()).abs() < std).double().mean())
        if not 0.66 < inside < 0.71:
            _fail(
                check,
                case,
                f"{inside:.1%} of the noise lies within one std (a normal law puts 68.3% there): "
                "use torch.randn, not torch.rand",
            )
    case = "std=0"
    views = _tensor(
        check, case, _run(check, case, fn, (sample, 5, 0.0, _generator()), names), (5, 2), "views"
    )
    if not torch.equal(views, sample.double().expand(5, 2)):
        _fail(check, case, "with std = 0 every view must equal the sample exactly")
    case = "same seed twice"
    a = _run(check, case, fn, (sample, 7, 0.5, _generator(1)), names)
    b = _run(check, case, fn, (sample, 7, 0.5, _generator(1)), names)
    if not torch.equal(_tensor(check, case, a, (7, 2), "views"), _tensor(check, case, b, (7, 2), "views")):
        _fail(
            check,
            case,
            "two generators with the same seed gave different views: draw the noise from "
            "`generator` (torch.randn(..., generator=generator)), not from the global RNG",
        )
    case = "n=1"
    _tensor(check, case, _run(check, case, fn, (sample, 1, 0.5, _generator(2)), names), (1, 2), "views")


def _reference_gram(x: torch.Tensor) -> torch.Tensor:
    """(2/n) sum x x^T through the library's statistics (a Linear layer sees every leading position)."""
    layer = nn.Linear(x.shape[-1], 1, bias=False)
    total, count = batch_gram(layer, x.double(), dtype=torch.float64)
    return total[0] * (2.0 / count)


def check_gram(fn: Callable) -> None:
    """Check ``fn(x: Tensor[..., d]) -> Tensor[d, d]``: the layer-input statistics ``H = (2/n) sum x x^T``.

    The sum runs over every leading position of ``x`` (``n`` = the product of all leading dimensions), as
    :class:`spade_utils.hessian.HessianRecorder` accumulates a Linear layer's inputs; ``2/n`` makes H the
    Hessian of the mean squared output error (OBC, Frantar et al. 2022, Eq. 1; SPADE §3). Cases: hand-made
    small inputs and seeded random float32/float64 inputs with 1, 2 and 3 leading dimensions. Diagnosed:
    ``1/n`` instead of ``2/n``, no normalisation, dividing by the first dimension only, leading dimensions not
    flattened, ``X X^T`` instead of ``X^T X``, a subtracted mean, any other constant factor. Returns None; AssertionError on a mismatch,
    TypeError for a non-callable ``fn``.
    """
    check = "check_gram"
    _need_callable(fn, check)
    g = _generator()
    cases = [
        ("fixed 3 x 2", torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])),
        ("fixed 4 x 3", torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0], [2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])),
        ("random (3, 4, 5)", torch.randn(3, 4, 5, generator=g) + 0.5),
        ("random (3, 2, 4, 3) float64", torch.randn(3, 2, 4, 3, generator=g, dtype=torch.float64) + 1.0),
        ("random (50, 4)", torch.randn(50, 4, generator=g) - 0.3),
    ]
    for case, x in cases:
        d, n, first = x.shape[-1], x[..., 0].numel(), x.shape[0]
        out = _run(check, case, fn, (x,), ("x",))
        if isinstance(out, torch.Tensor) and tuple(out.shape) != (d, d):
            if tuple(out.shape) == (n, n) or tuple(out.shape) == (first, first):
                _fail(
                    check,
                    case,
                    f"got shape {tuple(out.shape)}: that is X X^T over positions; "
                    f"H is d x d = ({d}, {d}): X^T X with X of shape (n, d)",
                )
            if out.dim() > 2 and tuple(out.shape[-2:]) == (d, d):
                _fail(
                    check,
                    case,
                    f"got shape {tuple(out.shape)}: flatten the leading dimensions first "
                    "(x.reshape(-1, d)) and sum over all positions",
                )
        got = _tensor(check, case, out, (d, d), "H")
        want = _reference_gram(x)
        if _close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max())):
            continue
        xf = x.double().reshape(-1, d)
        centred = xf - xf.mean(0)
        candidates = [
            ("1/n instead of 2/n: H = (2/n) sum x x^T (a factor of 2 is missing)", want / 2),
            ("no normalisation: multiply sum x x^T by 2/n", want * n / 2),
            (
                f"normalised by the first dimension ({first}) instead of n = {n}, the count of all leading positions",
                want * n / first,
            ),
            (
                f"1/{first} instead of 2/n: n counts all leading positions, and the factor is 2",
                want * n / first / 2,
            ),
            (
                "you subtracted the mean: H is the uncentred second moment (2/n) sum x x^T",
                (2.0 / n) * centred.T @ centred,
            ),
        ]
        scale = float((got.double() * want).sum() / (want * want).sum())  # got = scale * want, least squares
        candidates.append(
            (
                f"H is {scale:.4g} times the reference: the pattern is right, the normalisation is not; "
                f"H = (2/n) sum x x^T with n = {n}, the number of leading positions",
                want * scale,
            )
        )
        _fail(check, case, _explain(got, want, candidates, rtol=1e-5, atol=1e-6 * float(want.abs().max())))


def check_reconstruction_loss(fn: Callable) -> None:
    """Check ``fn(W: Tensor[rows, d], W_sparse: Tensor[rows, d], H: Tensor[d, d]) -> float``.

    The layer-wise pruning loss ``tr((W - W') H (W - W')^T) / 2``: with ``H = (2/n) X X^T`` the mean over the
    inputs of ``||(W - W') x||^2`` (:func:`spade_utils.solvers.reconstruction_loss`). Cases with rows != d and
    a non-diagonal H. Diagnosed: the missing 1/2, a wrong sign, H ignored (a plain Frobenius norm), only the
    diagonal of H used. Returns None; AssertionError on a mismatch, TypeError for a non-callable ``fn``.
    """
    check = "check_reconstruction_loss"
    _need_callable(fn, check)
    g = _generator()
    cases = []
    for rows, d in ((2, 3), (3, 5), (6, 4)):
        W = torch.randn(rows, d, generator=g, dtype=torch.float64)
        cases.append((f"random W ({rows}, {d})", W, magnitude_prune(W, None, 0.5), _random_spd(d, g)))
    for case, W, Ws, H in cases:
        got = _number(check, case, _run(check, case, fn, (W, Ws, H), ("W", "W_sparse", "H")), "the loss")
        want = float(reconstruction_loss(W, Ws, H))
        if _close(got, want, 1e-6, 1e-12):
            continue
        dW = W - Ws
        candidates = [
            ("the factor 1/2 is missing: loss = tr(dW H dW^T) / 2", 2 * want),
            ("wrong sign: the loss is a squared error, never negative", -want),
            (
                "H is ignored: that is ||dW||^2 / 2 (or ||dW||^2); weigh dW by H: tr(dW H dW^T) / 2",
                float((dW**2).sum()) / 2,
            ),
            ("H is ignored: that is ||dW||^2; the loss is tr(dW H dW^T) / 2", float((dW**2).sum())),
            (
                "only the diagonal of H is used; the inputs are correlated: use the full matrix",
                float(((dW**2) * torch.diagonal(H)).sum()) / 2,
            ),
        ]
        _fail(check, case, _explain(got, want, candidates, rtol=1e-6, atol=1e-12))


# --------------------------------------------------------------------------------------------------
# notebook 02: magnitude pruning, one OBS step, the inverse downdate
# --------------------------------------------------------------------------------------------------
def _k_smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k smallest entries of ``scores`` (any shape), ties broken by position."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[scores.reshape(-1).argsort(stable=True)[:k]] = True
    return mask.reshape(scores.shape)


def check_magnitude_prune(fn: Callable) -> None:
    """Check ``fn(W: Tensor[rows, cols], sparsity: float) -> Tensor[rows, cols]``: global magnitude pruning.

    Exactly ``round(sparsity * W.numel())`` entries become zero, those with the smallest ``|w|`` over the whole
    matrix; the others keep their values; W itself is left unchanged (:func:`spade_utils.solvers.magnitude_prune`,
    the baseline of OBC/SparseGPT). With tied magnitudes any choice among the tied weights is accepted, but the
    count must be exact. No case has ``sparsity * numel`` exactly half-way between two integers. Diagnosed:
    floor instead of round (off by one in the zero count), pruning the largest weights, ranking by the signed
    value instead of ``|w|``, pruning each row separately instead of globally, a threshold that prunes every
    tied weight, kept weights changed. Returns None; AssertionError on a mismatch, TypeError for a
    non-callable ``fn``.
    """
    check = "check_magnitude_prune"
    _need_callable(fn, check)
    g = _generator()
    fixed = torch.tensor([[0.3, -1.2, 0.05, 2.0, -0.1], [1.1, -0.02, 0.9, -1.6, 0.7]])
    ties = torch.tensor([[1.0, -1.0, 1.0, 2.0], [0.5, -0.5, 3.0, 1.0]])
    cases = [
        ("fixed (2, 5), sparsity 0.36", fixed, 0.36),
        ("fixed (2, 5), sparsity 0.78", fixed, 0.78),
        ("fixed (2, 5), sparsity 0.0", fixed, 0.0),
        ("tied magnitudes (2, 4), sparsity 0.375", ties, 0.375),
        ("random (6, 9), sparsity 0.5", torch.randn(6, 9, generator=g), 0.5),
        ("random (8, 16), sparsity 0.9", torch.randn(8, 16, generator=g, dtype=torch.float64), 0.9),
        ("random (1, 12), sparsity 0.7", torch.randn(1, 12, generator=g), 0.7),
    ]
    for case, W, sparsity in cases:
        rows, cols = W.shape
        out = _tensor(
            check, case, _run(check, case, fn, (W, sparsity), ("W", "sparsity")), (rows, cols), "the result"
        )
        Wd = W.double()
        k = int(round(sparsity * W.numel()))
        zero = out == 0
        z = int(zero.sum())
        if not torch.equal(out[~zero], Wd[~zero]):
            _fail(check, case, "weights that are kept changed value: multiply by a 0/1 mask, do not rescale")
        per_row = magnitude_prune(W.unsqueeze(1), None, sparsity).squeeze(1) == 0
        if z != k:
            floor = math.floor(sparsity * W.numel())
            if rows > 1 and torch.equal(zero, per_row):
                msg = (
                    f"{z} zeros, {int(round(sparsity * cols))} in every row: prune globally over the whole "
                    f"matrix ({k} zeros), not row by row"
                )
            elif z == floor and floor != k:
                msg = (
                    f"{z} zeros instead of round({sparsity} * {W.numel()}) = {k}: floor (int()) instead of round "
                    "(off by one in the zero count)"
                )
            elif z > k and bool(Wd[zero].abs().max() <= Wd[~zero].abs().min() if (~zero).any() else True):
                msg = (
                    f"{z} zeros instead of {k}: a threshold |w| <= t zeroes every weight tied with the k-th "
                    "smallest; prune exactly k weights (argsort/topk indices)"
                )
            elif abs(z - k) == 1:
                msg = f"{z} zeros instead of {k}: off by one in the zero count (round(sparsity * W.numel()))"
            else:
                msg = f"{z} zeros instead of round({sparsity} * {W.numel()}) = {k}"
            _fail(check, case, msg)
        if k == 0 or (~zero).sum() == 0:
            continue
        if float(Wd[zero].abs().max()) <= float(Wd[~zero].abs().min()):
            continue  # the k smallest magnitudes (any choice among ties)
        if torch.equal(zero, _k_smallest(-Wd.abs(), k)):
            msg = "you pruned the largest |w|; prune the smallest"
        elif torch.equal(zero, _k_smallest(Wd, k)):
            msg = "you ranked by the signed value (the most negative went first); rank by |w|"
        elif torch.equal(zero, per_row):
            msg = "each row was pruned separately (row by row); rank all weights of the matrix together"
        else:
            msg = (
                f"a pruned weight (|w| = {float(Wd[zero].abs().max()):.3g}) is larger than a kept one "
                f"(|w| = {float(Wd[~zero].abs().min()):.3g}): zero the smallest |w|"
            )
        _fail(check, case, msg)


@functools.lru_cache(maxsize=1)
def _obs_cases() -> list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(name, w, H_inv, pruned): H_inv is the inverse of H restricted to the unpruned inputs (zero elsewhere,
    as after OBS downdates) and w is zero on the pruned inputs. Each case is drawn until the usual wrong scores
    pick another weight than the right one, with a clear margin."""
    g = _generator(3)
    cases = []
    for name, d, pruned_at in (
        ("d=5, none pruned", 5, ()),
        ("d=7, 2 already pruned", 7, (1, 4)),
        ("d=6, 3 already pruned", 6, (0, 2, 5)),
    ):
        for _ in range(1000):
            scale = torch.exp(torch.randn(d, generator=g, dtype=torch.float64))  # inputs of unequal size
            H = _random_spd(d, g) * scale.unsqueeze(0) * scale.unsqueeze(1)
            w = torch.randn(d, generator=g, dtype=torch.float64)
            pruned = torch.zeros(d, dtype=torch.bool)
            pruned[list(pruned_at)] = True
            keep = (~pruned).nonzero().squeeze(1)
            H_inv = torch.zeros(d, d, dtype=torch.float64)
            H_inv[keep.unsqueeze(1), keep] = torch.linalg.inv(H[keep.unsqueeze(1), keep])
            w[pruned] = 0.0
            diag = torch.diagonal(H_inv)
            inf = torch.full_like(w, math.inf)
            score = torch.where(pruned, inf, w**2 / diag.clamp_min(1e-300))
            best = score.sort().values
            wrong = [
                torch.where(pruned, inf, w.abs() / diag.clamp_min(1e-300)),  # no square
                torch.where(pruned, inf, w / diag.clamp_min(1e-300)),  # no square, signed
                torch.where(pruned, inf, w**2),  # H ignored
                torch.where(pruned, inf, w**2 * diag),
            ]  # multiplied by [H^-1]_jj
            j = int(score.argmin())
            if best[1] > 1.3 * best[0] and all(int(s.argmin()) != j for s in wrong):
                cases.append((f"{name}", w, H_inv, pruned))
                break
        else:  # pragma: no cover - the draw above succeeds within a few tries
            raise RuntimeError("could not draw a discriminating OBS case")
    return cases


def check_obs_step(fn: Callable) -> None:
    """Check ``fn(w: Tensor[d], H_inv: Tensor[d, d], pruned: Tensor[d] bool) -> (j, w_new, loss_increase)``.

    One Optimal-Brain-Surgeon removal (Hassibi & Stork 1993, Eqs. 5-6; OBC, Frantar et al. 2022, Eqs. 2-3):
    among the unpruned inputs choose ``j`` minimising ``w_j^2 / [H^-1]_jj``; compensate the others,
    ``w_new = w - (w_j / [H^-1]_jj) H^-1[:, j]``, with ``w_new[j] = 0`` exactly and the already-pruned entries
    still exactly 0; ``loss_increase = w_j^2 / (2 [H^-1]_jj)``. ``j`` may be an int or a 0-d integer tensor,
    ``loss_increase`` a float or a one-element tensor. Cases: ``H_inv`` is the inverse of a random statistics
    matrix restricted to the unpruned inputs (zero rows/columns at pruned inputs, where ``w`` is 0 too), drawn
    so that each wrong score picks another weight. Diagnosed: the score without the square, H ignored, the
    score multiplied by ``[H^-1]_jj``, an already-pruned weight chosen, the sign of the update, the division by
    ``[H^-1]_jj`` missing, no compensation, the missing 1/2 in the loss. Returns None; AssertionError on a
    mismatch, TypeError for a non-callable ``fn``.
    """
    check = "check_obs_step"
    _need_callable(fn, check)
    for case, w, H_inv, pruned in _obs_cases():
        d = w.numel()
        out = _run(check, case, fn, (w, H_inv, pruned), ("w", "H_inv", "pruned"))
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            _fail(check, case, f"return a tuple (j, w_new, loss_increase), got {type(out).__name__}")
        j_out, w_out, loss_out = out
        if isinstance(j_out, torch.Tensor) and j_out.numel() == 1 and not j_out.is_floating_point():
            j_out = int(j_out.item())
        if isinstance(j_out, (bool, np.bool_)) or not isinstance(j_out, (int, np.integer)):
            _fail(check, case, f"j must be an int index, got {type(j_out).__name__} {j_out!r}")
        j_got = int(j_out)
        diag = torch.diagonal(H_inv)
        score = torch.where(pruned, torch.full_like(w, math.inf), w**2 / diag.clamp_min(1e-300))
        j = int(score.argmin())
        if j_got != j:
            if not 0 <= j_got < d:
                msg = f"j = {j_got} is not an index of w (0 .. {d - 1})"
            elif bool(pruned[j_got]):
                msg = f"j = {j_got} is already pruned: choose only among the entries where `pruned` is False"
            else:
                unpruned = ~pruned
                named = [
                    ("the score lacks the square: use w_j**2 / [H^-1]_jj", w.abs() / diag),
                    (
                        "the score lacks the square (and the sign matters then): use w_j**2 / [H^-1]_jj",
                        w / diag,
                    ),
                    ("H is ignored: the score is w_j**2 / [H^-1]_jj, not w_j**2", w**2),
                    ("the score multiplies by [H^-1]_jj; divide: w_j**2 / [H^-1]_jj", w**2 * diag),
                    (
                        "you took the largest score; OBS removes the weight whose removal costs least",
                        -(w**2) / diag,
                    ),
                ]
                msg = f"chose j = {j_got}, expected {j} (the unpruned entry with the smallest w_j**2 / [H^-1]_jj)"
                for text, s in named:
                    s = torch.where(unpruned, s, torch.full_like(s, math.inf))
                    if int(s.argmin()) == j_got:
                        msg = f"chose j = {j_got}, expected {j}: {text}"
                        break
            _fail(check, case, msg)
        w_got = _tensor(check, case, w_out, (d,), "w_new")
        coef = w[j] / H_inv[j, j]
        want = w - coef * H_inv[:, j]
        want[j] = 0.0
        want[pruned] = 0.0
        if w_got[j] != 0 and _close(w_got, want, 1e-8, 1e-10):
            _fail(
                check,
                case,
                f"w_new[{j}] = {float(w_got[j]):.3g}, not exactly 0: rounding leaves a tiny value; "
                "set w_new[j] = 0 explicitly",
            )
        if bool((w_got[pruned] != 0).any()):
            _fail(
                check, case, "an already-pruned entry of w_new is not 0: pruned weights must stay exactly 0"
            )
        if not _close(w_got, want, 1e-8, 1e-10):
            no_comp = w.clone()
            no_comp[j] = 0.0
            candidates = [
                (
                    "wrong sign of the update: w_new = w - (w_j / [H^-1]_jj) H^-1[:, j]",
                    torch.where(pruned, 0.0, w + coef * H_inv[:, j]).index_fill(0, torch.tensor([j]), 0.0),
                ),
                (
                    "the update is not divided by [H^-1]_jj: w_new = w - (w_j / [H^-1]_jj) H^-1[:, j]",
                    torch.where(pruned, 0.0, w - w[j] * H_inv[:, j]).index_fill(0, torch.tensor([j]), 0.0),
                ),
                (
                    "w_j was only zeroed: OBS also compensates the other weights with - (w_j / [H^-1]_jj) H^-1[:, j]",
                    no_comp,
                ),
            ]
            _fail(check, case, _explain(w_got, want, candidates, rtol=1e-8, atol=1e-10))
        loss = _number(check, case, loss_out, "loss_increase")
        want_loss = float(w[j] ** 2 / (2 * H_inv[j, j]))
        if not _close(loss, want_loss, 1e-8, 1e-12):
            loss_candidates: list[tuple[str, Any]] = [
                ("the factor 1/2 is missing: loss increase = w_j**2 / (2 [H^-1]_jj)", 2 * want_loss),
                ("the loss lacks the square: w_j**2 / (2 [H^-1]_jj)", float(w[j].abs() / (2 * H_inv[j, j]))),
                (
                    "the loss is divided by [H^-1]_jj squared: w_j**2 / (2 [H^-1]_jj)",
                    want_loss / float(H_inv[j, j]),
                ),
            ]
            _fail(check, case, _explain(loss, want_loss, loss_candidates, rtol=1e-8, atol=1e-12))


def check_hinv_downdate(fn: Callable) -> None:
    """Check ``fn(H_inv: Tensor[d, d], j: int) -> Tensor[d, d]``: the inverse Hessian after removing input j.

    ``H_inv - H_inv[:, j] H_inv[j, :] / [H_inv]_jj`` (OBC, Frantar et al. 2022, Eq. 4): row and column j become
    zero and the rest equals the inverse of H with row and column j deleted. The check compares against that
    inverse, computed directly (an independent oracle), for a fresh ``H_inv`` and for one that already lost an
    input. Diagnosed: ``+`` instead of ``-``, the division by ``[H_inv]_jj`` missing, row/column j only zeroed,
    row/column j deleted (shape d-1). Returns None; AssertionError on a mismatch, TypeError for a
    non-callable ``fn``.
    """
    check = "check_hinv_downdate"
    _need_callable(fn, check)
    g = _generator(5)
    cases = []
    for name, d, gone, j in (
        ("fresh H_inv, d=5, j=2", 5, (), 2),
        ("d=6, input 0 already removed, j=3", 6, (0,), 3),
        ("d=4, j=0", 4, (), 0),
    ):
        H = _random_spd(d, g)
        keep = [i for i in range(d) if i not in gone]
        H_inv = torch.zeros(d, d, dtype=torch.float64)
        H_inv[torch.tensor(keep).unsqueeze(1), torch.tensor(keep)] = torch.linalg.inv(H[keep][:, keep])
        rest = [i for i in keep if i != j]
        want = torch.zeros(d, d, dtype=torch.float64)
        want[torch.tensor(rest).unsqueeze(1), torch.tensor(rest)] = torch.linalg.inv(H[rest][:, rest])
        cases.append((name, H_inv, j, want))
    for case, H_inv, j, want in cases:
        d = H_inv.shape[0]
        out = _run(check, case, fn, (H_inv, j), ("H_inv", "j"))
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (d - 1, d - 1):
            _fail(
                check, case, f"got shape {tuple(out.shape)}: keep H_inv d x d; row and column j become zero"
            )
        got = _tensor(check, case, out, (d, d), "the new H_inv")
        atol = 1e-9 * float(want.abs().max())
        if _close(got, want, 1e-7, atol):
            continue
        col = H_inv[:, j]
        zeroed = H_inv.clone()
        zeroed[j, :] = 0.0
        zeroed[:, j] = 0.0
        candidates = [
            (
                "wrong sign: subtract H_inv[:, j] H_inv[j, :] / [H_inv]_jj",
                H_inv + torch.outer(col, col) / col[j],
            ),
            ("the outer product is not divided by [H_inv]_jj", H_inv - torch.outer(col, col)),
            (
                "row and column j were only zeroed: the other entries change too (subtract the outer product)",
                zeroed,
            ),
        ]
        _fail(check, case, _explain(got, want, candidates, rtol=1e-7, atol=atol))


# --------------------------------------------------------------------------------------------------
# notebook 04: Trojan AUC, pointing game, the paper's best-of-signs AUC
# --------------------------------------------------------------------------------------------------
def _square_mask(size: int, top: int, left: int, side: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


def _pair_auc(s: torch.Tensor, m: torch.Tensor, tie: float) -> float:
    """P(trigger pixel scores above a background pixel) + tie * P(equal), by comparing every pair."""
    a, b = s[m].double().unsqueeze(1), s[~m].double().unsqueeze(0)
    return float(((a > b).double() + tie * (a == b).double()).mean())


def _map_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    g = _generator(7)
    mask = _square_mask(8, 2, 3, 3)
    noise = torch.randn(8, 8, generator=g)
    return [
        ("map equal to the mask", mask.float(), mask),
        ("constant map", torch.full((8, 8), 0.25), mask),
        ("quantised map (many ties)", (noise.round() + 1.0 * mask).clamp(-1, 2), mask),
        ("negative on the trigger", noise * 0.5 - 2.0 * mask, mask),
        (
            "positive on the trigger, strong negative background",
            torch.where(mask, 1.0 + 0.1 * noise, -1.5 + noise),
            mask,
        ),
        ("random map, corner mask", torch.randn(10, 10, generator=g), _square_mask(10, 0, 0, 4)),
        ("weak signal", noise + 0.6 * mask, mask),
    ]


def check_trojan_auc(fn: Callable) -> None:
    """Check ``fn(saliency: Tensor[H, W], mask: Tensor[H, W] bool) -> float``: the pixel ROC-AUC.

    The probability that a random trigger pixel (``mask`` True) scores higher on the map than a random other
    pixel, tied scores counting one half (scikit-learn's ``roc_auc_score`` over pixels; the signed Trojan AUC
    :func:`spade_utils.metrics.trojan_auc` with ``mode="signed"``, SPADE §5.2). Cases include a constant map
    (0.5), a map equal to the mask (1), maps with many ties and maps negative on the trigger. Diagnosed: ties
    counted 0 or 1, ``|saliency|`` used, the map's sign or the mask inverted (AUC = 1 - expected). Returns
    None; AssertionError on a mismatch, TypeError for a non-callable ``fn``.
    """
    check = "check_trojan_auc"
    _need_callable(fn, check)
    for case, s, m in _map_cases():
        got = _number(check, case, _run(check, case, fn, (s, m), ("saliency", "mask")), "the AUC")
        want = float(trojan_auc(s, m, mode="signed"))
        if _close(got, want, 1e-6, 1e-7):
            continue
        candidates = [
            (
                "ties must count one half: a tied (trigger, background) pair scores 1/2, not 0",
                _pair_auc(s, m, 0.0),
            ),
            (
                "ties must count one half: a tied (trigger, background) pair scores 1/2, not 1",
                _pair_auc(s, m, 1.0),
            ),
            (
                "AUC = 1 - expected: the map's sign or the mask is inverted (trigger pixels are the positives, "
                "a high score means 'trigger')",
                1.0 - want,
            ),
            (
                "you ranked |saliency|; this AUC ranks the map's own (signed) values",
                float(trojan_auc(s, m, mode="absolute")),
            ),
        ]
        _fail(check, case, _explain(got, want, candidates, rtol=1e-6, atol=1e-7))


def check_pointing_game(fn: Callable) -> None:
    """Check ``fn(saliency: Tensor[H, W], mask: Tensor[H, W] bool) -> float``: the pointing game.

    1 when the map's highest pixel lies on the trigger, 0 when not; when several pixels share the maximum, the
    share of them on the trigger (a constant map scores the trigger's area share)
    (:func:`spade_utils.metrics.pointing_game`, tolerance 0, signed map; Zhang et al. 2016). Diagnosed: only
    the first maximum looked at (ties), ``|saliency|`` used, the mask inverted. Returns None; AssertionError on
    a mismatch, TypeError for a non-callable ``fn``.
    """
    check = "check_pointing_game"
    _need_callable(fn, check)
    mask = _square_mask(8, 2, 3, 3)
    tie = torch.zeros(8, 8)
    tie[0, 0] = tie[7, 7] = tie[3, 4] = tie[6, 1] = 1.0  # four maxima, one on the trigger
    tie_first = torch.zeros(8, 8)
    tie_first[2, 3] = tie_first[7, 7] = 1.0  # two maxima, the first (in reading order) on the trigger
    cases = [
        (
            "maximum on the trigger",
            torch.where(mask, 1.0, 0.0) + 0.01 * torch.arange(64.0).reshape(8, 8),
            mask,
        )
    ]
    cases += [(name, s, m) for name, s, m in _map_cases() if name != "map equal to the mask"]
    cases += [("four tied maxima, one on the trigger", tie, mask), ("two tied maxima", tie_first, mask)]
    for case, s, m in cases:
        got = _number(check, case, _run(check, case, fn, (s, m), ("saliency", "mask")), "the score")
        want = float(pointing_game(s, m))
        if _close(got, want, 1e-6, 1e-7):
            continue
        first = float(m.reshape(-1)[int(s.reshape(-1).argmax())])
        candidates = [
            (
                "several pixels share the maximum: score the share of them on the trigger, not one argmax",
                first,
            ),
            (
                "you looked at |saliency|; the pointing game here uses the map's own (signed) values",
                float(pointing_game(s, m, absolute=True)),
            ),
            (
                "the mask is inverted: a hit is a maximum ON the trigger (mask True)",
                float(pointing_game(s, ~m)),
            ),
        ]
        _fail(check, case, _explain(got, want, candidates, rtol=1e-6, atol=1e-7))


def check_best_trojan_auc(fn: Callable) -> None:
    """Check ``fn(saliency: Tensor[H, W], mask: Tensor[H, W] bool) -> float``: the paper's Trojan AUC.

    The larger of the pixel ROC-AUC of the map and of its magnitude ``|saliency|`` (SPADE §5.2: a method may
    mark the trigger with large negative values; :func:`spade_utils.metrics.trojan_auc`, ``mode="best"``),
    ties counting one half in both. Diagnosed: the signed AUC only, the absolute AUC only, the smaller of the
    two, their mean, the map compared with its negation instead of its magnitude. Returns None;
    AssertionError on a mismatch, TypeError for a non-callable ``fn``.
    """
    check = "check_best_trojan_auc"
    _need_callable(fn, check)
    for case, s, m in _map_cases():
        got = _number(check, case, _run(check, case, fn, (s, m), ("saliency", "mask")), "the AUC")
        want = float(trojan_auc(s, m, mode="best"))
        if _close(got, want, 1e-6, 1e-7):
            continue
        signed, absolute = float(trojan_auc(s, m, mode="signed")), float(trojan_auc(s, m, mode="absolute"))
        candidates = [
            ("only the signed map's AUC: take the larger of AUC(saliency) and AUC(|saliency|)", signed),
            ("only |saliency|'s AUC: take the larger of AUC(saliency) and AUC(|saliency|)", absolute),
            ("the smaller of the two AUCs; take the larger", min(signed, absolute)),
            ("the mean of the two AUCs; take the larger", (signed + absolute) / 2),
            (
                "compare the map with its magnitude |saliency|, not with its negation (max(a, 1 - a))",
                max(signed, 1 - signed),
            ),
        ]
        _fail(check, case, _explain(got, want, candidates, rtol=1e-6, atol=1e-7))


CHECKS = {
    "jitter": check_jitter,
    "gram": check_gram,
    "reconstruction_loss": check_reconstruction_loss,
    "magnitude_prune": check_magnitude_prune,
    "obs_step": check_obs_step,
    "hinv_downdate": check_hinv_downdate,
    "trojan_auc": check_trojan_auc,
    "pointing_game": check_pointing_game,
    "best_trojan_auc": check_best_trojan_auc,
}
"""Every check by the name of the exercise (and of its function in ``exercises/solutions.py``)."""
