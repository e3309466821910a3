"""Exact OBC at speed: the same greedy OBS path as :func:`spade_utils.solvers.obc_prune`, faster.

The straightforward solver removes one weight per row per step and down-dates each row's inverse
Hessian by a rank-1 product every step (memory-bound), then runs every row a second time once the
global allocation has fixed how many weights each row loses. This module takes the same greedy
decisions with three changes that keep it exact:

1. **Delayed downdates.** After ``t`` removals a row's inverse is ``H0^-1 - U U^T`` with
   ``U = [c_1/sqrt(h_1), ..., c_t/sqrt(h_t)]`` (``c_s`` the removed column, ``h_s`` its pivot).
   The current column and the diagonal are read through that pending term (``O(a t)`` per step),
   and the block is folded in once every ``block`` removals as one batched matrix product, at the
   same time as the removed coordinates are compacted away.
2. **No second greedy pass.** A row's greedy path after ``c`` removals has the least-squares
   optimum on its kept set ``K`` as weights, so once the allocation has fixed ``c`` for each row
   the final weights come from one small solve ``H_KK w_K = (H w)_K`` per row (float64, batched,
   on the same damped ``H`` the greedy path inverted).
3. **Early stop of the allocation pass.** The global allocation (:func:`solvers._allocate`) takes
   the ``k`` smallest running-maximum loss increments of the group. Any ``k`` known increments give
   an upper bound ``tau`` on the threshold; a row whose running maximum exceeds ``tau`` can get no
   further removal, so its greedy run stops there (its unknown increments count as ``+inf``,
   which leaves the allocation unchanged).

Sources: B. Hassibi & D. Stork, "Second order derivatives for network pruning: Optimal Brain
Surgeon", NeurIPS 1993 (the OBS step and downdate); E. Frantar, S. P. Singh & D. Alistarh,
"Optimal Brain Compression", NeurIPS 2022, arXiv 2208.11580 (row-wise greedy OBS, Algorithm 1,
and the global mask from per-row loss curves).
"""

from __future__ import annotations

import torch

from .solvers import _allocate, _as_batched, _check, _cholesky_adaptive, _prepare
from .validation import check_float, check_positive_int

__all__ = ["obc_prune_fast"]


def obc_prune_fast(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    *,
    percdamp: float = 0.01,
    per_row: bool = False,
    block: int | None = None,
    max_chunk_bytes: int = 256 * 2**20,
    cpu_threads: int | None = 1,
) -> torch.Tensor:
    """Exact greedy OBS (OBC), the same masks as :func:`spade_utils.solvers.obc_prune`, faster.

    Parameters
    ----------
    W : (rows, cols) or (G, rows, cols) float tensor
        Layer weights (a leading dimension solves G independent groups, e.g. a depthwise conv).
    H : (cols, cols) or (G, cols, cols) tensor
        Gram matrix of the layer inputs, ``(2/n) X X^T`` (units of input squared). Inputs with
        ``H_jj <= 0`` are dead: their weights are zeroed at no cost.
    sparsity : float in [0, 1)
        Fraction of weights to remove: ``round(sparsity * rows * cols)`` per group shared out
        between rows by the OBC global allocation (default), or ``round(sparsity * cols)`` in every
        row with ``per_row=True``.
    percdamp : float >= 0, default 0.01
        Relative dampening ``percdamp * mean(diag H)`` added to the diagonal (as in the
        straightforward solver; more is added automatically if the Cholesky factorisation fails).
    per_row : bool, default False
        Same count in every row instead of the global allocation.
    block : int or None
        Removals between two applications of the delayed rank-``block`` downdate; None picks 64.
        Any value gives the same greedy path.
    max_chunk_bytes : int, default 256 MiB
        Memory for the per-row inverse Hessians of one chunk of rows (and as much again for
        work buffers).
    cpu_threads : int or None, default 1
        Torch threads for the greedy pass on CPU (restored afterwards); None keeps the current
        setting. One thread is the default because on a shared 2-core machine (load ~4) the
        2-thread run of a 1000 x 1280 layer took 4x longer (thread hand-offs on hundreds of small
        kernels per removal); on an idle machine more threads speed up the batched products.

    Returns
    -------
    Tensor shaped and typed like ``W`` (float16/bfloat16 input is solved in float32 and cast back),
    on W's device. Greedy decisions are taken in W's (promoted) precision, the final least-squares
    weights in float64.

    Raises
    ------
    TypeError / ValueError
        For non-tensor inputs, mismatched shapes, ``sparsity`` outside [0, 1), negative
        ``percdamp``, a non-bool ``per_row``, non-positive ``block``, ``max_chunk_bytes`` or
        ``cpu_threads``.
    torch.linalg.LinAlgError
        If H stays indefinite even after heavy dampening.
    """
    _check(W, H, sparsity)
    percdamp = check_float(percdamp, "percdamp", low=0.0)
    if not isinstance(per_row, bool):
        raise TypeError(f"per_row must be a bool, got {type(per_row).__name__}")
    if block is not None:
        block = check_positive_int(block, "block")
    max_chunk_bytes = check_positive_int(max_chunk_bytes, "max_chunk_bytes")
    if cpu_threads is not None:
        cpu_threads = check_positive_int(cpu_threads, "cpu_threads")
    if not W.is_floating_point() or not H.is_floating_point():
        raise TypeError(f"W and H must be floating-point tensors, got {W.dtype} and {H.dtype}")
    if W.device != H.device:
        raise ValueError(f"W and H must be on the same device, got {W.device} and {H.device}")
    if block is None:
        block = 64
    threads = torch.get_num_threads()
    if W.device.type == "cpu" and cpu_threads is not None:
        torch.set_num_threads(cpu_threads)
    try:
        return _obc_prune_fast(W, H, sparsity, percdamp, per_row, block, max_chunk_bytes)
    finally:
        torch.set_num_threads(threads)


