"""The exact optimum of the layer-wise pruning problem on tiny layers, by enumerating every mask.

For one row ``w`` and a set ``S`` of weights to remove, the best compensation of the remaining
weights costs (OBS, with the loss ``tr(dW H dW^T) / 2`` used by :mod:`spade_utils.solvers`)::

    loss(S) = w_S^T ([H^-1]_SS)^-1 w_S / 2

Enumerating all ``S`` of each size gives every row's best loss for each number of zeros; a
knapsack over rows then gives the best loss of the whole layer for ``k`` zeros shared freely
between rows. This is exponential in the number of columns, so it is limited to ``cols <= 16``;
it exists to measure how far the greedy solvers are from the true optimum.

Source: the OBS loss of removing a set of weights, Hassibi & Stork, "Second order derivatives for
network pruning: Optimal Brain Surgeon", NeurIPS 1993 (Eq. 5, generalised to a set as in Frantar,
Singh & Alistarh, "Optimal Brain Compression", NeurIPS 2022, arXiv 2208.11580).
"""

from __future__ import annotations

import itertools

import torch

from .validation import check_finite_tensor, check_int

MAX_COLS = 16


def _check(W: torch.Tensor, H: torch.Tensor) -> None:
    if not isinstance(W, torch.Tensor) or not isinstance(H, torch.Tensor):
        raise TypeError("W and H must be torch tensors")
    if W.dim() != 2:
        raise ValueError(f"W must be 2-D (rows, cols), got shape {tuple(W.shape)}")
    cols = W.shape[1]
    if H.shape != (cols, cols):
        raise ValueError(
            f"H must have shape {(cols, cols)} to match W {tuple(W.shape)}, got {tuple(H.shape)}"
        )
    if cols > MAX_COLS:
        raise ValueError(
            f"brute force enumerates 2^cols masks per row; W has {cols} columns, at most {MAX_COLS} allowed"
        )
    for name, t in (("W", W), ("H", H)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a real floating-point tensor, got dtype {t.dtype}")
        check_finite_tensor(t, name)
    H64 = H.detach().to(torch.float64)
    if not torch.allclose(H64, H64.T, rtol=1e-6, atol=1e-12 * float(H64.abs().max())):
        raise ValueError("H must be symmetric")
    if int(torch.linalg.cholesky_ex(H64).info) != 0:
        raise ValueError(
            "H must be positive definite (the optimum refits the kept weights with H^-1); "
            "add dampening to a singular H"
        )


def best_loss_per_count(w: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """For one row ``w`` (cols,): the least loss of removing exactly c weights, for c = 0 .. cols.

    ``H`` (cols, cols) must be symmetric positive definite; the loss is ``tr(dW H dW^T) / 2`` with the
    kept weights refitted optimally. Returns a float64 tensor of length cols + 1. Raises
    TypeError/ValueError for a non-1-D ``w``, mismatched shapes, NaN/inf, more than ``MAX_COLS``
    columns, or an H that is not symmetric positive definite.
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 1:
        raise ValueError("w must be a 1-D tensor (one row of weights)")
    _check(w.unsqueeze(0), H)
    cols = w.numel()
    w = w.detach().to(torch.float64)
    Hinv = torch.linalg.inv(H.detach().to(torch.float64))
    best = torch.zeros(cols + 1, dtype=torch.float64)
    for c in range(1, cols + 1):
        S = torch.tensor(list(itertools.combinations(range(cols), c)))  # (B, c)
        block = Hinv[S.unsqueeze(2), S.unsqueeze(1)]  # (B, c, c) = [H^-1]_SS
        wS = w[S]  # (B, c)
        loss = 0.5 * (wS * torch.linalg.solve(block, wS)).sum(dim=1)
        best[c] = loss.min()
    return best


def brute_force_optimum(W: torch.Tensor, H: torch.Tensor, k: int, *, per_row: bool = False) -> float:
    """Least loss ``tr(dW H dW^T) / 2`` over all masks with exactly ``k`` zeros in ``W`` (rows x cols,
    cols <= ``MAX_COLS``), with optimal kept weights; ``H`` (cols, cols) symmetric positive definite.

    By default the ``k`` zeros may be split between rows in any way (the problem the global OBC
    allocation and SparseGPT's block masks address); ``per_row=True`` requires ``k / rows`` zeros
    in every row (the problem of ``obc_prune(per_row=True)``).
    """
    _check(W, H)
    rows, cols = W.shape
    k = check_int(k, "k", minimum=0, maximum=rows * cols)
    if not isinstance(per_row, bool):
        raise TypeError(f"per_row must be True or False, got {type(per_row).__name__}")
    curves = [best_loss_per_count(w, H) for w in W]
    if per_row:
        if k % rows:
            raise ValueError(f"per_row=True needs k divisible by rows ({rows}), got {k}")
        return float(sum(float(c[k // rows]) for c in curves))
    # knapsack over rows: table[u] = least loss with u zeros in the rows seen so far
    inf = float("inf")
    table = torch.full((k + 1,), inf, dtype=torch.float64)
    table[0] = 0.0
    for curve in curves:
        nxt = torch.full_like(table, inf)
        for c in range(min(cols, k) + 1):
            nxt[c:] = torch.minimum(nxt[c:], table[: k + 1 - c] + curve[c])
        table = nxt
    return float(table[k])
