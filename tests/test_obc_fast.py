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
            fast = obc_prune_fast(W, H, sparsity, per_row=per_row, block=block)
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


@pytest.mark.gpu
def test_cuda_matches_cpu():
    W, H = _problem(2, 8, 48, 200, seed=3, n_dead=2)
    cpu = obc_prune_fast(W, H, 0.75)
    gpu = obc_prune_fast(W.cuda(), H.cuda(), 0.75)
    assert gpu.is_cuda
    assert torch.equal(cpu == 0, gpu.cpu() == 0)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-7, atol=1e-9)