def _obc_prune_fast(W, H, sparsity, percdamp, per_row, block, max_chunk_bytes):

    Wb, Hb, batched = _as_batched(W, H)
    Wf, Hf, dead = _prepare(Wb, Hb, percdamp)
    G, rows, cols = Wf.shape
    R = G * rows
    dev = Wf.device
    L, info = torch.linalg.cholesky_ex(Hf)
    if bool((info > 0).any()):
        L = _cholesky_adaptive(Hf)
        Hf = L @ L.mT  # the matrix the greedy path really inverts (extra dampening included)
    Hinv = torch.cholesky_inverse(L).contiguous()
    flatW = Wf.reshape(R, cols)
    group_of_row = torch.arange(G, device=dev).repeat_interleave(rows)
    n_dead = dead.sum(dim=1)[group_of_row]  # (R,)

    if per_row:
        counts = torch.full((R,), int(round(float(sparsity) * cols)), device=dev, dtype=torch.long)
        order = _greedy(flatW, Hinv, dead, group_of_row, counts, None, block, max_chunk_bytes)[0]
    else:
        k = int(round(float(sparsity) * rows * cols))
        if k == 0:
            counts = torch.zeros(R, dtype=torch.long, device=dev)
            order = torch.full((R, cols), -1, dtype=torch.long, device=dev)
        else:
            full = torch.full((R,), cols, device=dev, dtype=torch.long)
            order, inc = _greedy(flatW, Hinv, dead, group_of_row, full, (G, rows, k), block, max_chunk_bytes)
            counts = _allocate(inc.reshape(G, rows, cols), k).reshape(-1)
    del Hinv
    out = _least_squares(flatW, Hf, group_of_row, dead, order, counts, n_dead, max_chunk_bytes)
    res = out.reshape(G, rows, cols).to(W.dtype)
    return res if batched else res[0]


