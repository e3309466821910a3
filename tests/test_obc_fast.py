"""The fast exact OBC (spade_utils.obc) against the straightforward greedy OBS and brute force."""

import pytest
import torch

from spade_utils.bruteforce import best_loss_per_count
from spade_utils.obc import obc_prune_fast
from spade_utils.solvers import _prepare, obc_prune, reconstruction_loss


def _problem(G, rows, cols, n, seed, n_dead=0, dtype=torch.float64):
    """Random weights and H = 2 X X^T / n with AR(1)-correlated, unevenly scaled inputs; the first
    ``n_dead`` inputs of every group never fire (zero rows/columns of H)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.arange(cols)
    C = (0.9 ** (idx[:, None] - idx[None]).abs()).to(dtype)
    Z = torch.linalg.cholesky(C) @ torch.randn(G, cols, n, generator=g, dtype=dtype)
    Z = Z * (0.2 + torch.rand(G, cols, 1, generator=g, dtype=dtype))
    Z[:, :n_dead] = 0
    W = torch.randn(G, rows, cols, generator=g, dtype=dtype)
    return W, 2 * Z @ Z.mT / n


def _cases(first_seed, count=2):
    """Random sizes; the first problem of each set has the largest width, 64 columns."""
    g = torch.Generator().manual_seed(2024 + first_seed)
    out = []
    for seed in range(first_seed, first_seed + count):
        G = int(torch.randint(1, 4, (1,), generator=g))
        rows = int(torch.randint(1, 7, (1,), generator=g))
        cols = 64 if seed == first_seed else int(torch.randint(2, 65, (1,), generator=g))
        n_dead = min(int(torch.randint(0, 4, (1,), generator=g)), cols - 1)
        n = int(torch.randint(4, 160, (1,), generator=g))  # n < cols: singular H, held by dampening
        out.append((G, rows, cols, n, seed, n_dead))
    return out


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_same_masks_and_losses_as_straightforward_greedy(per_row, sparsity):
    # 12 problems in all; the benchmark script repeats this on 50 more
    for G, rows, cols, n, seed, n_dead in _cases(int(sparsity * 100) + 7 * per_row):
        W, H = _problem(G, rows, cols, n, seed, n_dead)
        ref = obc_prune(W, H, sparsity, per_row=per_row)
        for block in (3, 32):  # several delayed blocks, and one block for the whole path
            fast = obc_prune_fast(W, H, sparsity, per_row=per_row, block=block, low_rank=False)
            assert torch.equal(ref == 0, fast == 0), (seed, block)
            lr, lf = reconstruction_loss(W, ref, H), reconstruction_loss(W, fast, H)
            scale = reconstruction_loss(W, torch.zeros_like(W), H)  # a loss of exactly 0 meets rounding
            assert torch.all((lf - lr).abs() <= 1e-9 * lr + 1e-14 * scale), (seed, block)
            assert torch.all(fast[..., :n_dead] == 0)


def test_unbatched_small_chunks_and_early_stop_path():
    # many rows in small chunks: later chunks stop rows early against the allocation bound
    W, H = _problem(1, 24, 40, 200, seed=5, n_dead=2)
    W, H = W[0], H[0]
    ref = obc_prune(W, H, 0.6)
    fast = obc_prune_fast(W, H, 0.6, max_chunk_bytes=40 * 40 * 8 * 2 * 3)  # 3 rows per chunk
    assert fast.shape == W.shape and fast.dtype == W.dtype
    assert torch.equal(ref == 0, fast == 0)
    torch.testing.assert_close(
        reconstruction_loss(W, fast, H), reconstruction_loss(W, ref, H), rtol=1e-9, atol=0
    )


@pytest.mark.parametrize("per_row", [False, True])
def test_groups_with_different_dead_inputs(per_row):
    # group 0: no dead input, group 1: five, group 2: all dead (a channel that never fires). A group's
    # live-first order is then a permutation even though the widest group keeps every column
    W, H = _problem(3, 4, 40, 100, seed=11)
    H[1, :5], H[1, :, :5], H[2] = 0, 0, 0
    ref = obc_prune(W, H, 0.6, per_row=per_row)
    for kwargs in ({}, {"block": 3}, {"max_chunk_bytes": 40 * 40 * 8 * 2 * 3}):
        fast = obc_prune_fast(W, H, 0.6, per_row=per_row, **kwargs)
        assert torch.equal(ref == 0, fast == 0), kwargs
        torch.testing.assert_close(
            reconstruction_loss(W, fast, H), reconstruction_loss(W, ref, H), rtol=1e-9, atol=1e-12
        )
        assert torch.all(fast[2] == 0) and torch.all(fast[1, :, :5] == 0)


@pytest.mark.parametrize("overlap", [False, True])
def test_rows_leaving_between_compactions_and_overlapped_chunks(monkeypatch, overlap):
    # rows stop early (allocation bound) in blocks where the active set is not compacted; two chunks in
    # flight (overlap) or one at a time give the same masks as the straightforward greedy
    from spade_utils import obc

    W, H = _problem(1, 24, 40, 200, seed=5, n_dead=2)
    W, H = W[0], H[0]
    ref = obc_prune(W, H, 0.6)
    monkeypatch.setattr(obc, "_COMPACT_AT", 0.99)  # compact only when rows leave
    for block in (2, 5):
        fast = obc_prune_fast(W, H, 0.6, block=block, max_chunk_bytes=40 * 40 * 8 * 2 * 3, overlap=overlap)
        assert torch.equal(ref == 0, fast == 0), block
        torch.testing.assert_close(
            reconstruction_loss(W, fast, H), reconstruction_loss(W, ref, H), rtol=1e-9, atol=0
        )


def test_final_weights_are_the_least_squares_optimum_of_the_mask():
    """On tiny problems the kept weights are the brute-force best for the chosen mask:
    loss(mask) = w_S^T ([H^-1]_SS)^-1 w_S / 2, the OBS formula enumerated by spade_utils.bruteforce."""
    for seed in range(3):
        W, H = _problem(1, 3, 8, 30, seed=100 + seed)
        W, H = W[0], H[0]
        Wp, Hp, _ = _prepare(W.unsqueeze(0), H.unsqueeze(0), 0.0)
        Wp, Hp = Wp[0], Hp[0]
        fast = obc_prune_fast(W, H, 0.5, percdamp=0.0)
        Hinv = torch.linalg.inv(Hp)
        for r in range(W.shape[0]):
            S = (fast[r] == 0).nonzero().flatten()
            wS = Wp[r, S]
            mask_optimum = 0.5 * wS @ torch.linalg.solve(Hinv[S][:, S], wS)
            row_loss = reconstruction_loss(W[r : r + 1], fast[r : r + 1], H)
            torch.testing.assert_close(row_loss, mask_optimum, rtol=1e-9, atol=1e-12)
            # and never better than the best mask of that size
            assert float(row_loss) >= float(best_loss_per_count(Wp[r], Hp)[S.numel()]) * (1 - 1e-9)


def test_leaves_inputs_untouched_and_handles_edge_sparsities():
    W, H = _problem(2, 4, 12, 50, seed=9, n_dead=1, dtype=torch.float32)
    W0, H0, threads = W.clone(), H.clone(), torch.get_num_threads()
    zero = obc_prune_fast(W, H, 0.0)
    obc_prune_fast(W, H, 0.5, cpu_threads=1)
    assert torch.equal(W, W0) and torch.equal(H, H0) and torch.get_num_threads() == threads
    assert torch.equal(zero[..., 1:], W[..., 1:]) and torch.all(zero[..., 0] == 0)
    high = obc_prune_fast(W, H, 0.99, per_row=True)  # round(0.99 * 12) = 12: every weight goes
    assert torch.all(high == 0)
    half = obc_prune_fast(W.half(), H, 0.5)
    assert half.dtype == torch.float16


@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"sparsity": 1.0}, ValueError),
        ({"sparsity": "0.5"}, TypeError),
        ({"percdamp": -0.1}, ValueError),
        ({"percdamp": float("nan")}, ValueError),
        ({"per_row": 1}, TypeError),
        ({"block": 0}, ValueError),
        ({"block": 2.0}, TypeError),
        ({"max_chunk_bytes": 0}, ValueError),
        ({"cpu_threads": 0}, ValueError),
        ({"overlap": 1}, TypeError),
        ({"low_rank": None}, TypeError),
        ({"H": torch.eye(5)}, ValueError),
        ({"W": torch.ones(3, 4, dtype=torch.long)}, TypeError),
    ],
)
def test_bad_arguments_raise_before_work(kwargs, err):
    args = {"W": torch.randn(3, 4), "H": torch.eye(4), "sparsity": 0.5}
    args.update(kwargs)
    W, H, s = args.pop("W"), args.pop("H"), args.pop("sparsity")
    with pytest.raises(err):
        obc_prune_fast(W, H, s, **args)


def _only_route(monkeypatch, route):
    """Make the other route of obc_prune_fast raise, so that a test knows which one it checked."""
    from spade_utils import obc

    def refuse(*args, **kwargs):
        raise AssertionError(f"the {route} route was expected")

    monkeypatch.setattr(obc, "_greedy" if route == "low-rank" else "_greedy_low_rank", refuse)


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_low_rank_route_same_masks_and_losses_as_straightforward_greedy(monkeypatch, per_row, sparsity):
    # statistics from fewer positions than inputs (a classifier on a few views): H = D + U U^T, taken
    # through the Woodbury form; float64, so it must follow the straightforward greedy path exactly
    _only_route(monkeypatch, "low-rank")
    g = torch.Generator().manual_seed(int(100 * sparsity) + per_row)
    for seed in range(3):
        G, rows = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        cols = int(torch.randint(64, 161, (1,), generator=g))
        n, n_dead = (
            int(torch.randint(2, cols // 5, (1,), generator=g)),
            int(torch.randint(0, 4, (1,), generator=g)),
        )
        W, H = _problem(G, rows, cols, n, 300 + seed, n_dead)
        ref = obc_prune(W, H, sparsity, per_row=per_row)
        fast = obc_prune_fast(W, H, sparsity, per_row=per_row)
        assert torch.equal(ref == 0, fast == 0), (seed, G, rows, cols, n)
        lr, lf = reconstruction_loss(W, ref, H), reconstruction_loss(W, fast, H)
        scale = reconstruction_loss(W, torch.zeros_like(W), H)
        assert torch.all((lf - lr).abs() <= 1e-9 * lr + 1e-14 * scale), seed
        torch.testing.assert_close(fast, ref, rtol=1e-7, atol=1e-9 * float(W.abs().max()))


def test_low_rank_route_weights_solve_the_kept_set_and_groups_differ_in_rank(monkeypatch):
    # groups of different rank (2, 9, and all dead) and an unbatched call: each row's kept weights are the
    # least-squares optimum H_KK w_K = (H w)_K of the damped H, checked by a dense solve
    _only_route(monkeypatch, "low-rank")
    W, H = _problem(3, 5, 80, 9, seed=21, n_dead=2)
    H[0] = _problem(1, 1, 80, 2, seed=22)[1][0]
    H[2] = 0
    fast = obc_prune_fast(W, H, 0.7)
    assert torch.equal(obc_prune(W, H, 0.7) == 0, fast == 0)
    assert torch.all(fast[2] == 0) and torch.all(fast[1, :, :2] == 0)  # group 0 has no dead input
    Wp, Hp, _ = _prepare(W, H, 0.01)
    for gi in range(2):
        for r in range(W.shape[1]):
            K = (fast[gi, r] != 0).nonzero().flatten()
            want = torch.linalg.solve(Hp[gi][K][:, K], (Hp[gi] @ Wp[gi, r])[K])
            torch.testing.assert_close(fast[gi, r, K], want, rtol=1e-8, atol=1e-10)
    single = obc_prune_fast(W[1], H[1], 0.7)  # the allocation is per group: alone, group 1 gets the same mask
    assert torch.equal(single == 0, fast[1] == 0)
    torch.testing.assert_close(single, fast[1], rtol=1e-10, atol=1e-12)


def test_low_rank_route_on_float32_statistics(monkeypatch):
    # a float32 H carries its accumulation round-off in the null space; the route truncates it (the
    # tolerance is float32's) and lands on the float64 straightforward solution of the exact statistics
    _only_route(monkeypatch, "low-rank")
    g = torch.Generator().manual_seed(5)
    X = torch.randn(200, 24, generator=g, dtype=torch.float64)
    W = torch.randn(30, 200, generator=g, dtype=torch.float64)
    H64 = 2 * X @ X.T / 24
    fast = obc_prune_fast(W.float(), (2 * X.float() @ X.float().T / 24), 0.8)
    ref = obc_prune(W, H64, 0.8)
    agree = float(((fast == 0) == (ref == 0)).float().mean())
    assert agree > 0.995
    rel = reconstruction_loss(W, fast.double(), H64).sum() / reconstruction_loss(W, ref, H64).sum()
    assert abs(float(rel) - 1) < 1e-3


def test_full_rank_statistics_take_the_dense_route(monkeypatch):
    _only_route(monkeypatch, "dense")
    W, H = _problem(2, 4, 80, 400, seed=23)
    assert torch.equal(obc_prune_fast(W, H, 0.5) == 0, obc_prune(W, H, 0.5) == 0)
    W, H = _problem(1, 4, 80, 5, seed=24)  # low rank, but no dampening: D would be singular
    obc_prune_fast(W, H, 0.5, percdamp=0.0)
    obc_prune_fast(W, H, 0.5, low_rank=False)


@pytest.mark.gpu
def test_cuda_matches_cpu():
    W, H = _problem(2, 8, 48, 200, seed=3, n_dead=2)
    cpu = obc_prune_fast(W, H, 0.75)
    gpu = obc_prune_fast(W.cuda(), H.cuda(), 0.75)
    assert gpu.is_cuda
    assert torch.equal(cpu == 0, gpu.cpu() == 0)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-7, atol=1e-9)
