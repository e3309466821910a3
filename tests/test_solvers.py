"""Solvers against a brute-force optimum, against magnitude pruning, and on their sparsity counts."""

import pytest
import torch

from spade_utils.bruteforce import brute_force_optimum
from spade_utils.runtime import flush_denormals
from spade_utils.solvers import SOLVERS, expected_zeros, reconstruction_loss, relative_error, solve


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
            assert float(loss) >= optimum[name] * (1 - 1e-9) - 1e-12, (
                "no solver can beat the brute-force optimum"
            )
            ratios[name].append(float(loss) / optimum[name])
    for name, r in ratios.items():
        mean = sum(r) / len(r)
        assert mean <= BOUND[name], f"{name}: mean error ratio to the optimum {mean:.3f} > {BOUND[name]}"


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_obs_solvers_beat_magnitude_on_correlated_inputs(sparsity):
    W, H = _problem(32, 64, 256, seed=7, dtype=torch.float32)
    errs = {
        m: float(relative_error(W, solve(W, H, sparsity, method=m)[0], H))
        for m in ("magnitude", "sparsegpt", "obc")
    }
    assert errs["obc"] < errs["magnitude"]
    assert errs["sparsegpt"] < errs["magnitude"]


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt", "obc"])
@pytest.mark.parametrize("sparsity", [0.3, 0.9, 0.95])
def test_achieved_sparsity_within_one_weight_per_mask_group(method, sparsity):
    W, H = _problem(24, 200, 400, seed=3, dtype=torch.float32)
    Ws, _ = (
        solve(W, H, sparsity, method=method, blocksize=64)
        if method == "sparsegpt"
        else solve(W, H, sparsity, method=method)
    )
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
    [
        ({"sparsity": 1.0}, ValueError),
        ({"sparsity": -0.1}, ValueError),
        ({"sparsity": "0.5"}, TypeError),
        ({"method": "nope"}, ValueError),
        ({"H": torch.eye(5)}, ValueError),
    ],
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


# --------------------------------------------------------------------------------------------
# refused before any work: options, non-finite tensors, H that is not symmetric PSD
# --------------------------------------------------------------------------------------------
def _no_work(monkeypatch):
    """Make any solver work fail loudly, so a refusal must come from the checks before it."""
    import spade_utils.solvers as solvers

    def started(*a, **k):
        raise AssertionError("the solver started working before refusing its input")

    for name in ("_prepare", "_cholesky_adaptive", "_upper_cholesky_of_inverse", "_obc_rows"):
        monkeypatch.setattr(solvers, name, started)


@pytest.mark.parametrize(
    "method, option, value, err",
    [
        ("sparsegpt", "blocksize", 0, ValueError),
        ("sparsegpt", "blocksize", -8, ValueError),
        ("sparsegpt", "blocksize", 1.5, TypeError),
        ("sparsegpt", "blocksize", 64.0, TypeError),
        ("sparsegpt", "blocksize", True, TypeError),
        ("sparsegpt", "blocksize", "64", TypeError),
        ("sparsegpt", "percdamp", -0.01, ValueError),
        ("sparsegpt", "percdamp", float("nan"), ValueError),
        ("sparsegpt", "percdamp", float("inf"), ValueError),
        ("sparsegpt", "percdamp", "0.01", TypeError),
        ("obc", "percdamp", -1e-3, ValueError),
        ("obc", "percdamp", float("nan"), ValueError),
        ("obc", "per_row", 1, TypeError),
        ("obc", "max_chunk_bytes", 0, ValueError),
        ("sparsegpt", "sequential", "yes", TypeError),
        ("sparsegpt", "block_size", 64, TypeError),
        ("magnitude", "percdamp", 0.01, TypeError),
        ("obc", "blocksize", 64, TypeError),
    ],
)
def test_bad_option_is_refused_naming_it(monkeypatch, method, option, value, err):
    W, H = _problem(4, 8, 32, seed=0)
    _no_work(monkeypatch)
    with pytest.raises(err, match=option):
        solve(W, H, 0.5, method=method, **{option: value})
    if (
        method != "magnitude"
    ):  # also with sparsity 0 (which returns W untouched) and through the solver itself
        with pytest.raises(err, match=option):
            solve(W, H, 0.0, method=method, **{option: value})


@pytest.mark.parametrize(
    "n, m, sparsity",
    [(2, 0, 0.5), (0, 4, 0.5), (4, 4, 0.5), (5, 4, 0.5), (-1, 4, 0.5), (2, 4, 0.0), (2, 4, 0.7)],
)
def test_bad_nm_pattern_is_refused(n, m, sparsity):
    W, H = _problem(4, 8, 32, seed=0)
    with pytest.raises(ValueError, match="prune_n|sparsity"):
        solve(W, H, sparsity, method="sparsegpt", prune_n=n, prune_m=m)


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt", "obc"])
@pytest.mark.parametrize(
    "which, value", [("W", float("nan")), ("W", float("inf")), ("H", float("nan")), ("H", -float("inf"))]
)
def test_non_finite_w_or_h_is_refused(monkeypatch, method, which, value):
    W, H = _problem(4, 8, 32, seed=0)
    (W if which == "W" else H)[1, 2] = value
    _no_work(monkeypatch)
    with pytest.raises(ValueError, match=f"{which} holds NaN or inf"):
        solve(W, H, 0.5, method=method)


