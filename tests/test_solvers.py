"""Solvers against a brute-force optimum, against magnitude pruning, and on their sparsity counts."""

import pytest
import torch

from spade_utils.bruteforce import brute_force_optimum
from spade_utils.solvers import expected_zeros, reconstruction_loss, relative_error, solve


def _problem(rows, cols, n, seed, correlated=True, dtype=torch.float64):
    """Random weights and H = 2 X X^T / n; correlated inputs follow an AR(1) chain (rho 0.9)
    with per-input scales, like neighbouring channels of real activations."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(cols, n, generator=g, dtype=dtype)
    if correlated:
        idx = torch.arange(cols)
        C = (0.9 ** (idx[:, None] - idx[None]).abs()).to(dtype)
        Z = torch.linalg.cholesky(C) @ Z * (0.2 + torch.rand(cols, 1, generator=g, dtype=dtype))
    W = torch.randn(rows, cols, generator=g, dtype=dtype)
    H = 2 * Z @ Z.T / n
    return W, H


# Mean error ratio to the brute-force optimum allowed per solver. Exact OBC (greedy OBS) stays
# within 10%; SparseGPT picks each block's mask once from the initial weights, and on these
# 8-column problems measured ~1.25x on average, so it is held to 1.35x.
BOUND = {"obc": 1.10, "obc_per_row": 1.10, "sparsegpt": 1.35}


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_solvers_against_brute_force_optimum(sparsity):
    ratios = {name: [] for name in BOUND}
    n_problems = 100 if sparsity == 0.5 else 30
    for seed in range(n_problems):
        g = torch.Generator().manual_seed(1000 + seed)
        rows = int(torch.randint(1, 5, (1,), generator=g))
        W, H = _problem(rows, 8, 24, seed, correlated=False)
        k = expected_zeros(tuple(W.shape), sparsity, "sparsegpt")
        assert k == expected_zeros(tuple(W.shape), sparsity, "obc", per_row=True)
        optimum = {
            "obc": brute_force_optimum(W, H, k),
            "sparsegpt": brute_force_optimum(W, H, k),
            "obc_per_row": brute_force_optimum(W, H, k, per_row=True),
        }
        for name in BOUND:
            method = "obc" if name.startswith("obc") else name
            opts = {"per_row": True} if name == "obc_per_row" else {}
            Ws, loss = solve(W, H, sparsity, method=method, percdamp=0.0, **opts)
            assert int((Ws == 0).sum()) == k
            assert float(loss) >= optimum[name] * (1 - 1e-9) - 1e-12, "no solver can beat the brute-force optimum"
            ratios[name].append(float(loss) / optimum[name])
    for name, r in ratios.items():
        mean = sum(r) / len(r)
        assert mean <= BOUND[name], f"{name}: mean error ratio to the optimum {mean:.3f} > {BOUND[name]}"


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_obs_solvers_beat_magnitude_on_correlated_inputs(sparsity):
    W, H = _problem(32, 64, 256, seed=7, dtype=torch.float32)
    errs = {m: float(relative_error(W, solve(W, H, sparsity, method=m)[0], H)) for m in ("magnitude", "sparsegpt", "obc")}
    assert errs["obc"] < errs["magnitude"]
    assert errs["sparsegpt"] < errs["magnitude"]


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt", "obc"])
@pytest.mark.parametrize("sparsity", [0.3, 0.9, 0.95])
def test_achieved_sparsity_within_one_weight_per_mask_group(method, sparsity):
    W, H = _problem(24, 200, 400, seed=3, dtype=torch.float32)
    Ws, _ = solve(W, H, sparsity, method=method, blocksize=64) if method == "sparsegpt" else solve(W, H, sparsity, method=method)
    zeros = int((Ws == 0).sum())
    groups = {"magnitude": 1, "sparsegpt": -(-200 // 64), "obc": 24}[method]
    assert abs(zeros - sparsity * W.numel()) <= groups


def test_batched_equals_one_by_one():
    probs = [_problem(6, 16, 64, seed=s, dtype=torch.float64) for s in range(3)]
    W = torch.stack([p[0] for p in probs])
    H = torch.stack([p[1] for p in probs])
    for method in ("magnitude", "sparsegpt", "obc"):
        Wb, lb = solve(W, H, 0.5, method=method)
        for i, (w, h) in enumerate(probs):
            wi, li = solve(w, h, 0.5, method=method)
            if method == "magnitude":  # magnitude's mask group is the whole (group's) matrix
                assert torch.allclose(Wb[i], wi)
            else:
                assert torch.allclose(Wb[i], wi, atol=1e-10)
                assert torch.allclose(lb[i], li)


def test_nm_pattern():
    W, H = _problem(8, 32, 128, seed=2, dtype=torch.float32)
    Ws, _ = solve(W, H, 0.5, method="sparsegpt", prune_n=2, prune_m=4)
    zeros_per_group = (Ws.reshape(8, 8, 4) == 0).sum(-1)
    assert torch.all(zeros_per_group >= 2)


def test_dead_inputs_and_singular_hessian():
    W, H = _problem(4, 16, 8, seed=5, dtype=torch.float32)  # rank 8 < 16 columns: singular
    H[:, 3] = 0
    H[3, :] = 0  # input 3 never fires
    for method in ("sparsegpt", "obc"):
        Ws, loss = solve(W, H, 0.5, method=method, percdamp=0.0)
        assert torch.isfinite(Ws).all() and torch.isfinite(loss)
        assert torch.all(Ws[:, 3] == 0)


def test_loss_matches_explicit_reconstruction():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(10, 50, generator=g, dtype=torch.float64)
    W = torch.randn(3, 10, generator=g, dtype=torch.float64)
    H = 2 * X @ X.T / 50
    Ws, loss = solve(W, H, 0.6, method="sparsegpt")
    explicit = ((W - Ws) @ X).pow(2).sum() / 50
    assert torch.allclose(loss, explicit)
    assert torch.allclose(reconstruction_loss(W, Ws, H), explicit)


@pytest.mark.parametrize(
    "bad, err",
    [({"sparsity": 1.0}, ValueError), ({"sparsity": -0.1}, ValueError), ({"sparsity": "0.5"}, TypeError),
     ({"method": "nope"}, ValueError), ({"H": torch.eye(5)}, ValueError)],
)
def test_bad_input(bad, err):
    args = {"W": torch.randn(3, 4), "H": torch.eye(4), "sparsity": 0.5, "method": "sparsegpt"}
    args.update(bad)
    with pytest.raises(err):
        solve(args["W"], args["H"], args["sparsity"], method=args["method"])


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["magnitude", "sparsegpt", "obc"])
def test_solvers_on_cuda_match_cpu(method):
    W, H = _problem(16, 64, 256, seed=11, dtype=torch.float64)
    Wc, lc = solve(W, H, 0.75, method=method)
    Wg, lg = solve(W.cuda(), H.cuda(), 0.75, method=method)
    assert Wg.is_cuda
    assert torch.allclose(lg.cpu(), lc, rtol=1e-6)


@pytest.mark.parametrize("sparsity", [0.5, 0.95])
def test_block_triangular_solve_equals_column_loop(sparsity):
    W, H = _problem(16, 300, 600, seed=13, dtype=torch.float64)
    fast = solve(W, H, sparsity, method="sparsegpt", blocksize=64, sequential=False)[0]
    loop = solve(W, H, sparsity, method="sparsegpt", blocksize=64, sequential=True)[0]
    torch.testing.assert_close(fast, loop, rtol=1e-8, atol=1e-10)


def test_obc_in_several_row_chunks_equals_one_chunk():
    W, H = _problem(8, 16, 64, seed=21, dtype=torch.float64)
    whole = solve(W, H, 0.5, method="obc")[0]
    chunked = solve(W, H, 0.5, method="obc", max_chunk_bytes=16 * 16 * 8 * 3)[0]  # 3 rows per chunk
    torch.testing.assert_close(chunked, whole)