def _greedy(w, Hinv, dead, group_of_row, counts, allocation, block, max_chunk_bytes):
    """Greedy OBS for every row, in chunks of rows; row r stops after counts[r] removals.

    Dead inputs are removed first, in index order, at zero cost (as in the straightforward solver).
    Returns ``order`` (R, cols): the removed column indices in removal order (-1 past a row's
    stop), and ``inc`` (R, cols): the loss increments ``w_j^2 / (2 [H^-1]_jj)`` (+inf where not
    computed). With ``allocation = (G, rows, k)`` rows also stop once their running-maximum
    increment exceeds an upper bound on the allocation threshold (see the module docstring).
    """
    R, d = w.shape
    dev, dt = w.device, w.dtype
    order = torch.full((R, d), -1, dtype=torch.long, device=dev)
    inc = torch.full((R, d), float("inf"), dtype=dt, device=dev)
    dead_rows = dead[group_of_row]  # (R, d)
    n_dead = dead_rows.sum(dim=1)
    # dead inputs first, in index order: their increments are exactly 0
    dead_first = (~dead_rows).to(torch.int8).argsort(dim=1, stable=True)
    pos = torch.arange(d, device=dev).expand(R, d)
    is_dead_pos = pos < n_dead.unsqueeze(1)
    take_dead = is_dead_pos & (pos < counts.unsqueeze(1))
    order[take_dead] = dead_first[take_dead]
    inc[take_dead] = 0.0
    live_steps = (counts - n_dead).clamp_min(0)
    todo = torch.nonzero(live_steps > 0).flatten()
    if todo.numel() == 0:
        return order, inc
    # chunks of rows in order; each finished chunk tightens the threshold bound for the next ones
    chunk = max(1, int(max_chunk_bytes // (d * d * w.element_size() * 2)))
    if allocation is not None:
        G, rows, k = allocation
    # working memory, allocated once: fresh large tensors cost page faults on every use
    B = min(chunk, todo.numel())
    nb = min(block, d)
    bufs = [torch.empty(n, dtype=dt, device=dev) for n in (B * d * d, B * d * d, B * nb * d, B * nb * d)]
    for c1 in range(0, todo.numel(), chunk):
        idx = todo[c1 : c1 + chunk]
        tau = None
        if allocation is not None and c1 > 0:
            mono = inc.reshape(G, rows, d).cummax(dim=2).values.reshape(G, rows * d)
            tau = mono.kthvalue(k, dim=1).values[group_of_row[idx]]  # +inf while too few are known
        _greedy_chunk(w[idx], Hinv, dead, group_of_row[idx], n_dead[idx], live_steps[idx],
                      tau, nb, order, inc, idx, bufs)
    return order, inc


def _greedy_chunk(w, Hinv, dead, grp, n_dead, steps, tau, block, order, inc, rows_out, bufs):
    """Greedy OBS with delayed rank-``block`` downdates for one chunk of rows (results written into
    ``order``/``inc`` at ``rows_out``). ``Hinv`` (G, d, d) holds the groups' inverses, ``grp`` the
    rows' groups, ``dead`` (G, d) the groups' dead inputs, ``bufs`` flat work buffers."""
    B, d = w.shape
    deadc = dead[grp]
    dev, dt = w.device, w.dtype
    # active set: live inputs first (index order), padded with dead ones marked as pruned. Until the
    # first compaction, rows of one group read one shared matrix: Hbase[base[b]] is row b's inverse
    a = int((~deadc).sum(dim=1).max())
    g0, g1 = int(grp.min()), int(grp.max()) + 1  # chunks hold consecutive rows: a range of groups
    base = grp - g0
    active_g = dead[g0:g1].to(torch.int8).argsort(dim=1, stable=True)[:, :a].contiguous()
    Hbase = Hinv[g0:g1] if a == d else _gather_square(Hinv[g0:g1], active_g)
    active = active_g[base]
    buf_rows, buf_h, buf_u, buf_u2 = bufs
    owned = False  # Hbase is still the caller's (shared) group inverses: never write into it
    pa = torch.gather(deadc, 1, active)
    wa = torch.gather(w, 1, active)
    ids = rows_out.clone()
    done = torch.zeros(B, dtype=torch.long, device=dev)
    runmax = torch.zeros(B, dtype=dt, device=dev)
    while True:
        Bc, a = wa.shape
        nb = min(block, a)
        Ut = buf_u[: Bc * nb * a].view(Bc, nb, a)  # pending downdate: H^-1 = H0 - Ut^T Ut
        diag = torch.diagonal(Hbase, dim1=1, dim2=2)[base]
        rec_j = torch.empty(Bc, nb, dtype=torch.long, device=dev)
        rec_inc = torch.empty(Bc, nb, dtype=dt, device=dev)
        rec_go = torch.zeros(Bc, nb, dtype=torch.bool, device=dev)
        done0 = done.clone()
        go = (done < steps) & ((runmax <= tau) if tau is not None else True)
        threads = torch.get_num_threads()
        if dev.type == "cpu" and Bc * a < _SINGLE_THREAD_BELOW:
            torch.set_num_threads(1)  # small per-step kernels: thread hand-offs cost more than the work
        try:
            wa, runmax, go = _block_steps(Hbase.view(-1, a), base * a, wa, pa, diag, Ut, rec_j, rec_inc, rec_go,
                                          done, runmax, go, steps, tau)
        finally:
            torch.set_num_threads(threads)
        # record this block's removals: slot = dead count + removals before + rank within block
        slot = n_dead.unsqueeze(1) + done0.unsqueeze(1) + rec_go.long().cumsum(dim=1) - 1
        bi, si = torch.nonzero(rec_go, as_tuple=True)
        inc[ids[bi], slot[bi, si]] = rec_inc[bi, si]
        order[ids[bi], slot[bi, si]] = active[bi, rec_j[bi, si]]
        if not bool(go.any()):
            return
        # fold the pending downdate into H0; drop finished rows; compact away pruned coordinates
        # once they are a good part of the active set (a compaction costs about one GEMM's traffic)
        alive = torch.nonzero(go).flatten()
        if alive.numel() < Bc:
            ids, done, runmax, n_dead, steps = ids[alive], done[alive], runmax[alive], n_dead[alive], steps[alive]
            active, wa, pa, Ut = active[alive], wa[alive], pa[alive], Ut[alive]
            base = base[alive]
            if tau is not None:
                tau = tau[alive]
        keep = int((~pa).sum(dim=1).max())
        if not owned or keep <= a * (1 - _COMPACT_AT):
            sel = pa.to(torch.int8).argsort(dim=1, stable=True)[:, :keep]
            n_alive = base.numel()
            Ut = torch.gather(Ut, 2, sel.unsqueeze(1).expand(-1, nb, keep), out=buf_u2[: n_alive * nb * keep].view(n_alive, nb, keep))
            buf_u, buf_u2 = buf_u2, buf_u
            owned = True  # Hbase now lives in buf_h, one matrix per row
            Hbase = _gather_square(Hbase, sel, base, buf_rows, buf_h)
            base = torch.arange(base.numel(), device=dev)
            active = torch.gather(active, 1, sel)
            wa = torch.gather(wa, 1, sel)
            pa = torch.gather(pa, 1, sel)
        Hbase.baddbmm_(Ut.mT, Ut, alpha=-1.0)

# compact the active set once this fraction of it is pruned
_COMPACT_AT = 0.125
# rows x active columns below which the per-step kernels run on one CPU thread
_SINGLE_THREAD_BELOW = 2**22


def _block_steps(H0flat, first, wa, pa, diag, Ut, rec_j, rec_inc, rec_go, done, runmax, go, steps, tau):
    """Up to ``Ut.shape[1]`` greedy removals per row, reading the inverse through the pending term.

    Row b's current inverse is ``H0[b] - Ut[b]^T Ut[b]`` with ``H0[b] = H0flat[first[b]:first[b]+a]``.
    Updates ``pa``, ``diag``, ``Ut``, the ``rec_*`` records and ``done`` in place.
    """
    Bc, nb, a = Ut.shape
    dt = wa.dtype
    tiny = torch.finfo(dt).tiny
    inf = torch.tensor(float("inf"), dtype=dt, device=wa.device)
    for s in range(nb):
        score = torch.where(pa, inf, wa.square() / diag)
        j = score.argmin(dim=1, keepdim=True)  # (Bc, 1)
        col = H0flat.index_select(0, first + j.squeeze(1))  # H0 is symmetric: a row is a column
        if s:
            uj = torch.gather(Ut[:, :s], 2, j.unsqueeze(1).expand(Bc, s, 1))  # (Bc, s, 1)
            col = torch.baddbmm(col.unsqueeze(1), uj.mT, Ut[:, :s], alpha=-1.0).squeeze(1)
        h = col.gather(1, j).clamp_min(tiny)  # (Bc, 1)
        wj = wa.gather(1, j)
        step_inc = (wj.square() / (2 * h)).squeeze(1)
        gof = go.to(dt).unsqueeze(1)
        wa = wa.addcmul(gof * wj / h, col, value=-1.0)
        pa.scatter_(1, j, pa.gather(1, j) | go.unsqueeze(1))
        rs = col.mul_(gof / h.sqrt())
        Ut[:, s] = rs
        diag.addcmul_(rs, rs, value=-1.0)
        rec_j[:, s] = j.squeeze(1)
        rec_inc[:, s] = step_inc
        rec_go[:, s] = go
        done += go.long()
        runmax = torch.where(go, torch.maximum(runmax, step_inc), runmax)
        go = (done < steps) & ((runmax <= tau) if tau is not None else True)
        if not bool(go.any()):
            break
    return wa, runmax, go


def _gather_square(M, idx, which=None, buf_rows=None, buf_out=None):
    """M[which[b]][idx[b]][:, idx[b]] for matrices M (G, a, a), indices idx (B, n) and ``which`` (B,)
    (default: b itself) -> (B, n, n), written into the flat buffers when given (at least B*n*a and
    B*n*n elements)."""
    B, n = idx.shape
    a = M.shape[1]
    if which is None:
        which = torch.arange(B, device=idx.device)
    flat = ((which * a).unsqueeze(1) + idx).reshape(-1)
    rows_out = None if buf_rows is None else buf_rows[: B * n * a].view(B * n, a)
    out = None if buf_out is None else buf_out[: B * n * n].view(B, n, n)
    rows = torch.index_select(M.reshape(-1, a), 0, flat, out=rows_out).view(B, n, a)
    return torch.gather(rows, 2, idx.unsqueeze(1).expand(B, n, n), out=out)


def _least_squares(w, H, group_of_row, dead, order, counts, n_dead, max_chunk_bytes):
    """Each row's least-squares optimum on its kept set: ``H_KK w_K = (H w)_K`` (float64).

    The kept set is everything except the row's first ``counts[r]`` removals and dead inputs.
    Rows are solved in batches of similar kept-set size, padded with identity rows.
    """
    R, d = w.shape
    dev = w.device
    G, rows = H.shape[0], R // H.shape[0]
    H64 = H.to(torch.float64)
    w64 = w.to(torch.float64)
    rhs_full = torch.bmm(w64.reshape(G, rows, d), H64).reshape(R, d)  # (H w) per row
    pos = torch.arange(d, device=dev).expand(R, d)
    removed = torch.where(pos < counts.unsqueeze(1), order, d)  # column d is a bin for "not removed"
    kept = torch.ones(R, d + 1, dtype=torch.bool, device=dev).scatter_(1, removed, False)[:, :d]
    kept &= ~dead[group_of_row]
    out = torch.zeros(R, d, dtype=torch.float64, device=dev)
    m = kept.sum(dim=1)
    full = m == d
    out[full] = w64[full]
    todo = torch.nonzero((m > 0) & ~full).flatten()
    if todo.numel() == 0:
        return out
    todo = todo[m[todo].argsort(descending=True)]
    i = 0
    while i < todo.numel():
        mmax = int(m[todo[i]])
        nb = max(1, min(todo.numel() - i, int(max_chunk_bytes // (mmax * mmax * 8))))
        idx = todo[i : i + nb]
        i += nb
        kc = kept[idx]
        K = kc.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :mmax]  # kept first
        valid = torch.gather(kc, 1, K)
        A = _gather_square(H64, K, group_of_row[idx])
        vm = valid.to(torch.float64)
        A = A * vm.unsqueeze(2) * vm.unsqueeze(1)
        A.diagonal(dim1=1, dim2=2).add_(1.0 - vm)
        b = torch.gather(rhs_full[idx], 1, K) * vm
        Lk, info = torch.linalg.cholesky_ex(A)
        if bool((info > 0).any()):
            x = torch.linalg.lstsq(A, b.unsqueeze(2)).solution.squeeze(2)
        else:
            x = torch.cholesky_solve(b.unsqueeze(2), Lk).squeeze(2)
        vals = torch.zeros(idx.numel(), d, dtype=torch.float64, device=dev)
        vals.scatter_(1, K, x * vm)
        out[idx] = vals
    return out