def _indefinite(d=8, negative=-2.0, seed=0):
    """A symmetric H with one eigenvalue ``negative`` and W along its eigenvector: the unchecked solvers
    returned a loss of about -2.1 here (SparseGPT and OBC)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    ev = torch.linspace(1, 2, d, dtype=torch.float64)
    ev[0] = negative
    return (3 * Q[:, 0]).repeat(3, 1), Q @ torch.diag(ev) @ Q.T


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt", "obc"])
@pytest.mark.parametrize(
    "kind", ["negative eigenvalue", "negative diagonal", "asymmetric", "batched, one bad"]
)
def test_h_that_is_not_symmetric_psd_is_refused(monkeypatch, method, kind):
    W, H = _indefinite()
    if kind == "negative diagonal":  # the unchecked solvers returned a loss of -0.98 here
        H = torch.eye(8, dtype=torch.float64)
        H[0, 0] = -1.0
        W = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    elif kind == "asymmetric":
        W, H = _problem(3, 8, 32, seed=1)
        H[0, 5] += 0.05 * float(H.diagonal().max())
    elif kind == "batched, one bad":
        W2, H2 = _problem(3, 8, 32, seed=1)
        W, H = torch.stack([W2, W]), torch.stack([H2, H])
    _no_work(monkeypatch)
    with pytest.raises(ValueError, match="H is not (positive semi-definite|symmetric)"):
        solve(W, H, 0.5, method=method)


@pytest.mark.parametrize("scale", [1e-30, 1.0, 1e30])
def test_psd_tolerance_is_relative_to_the_scale_of_h(scale):
    """Rounding-size negative eigenvalues (1e-5 of the largest diagonal entry; float32 statistics of real
    layers measured <= 1e-5) pass at any scale; -1e-2 is refused at any scale; loss is never negative."""
    for negative, ok in ((-1e-5, True), (-1e-2, False)):
        W, H = _indefinite(negative=negative)
        H = H / float(H.diagonal().max()) * scale
        for method in ("sparsegpt", "obc"):
            if ok:
                assert float(solve(W, H, 0.5, method=method)[1]) >= -1e-4 * scale * float((W**2).sum())
            else:
                with pytest.raises(ValueError, match="positive semi-definite"):
                    solve(W, H, 0.5, method=method)


def test_rank_deficient_float32_gram_with_dead_inputs_is_accepted():
    """A real layer's statistics: fewer samples than inputs, dead (all-zero) inputs, float32 rounding."""
    g = torch.Generator().manual_seed(3)
    X = torch.relu(torch.randn(300, 200, generator=g)) * torch.logspace(-3, 2, 300).unsqueeze(1)
    X[::7] = 0  # dead inputs
    H = 2 * X @ X.T / 200
    W = torch.randn(16, 300, generator=g)
    for method in ("magnitude", "sparsegpt", "obc"):
        Ws, loss = solve(W, H, 0.5, method=method)
        assert torch.isfinite(Ws).all() and float(loss) >= 0


@pytest.mark.parametrize(
    "bad, err",
    [
        ({"W": torch.ones(3, 4, dtype=torch.int64)}, TypeError),
        ({"H": torch.eye(4, dtype=torch.int64)}, TypeError),
        ({"W": torch.zeros(0, 4)}, ValueError),
        ({"W": [[1.0] * 4]}, TypeError),
        ({"sparsity": float("nan")}, ValueError),
        ({"sparsity": True}, TypeError),
        ({"method": 3}, TypeError),
    ],
)
def test_bad_tensors_sparsity_and_method(bad, err):
    args = {"W": torch.randn(3, 4), "H": torch.eye(4), "sparsity": 0.5, "method": "sparsegpt"}
    args.update(bad)
    with pytest.raises(err):
        solve(args["W"], args["H"], args["sparsity"], method=args["method"])


def test_public_solvers_check_their_own_input():
    from spade_utils.solvers import magnitude_prune, obc_prune, sparsegpt_prune

    W, H = _indefinite()
    with pytest.raises(ValueError, match="positive semi-definite"):
        sparsegpt_prune(W, H, 0.5)
    with pytest.raises(ValueError, match="positive semi-definite"):
        obc_prune(W, H, 0.5)
    with pytest.raises(ValueError, match="blocksize"):
        sparsegpt_prune(*_problem(3, 8, 32, seed=0), 0.5, blocksize=0)
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_prune(W, None, 1.0)
    with pytest.raises(ValueError, match="W holds NaN"):
        magnitude_prune(torch.full((2, 2), float("nan")), None, 0.5)


@pytest.mark.parametrize("flush", [False, True])
@pytest.mark.parametrize("method", SOLVERS)
def test_an_all_zero_h_is_a_gram_matrix(method, flush):
    """A layer that saw no input on any view has H = 0: every solver accepts it (the loss is 0 whatever the mask),
    alone and beside a regular problem in a batch, also with denormals flushed as a trace runs (was refused there:
    its PSD tolerance underflowed to 0)."""
    if flush:
        with flush_denormals():
            test_an_all_zero_h_is_a_gram_matrix(method, False)
        return
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 6, generator=g)
    W_sparse, loss = solve(W, torch.zeros(6, 6), 0.5, method=method)
    assert float(loss) == 0.0 and torch.isfinite(W_sparse).all()
    assert int((W_sparse == 0).sum()) >= 12
    X = torch.randn(6, 20, generator=g)
    H = torch.stack([torch.zeros(6, 6), 2 / 20 * X @ X.T])
    _, losses = solve(torch.randn(2, 4, 6, generator=g), H, 0.5, method=method)
    assert float(losses[0]) == 0.0 and float(losses[1]) > 0.0
