"""Layer-wise pruning solvers: magnitude, SparseGPT and exact OBC/OBS.

Every solver solves the same problem: given a layer's weights ``W`` (rows x cols) and the
Gram matrix of its inputs ``H = (2/n) X X^T`` (cols x cols), find ``W'`` with the requested
fraction of zeros that keeps ``||W X - W' X||^2`` small. They share one calling convention::

    W_sparse, loss = solve(W, H, sparsity, method="sparsegpt")

``loss`` is ``tr((W - W') H (W - W')^T) / 2``, i.e. the mean squared reconstruction error per
input column. A leading batch dimension (``W``: G x rows x cols, ``H``: G x cols x cols) solves
G independent problems at once (the groups of a depthwise convolution, or several samples);
``loss`` then has shape (G,). Everything runs on whatever device ``W`` and ``H`` live on.
"""

from __future__ import annotations

import contextlib
import math

import torch

SOLVERS = ("magnitude", "sparsegpt", "obc")


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------
def _check(W: torch.Tensor, H: torch.Tensor, sparsity: float) -> None:
    if not isinstance(W, torch.Tensor) or not isinstance(H, torch.Tensor):
        raise TypeError("W and H must be torch tensors")
    if not isinstance(sparsity, (float, int)) or isinstance(sparsity, bool):
        raise TypeError(f"sparsity must be a float in [0, 1), got {type(sparsity).__name__}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if W.dim() not in (2, 3):
        raise ValueError(f"W must be 2-D (rows, cols) or 3-D (groups, rows, cols), got shape {tuple(W.shape)}")
    cols = W.shape[-1]
    if H.shape[-2:] != (cols, cols) or H.dim() != W.dim() or (W.dim() == 3 and H.shape[0] != W.shape[0]):
        raise ValueError(f"H must have shape {(*W.shape[:-2], cols, cols)} to match W {tuple(W.shape)}, got {tuple(H.shape)}")


def reconstruction_loss(W: torch.Tensor, W_sparse: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``tr(dW H dW^T) / 2`` per problem: the mean of ``||(W - W') x||^2`` over the inputs behind H."""
    dW = (W - W_sparse).to(H.dtype)
    return 0.5 * ((dW @ H) * dW).sum(dim=(-2, -1))


def relative_error(W: torch.Tensor, W_sparse: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``||W X - W' X||^2 / ||W X||^2`` computed from H alone."""
    dense = reconstruction_loss(W, torch.zeros_like(W), H)
    return reconstruction_loss(W, W_sparse, H) / dense.clamp_min(torch.finfo(H.dtype).tiny)


def _prepare(W: torch.Tensor, H: torch.Tensor, percdamp: float):
    """Float copies with dead inputs zeroed and relative dampening ``percdamp * mean(diag H)``."""
    W = W.detach().to(torch.float32 if W.dtype in (torch.float16, torch.bfloat16) else W.dtype).clone()
    H = H.detach().to(W.dtype).clone()
    diag = torch.diagonal(H, dim1=-2, dim2=-1)
    dead = diag <= 0
    # a dead input never fires on the calibration data: its weights are free to prune
    W.masked_fill_(dead.unsqueeze(-2), 0.0)
    diag.masked_fill_(dead, 1.0)  # writes through the view into H
    damp = percdamp * diag.mean(dim=-1, keepdim=True)
    diag.add_(damp)
    return W, H, dead


def _cholesky_adaptive(H: torch.Tensor, upper: bool = False, max_tries: int = 8) -> torch.Tensor:
    """Cholesky factor, adding 10x more dampening to each matrix whose factorisation fails."""
    L, info = torch.linalg.cholesky_ex(H, upper=upper)
    failed = info > 0
    if not bool(failed.any()):
        return L
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
    scale = torch.diagonal(H, dim1=-2, dim2=-1).mean(dim=-1).abs().clamp_min(1e-12)
    extra = 1e-4
    H = H.clone()
    for _ in range(max_tries):
        fix = failed.reshape(-1) if H.dim() == 3 else failed.reshape(1)
        Hb = H.reshape(-1, *H.shape[-2:])
        sb = scale.reshape(-1)
        Hb[fix] = Hb[fix] + extra * sb[fix, None, None] * eye
        L, info = torch.linalg.cholesky_ex(H, upper=upper)
        failed = info > 0
        if not bool(failed.any()):
            return L
        extra *= 10.0
    raise torch.linalg.LinAlgError("Hessian is not positive definite even after heavy dampening")


def _upper_cholesky_of_inverse(H: torch.Tensor) -> torch.Tensor:
    """Upper-triangular U with U^T U = H^-1, without ever forming H^-1.

    With J the index reversal, chol(J H J) = L gives H^-1 = (J L^-1 J)^T (J L^-1 J), and
    J L^-1 J is upper triangular: one Cholesky and one triangular solve.
    """
    Hf = H.flip(-1, -2)
    L = _cholesky_adaptive(Hf)
    eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device).expand_as(H)
    Linv = torch.linalg.solve_triangular(L, eye, upper=False)
    return Linv.flip(-1, -2)


def _as_batched(W: torch.Tensor, H: torch.Tensor):
    batched = W.dim() == 3
    return (W if batched else W.unsqueeze(0)), (H if batched else H.unsqueeze(0)), batched


# --------------------------------------------------------------------------------------------
# magnitude
# --------------------------------------------------------------------------------------------
def magnitude_prune(W: torch.Tensor, H: torch.Tensor | None = None, sparsity: float = 0.5) -> torch.Tensor:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights of each (group's) matrix."""
    Wb = W if W.dim() == 3 else W.unsqueeze(0)
    flat = Wb.reshape(Wb.shape[0], -1)
    k = int(round(float(sparsity) * flat.shape[1]))
    out = flat.clone()
    if k > 0:
        idx = flat.abs().argsort(dim=1, stable=True)[:, :k]
        out.scatter_(1, idx, 0.0)
    out = out.reshape(Wb.shape)
    return out if W.dim() == 3 else out[0]


# --------------------------------------------------------------------------------------------
# SparseGPT
# --------------------------------------------------------------------------------------------
def sparsegpt_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    prune_n: int = 0,
    prune_m: int = 0,
    sequential: bool | None = None,
) -> torch.Tensor:
    """SparseGPT (Frantar & Alistarh, 2023): one pass over column blocks with lazy OBS updates.

    Inside a block of ``blocksize`` columns the mask is chosen once from the OBS score
    ``w^2 / [U]_jj^2`` (U the upper Cholesky factor of H^-1) over all rows and block columns;
    then columns are eliminated left to right, each error spread over the block's remaining
    columns (``W[:, j:] -= e_j U[j, j:]``) and, once per block, over all later columns.
    ``prune_n``/``prune_m`` > 0 choose an N:M pattern (N zeros in every M consecutive inputs).

    With the block's mask fixed, the column-by-column elimination is a triangular solve per
    row, done for all rows at once (:func:`_eliminate_block`): few large kernels, which is what a
    GPU wants. ``sequential=True`` runs the textbook column loop instead, which is faster on a
    CPU; the default (None) picks the loop on CPU and the triangular solve elsewhere.
    """
    Wb, Hb, batched = _as_batched(W, H)
    Wf, Hf, _ = _prepare(Wb, Hb, percdamp)
    U = _upper_cholesky_of_inverse(Hf)  # (G, d, d)
    G, rows, cols = Wf.shape
    nm = prune_n > 0 and prune_m > 0
    if sequential is None:  # the triangular solve holds rows x B x B numbers per group
        sequential = W.device.type == "cpu" or G * rows * blocksize**2 * Wf.element_size() > 2**30
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = Wf[:, :, i1:i2].clone()
        U1 = U[:, i1:i2, i1:i2].contiguous()  # a strided view made the column loop ~25x slower on CPU
        d1 = torch.diagonal(U1, dim1=-2, dim2=-1).contiguous()  # (G, count)
        if nm:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        else:
            score = W1.pow(2) / d1.pow(2).unsqueeze(1)
            k = int(float(sparsity) * rows * count)  # floor, as in SparseGPT (OBC and magnitude round)
            mask1 = torch.zeros(G, rows * count, dtype=torch.bool, device=W1.device)
            if k > 0:
                idx = score.reshape(G, -1).topk(k, dim=1, largest=False).indices
                mask1.scatter_(1, idx, True)
            mask1 = mask1.reshape(G, rows, count)
        if nm or sequential:
            with one_cpu_thread() if W1.device.type == "cpu" else contextlib.nullcontext():
                W1, Err1 = _eliminate_columns(W1, U1, d1, mask1, prune_n if nm else 0, prune_m if nm else 0)
        else:
            W1, Err1 = _eliminate_block(W1, U1, mask1)
        Wf[:, :, i1:i2] = W1
        if i2 < cols:
            Wf[:, :, i2:] -= Err1 @ U[:, i1:i2, i2:]
    out = Wf.to(W.dtype)
    return out if batched else out[0]


@contextlib.contextmanager
def one_cpu_thread():
    """Run the block on one CPU thread, then restore the thread count. Hundreds of tiny ops cost
    more in thread hand-offs than in work (SparseGPT's column loop: 1.05 s vs 0.01 s per 512 x 128
    block with 2 threads vs 1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _eliminate_columns(W1, U1, d1, mask1, prune_n=0, prune_m=0):
    """Textbook SparseGPT inner loop: zero masked weights column by column, spreading each error.

    With ``prune_n``/``prune_m`` the N:M mask of each group of M columns is chosen on the fly,
    from the weights as updated so far.
    """
    Err1 = torch.zeros_like(W1)
    count = W1.shape[2]
    for i in range(count):
        if prune_m and i % prune_m == 0:
            span = min(prune_m, count - i)
            tmp = W1[:, :, i : i + span].pow(2) / d1[:, None, i : i + span].pow(2)
            idx = tmp.topk(min(prune_n, span), dim=2, largest=False).indices
            mask1[:, :, i : i + span].scatter_(2, idx, True)
        w = W1[:, :, i]
        q = w.masked_fill(mask1[:, :, i], 0.0)
        err = (w - q) / d1[:, i].unsqueeze(1)
        W1[:, :, i:] -= err.unsqueeze(2) * U1[:, i, i:].unsqueeze(1)
        W1[:, :, i] = q
        Err1[:, :, i] = err
    return W1, Err1


def _eliminate_block(W1, U1, mask1):
    """The same elimination in one batched triangular solve.

    Column i's error is e_i = m_i (w_i - sum_{j<i} e_j U_ji) / U_ii, i.e. on each row's masked
    set S: (U^T)_SS e_S = w_S. Building L_r = U^T * (m_r m_r^T) + diag(1 - m_r) per row r turns
    that into one lower-triangular solve; the kept weights are then (W1 - E U1) off the mask.
    """
    G, rows, count = W1.shape
    m = mask1.to(W1.dtype)
    L = U1.transpose(1, 2).unsqueeze(1) * (m.unsqueeze(3) * m.unsqueeze(2))  # (G, rows, c, c)
    L.diagonal(dim1=-2, dim2=-1).add_(1 - m)
    Err1 = torch.linalg.solve_triangular(L, (W1 * m).unsqueeze(3), upper=False).squeeze(3)
    W1 = (W1 - Err1 @ U1).masked_fill_(mask1, 0.0)
    return W1, Err1

# --------------------------------------------------------------------------------------------
# exact OBC / OBS
# --------------------------------------------------------------------------------------------
def obc_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    *,
    percdamp: float = 0.01,
    per_row: bool = False,
    max_chunk_bytes: int = 256 * 2**20,
) -> torch.Tensor:
    """Exact greedy OBS (Optimal Brain Compression, Frantar & Alistarh, 2022).

    Each row removes weights one at a time, always the one with the smallest OBS loss
    ``w_j^2 / (2 [H^-1]_jj)``, compensating the others by ``-w_j / [H^-1]_jj H^-1_{:,j}`` and
    down-dating its own inverse Hessian (``H^-1 -= H^-1_{:,j} H^-1_{j,:} / [H^-1]_jj``).
    By default, as in OBC, every row is first run to full sparsity to record its loss curve and
    the layer's zeros are then shared out between rows where they cost least (a global mask);
    ``per_row=True`` gives every row the same count instead. Rows run together in chunks (one
    d x d inverse per row) and the active set is compacted as weights leave.
    """
    Wb, Hb, batched = _as_batched(W, H)
    Wf, Hf, dead = _prepare(Wb, Hb, percdamp)
    G, rows, cols = Wf.shape
    L = _cholesky_adaptive(Hf)
    Hinv = torch.cholesky_inverse(L)  # (G, d, d): OBC needs the full inverse per row
    flatW = Wf.reshape(G * rows, cols)
    flat_dead = dead.unsqueeze(1).expand(G, rows, cols).reshape(G * rows, cols)
    group_of_row = torch.arange(G, device=W.device).repeat_interleave(rows)
    chunk = max(1, int(max_chunk_bytes // (cols * cols * Wf.element_size())))

    def run(counts: torch.Tensor):
        outs, incs = [], []
        for r1 in range(0, G * rows, chunk):
            r2 = min(r1 + chunk, G * rows)
            w, inc = _obc_rows(flatW[r1:r2], Hinv[group_of_row[r1:r2]], flat_dead[r1:r2], counts[r1:r2])
            outs.append(w)
            incs.append(torch.nn.functional.pad(inc, (0, int(counts.max()) - inc.shape[1])))
        return torch.cat(outs), torch.cat(incs)

    if per_row:
        counts = torch.full((G * rows,), int(round(float(sparsity) * cols)), device=W.device)
    else:
        _, inc = run(torch.full((G * rows,), cols, device=W.device))
        counts = _allocate(inc.reshape(G, rows, cols), int(round(float(sparsity) * rows * cols))).reshape(-1)
    out, _ = run(counts)
    res = out.reshape(G, rows, cols).to(W.dtype)
    return res if batched else res[0]


def _allocate(increments: torch.Tensor, k: int) -> torch.Tensor:
    """Share ``k`` zeros per group between rows: (G, rows, d) loss increments -> (G, rows) counts.

    A row's c-th removal is taken when its running-maximum increment is among the k smallest
    of the group, so each row keeps a prefix of its greedy path.
    """
    G, rows, d = increments.shape
    monotone = increments.cummax(dim=2).values.reshape(G, -1)
    take = torch.zeros_like(monotone, dtype=torch.bool)
    if k > 0:
        idx = monotone.argsort(dim=1, stable=True)[:, :k]
        take.scatter_(1, idx, True)
    # a stable sort of non-decreasing rows takes prefixes; count them
    return take.reshape(G, rows, d).sum(dim=2)


def _obc_rows(w: torch.Tensor, Hinv: torch.Tensor, dead: torch.Tensor, k: torch.Tensor):
    """Greedy OBS on a chunk of rows, row b stopping after k[b] removals.

    Returns the pruned rows (B, d) and each row's loss increments (B, max k), in removal order.
    """
    B, d = w.shape
    w = w.clone()
    Hinv = Hinv.clone()
    # dead inputs are already zero; they are pruned first, at no cost
    pruned = torch.zeros(B, d, dtype=torch.bool, device=w.device)
    # indices of active coordinates, compacted from time to time
    active = torch.arange(d, device=w.device).expand(B, d).clone()
    ar = torch.arange(B, device=w.device)
    done = torch.zeros(B, dtype=torch.long, device=w.device)
    k = k.to(w.device)
    increments = torch.zeros(B, int(k.max()) if k.numel() else 0, dtype=w.dtype, device=w.device)
    step = 0
    compact_every = max(8, d // 16)
    while bool((done < k).any()):
        diag = torch.diagonal(Hinv, dim1=-2, dim2=-1)
        wa = torch.gather(w, 1, active)
        pa = torch.gather(pruned, 1, active)
        da = torch.gather(dead, 1, active)
        score = wa.pow(2) / diag
        # dead inputs first (score -1), already pruned never again (inf)
        score = torch.where(da & ~pa, torch.full_like(score, -1.0), score)
        score = score.masked_fill(pa, float("inf"))
        j = score.argmin(dim=1)  # (B,) index into the active set
        go = done < k
        hcol = Hinv[ar, :, j]  # (B, a)
        hjj = hcol[ar, j].clamp_min(torch.finfo(w.dtype).tiny)
        wj = wa[ar, j]
        increments[ar[go], done[go]] = (wj.pow(2) / (2 * hjj))[go]
        coef = torch.where(go, wj / hjj, torch.zeros_like(wj))
        wa = wa - coef.unsqueeze(1) * hcol
        pa[ar[go], j[go]] = True
        wa.masked_fill_(pa, 0.0)  # rounding must not revive weights pruned earlier
        w.scatter_(1, active, wa)
        down = torch.where(go, 1.0 / hjj, torch.zeros_like(hjj))
        Hinv.baddbmm_(hcol.unsqueeze(2), (hcol * down.unsqueeze(1)).unsqueeze(1), alpha=-1.0)
        pruned.scatter_(1, active, pa)
        done += go.long()
        step += 1
        if step % compact_every == 0 and active.shape[1] > 1:
            # rows keep a common active width: the largest number of weights any row still has
            pa = torch.gather(pruned, 1, active)
            n_keep = int((~pa).sum(dim=1).max().item())
            if n_keep < active.shape[1]:
                order = pa.float().argsort(dim=1, stable=True)[:, :n_keep]
                active = torch.gather(active, 1, order)
                Hinv = torch.gather(Hinv, 1, order.unsqueeze(2).expand(B, n_keep, Hinv.shape[2]))
                Hinv = torch.gather(Hinv, 2, order.unsqueeze(1).expand(B, n_keep, n_keep))
    return w, increments


# --------------------------------------------------------------------------------------------
# one entry point
# --------------------------------------------------------------------------------------------
def solve(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    method: str = "sparsegpt",
    **options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``W`` to ``sparsity`` with ``method`` in {'magnitude', 'sparsegpt', 'obc'}.

    Returns ``(W_sparse, loss)`` with ``loss = tr((W - W') H (W - W')^T) / 2`` computed on the
    undamped H (shape () or (G,) for batched input). Extra keyword options go to the solver.
    """
    _check(W, H, sparsity)
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {SOLVERS}, got {method!r}")
    if float(sparsity) == 0.0:
        W_sparse = W.detach().clone()
    elif method == "magnitude":
        W_sparse = magnitude_prune(W, H, sparsity)
    elif method == "sparsegpt":
        W_sparse = sparsegpt_prune(W, H, sparsity, **options)
    else:
        W_sparse = obc_prune(W, H, sparsity, **options)
    return W_sparse, reconstruction_loss(W, W_sparse, H.to(torch.promote_types(H.dtype, torch.float32)))


def expected_zeros(shape: tuple[int, ...], sparsity: float, method: str, per_row: bool = False) -> int:
    """How many zeros ``method`` aims for in a weight of ``shape`` (rows x cols or G x rows x cols)."""
    *lead, rows, cols = shape
    groups = math.prod(lead) if lead else 1
    if method == "obc" and per_row:
        return groups * rows * int(round(sparsity * cols))
    return int(round(sparsity * groups * rows * cols))
