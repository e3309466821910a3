"""The brute-force optimum against independent computations on problems small enough to check by hand."""

import itertools

import pytest
import torch

from spade_utils.bruteforce import best_loss_per_count, brute_force_optimum
from spade_utils.layer_study import random_problem
from spade_utils.solvers import reconstruction_loss, solve


def _masked_least_squares(W, X, mask):
    """Best W' with zeros where mask is True, by least squares on the raw inputs X (cols x n)."""
    n = X.shape[1]
    H = 2 * X @ X.T / n
    Ws = torch.zeros_like(W)
    for r in range(W.shape[0]):
        keep = (~mask[r]).nonzero().flatten()
        if keep.numel():
            target = W[r] @ X
            sol = torch.linalg.lstsq(X[keep].T, target.unsqueeze(1)).solution.flatten()
            Ws[r, keep] = sol
    return float(reconstruction_loss(W, Ws, H))


def test_optimum_equals_enumeration_with_least_squares():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 20, generator=g, dtype=torch.float64)
    W = torch.randn(2, 5, generator=g, dtype=torch.float64)
    H = 2 * X @ X.T / 20
    for k in (1, 3, 6):
        best = min(
            _masked_least_squares(
                W, X, torch.zeros(10, dtype=torch.bool).index_fill(0, torch.tensor(S), True).reshape(2, 5)
            )
            for S in itertools.combinations(range(10), k)
        )
        assert brute_force_optimum(W, H, k) == pytest.approx(best, rel=1e-8)


def test_single_removal_is_the_obs_score():
    W, H = random_problem(1, 6, seed=3)
    Hinv = torch.linalg.inv(H)
    obs = (W[0] ** 2 / (2 * torch.diagonal(Hinv))).min()
    assert float(best_loss_per_count(W[0], H)[1]) == pytest.approx(float(obs), rel=1e-10)
    full = float(reconstruction_loss(W, torch.zeros_like(W), H))
    assert float(best_loss_per_count(W[0], H)[6]) == pytest.approx(full, rel=1e-10)


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt", "obc"])
def test_no_solver_beats_the_optimum(method):
    for seed in range(5):
        W, H = random_problem(3, 8, 24, seed=seed)
        _, loss = solve(W, H, 0.5, method=method, **({} if method == "magnitude" else {"percdamp": 0.0}))
        assert float(loss) >= brute_force_optimum(W, H, 12) * (1 - 1e-9)


def test_per_row_optimum_is_never_below_the_free_split():
    W, H = random_problem(3, 6, seed=1)
    assert brute_force_optimum(W, H, 6, per_row=True) >= brute_force_optimum(W, H, 6) - 1e-12


def test_bad_input():
    W, H = random_problem(2, 4, seed=0)
    with pytest.raises(ValueError):
        brute_force_optimum(W, H, 9)
    with pytest.raises(TypeError):
        brute_force_optimum(W, H, 1.5)
    with pytest.raises(ValueError):
        brute_force_optimum(W, torch.eye(5), 1)
    with pytest.raises(ValueError):
        brute_force_optimum(*random_problem(1, 17, seed=0), 1)
    with pytest.raises(ValueError):
        brute_force_optimum(W, H, 3, per_row=True)
