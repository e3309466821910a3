"""Layer-wise pruning solvers: magnitude, SparseGPT and exact OBC/OBS.

Every solver solves the same problem: given a layer's weights ``W`` (rows x cols) and the
Gram matrix of its inputs ``H = (2/n) X X^T`` (cols x cols), find ``W'`` with the requested
fraction of zeros that keeps ``||W X - W' X||^2`` small. They share one calling convention::

    W_sparse, loss = solve(W, H, sparsity, method="sparsegpt")

``loss`` is ``tr((W - W') H (W - W')^T) / 2``, i.e. the mean squared reconstruction error per
input column. A leading batch dimension (``W``: G x rows x cols, ``H``: G x cols x cols) solves
G independent problems at once (the groups of a depthwise convolution, or several samples);
``loss`` then has shape (G,). Everything runs on whatever device ``W`` and ``H`` live on.

Sources: OBS, Hassibi & Stork, "Second order derivatives for network pruning: Optimal Brain
Surgeon", NeurIPS 1993; OBC, Frantar, Singh & Alistarh, "Optimal Brain Compression", NeurIPS 2022
(arXiv 2208.11580); SparseGPT, Frantar & Alistarh, ICML 2023 (arXiv 2301.00774).

What is refused (ValueError/TypeError naming the argument, before any work): W or H that is not a
real floating tensor, holds NaN/inf, or has mismatched shapes or devices; a sparsity outside
[0, 1); bad solver options (``blocksize`` < 1, negative or non-finite ``percdamp``, ...); and an H
that is not symmetric positive semi-definite. H is a Gram matrix, so it is PSD up to rounding; the
test allows for float32 accumulation with a tolerance relative to H's scale ``s`` (the largest
diagonal entry of each problem): every ``H_ii >= -PSD_RTOL * s`` (inputs with ``H_ii <= 0`` are
dead and pruned first), ``|H_ij - H_ji| <= PSD_RTOL * s``, and ``H + PSD_RTOL * s * I`` has a
Cholesky factor, i.e. ``lambda_min(H) >= -PSD_RTOL * s`` up to the factorisation's own rounding
(confirmed in float64 before refusing). Measured on float32 statistics (64 views on
EfficientNet-Lite0's 50 layers, 32 views on a random-weight ResNet-50's 54 layers) the worst
``-lambda_min(H) / s`` was <= 1e-5, 100x inside ``PSD_RTOL = 1e-3``; the dampening that the
solvers add (``percdamp * mean(diag H)``, default 1%) is larger still.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable

import torch

from .runtime import one_cpu_thread
from .validation import check_finite_tensor, check_float, check_int, check_positive_int, check_sparsity

SOLVERS = ("magnitude", "sparsegpt", "obc")
PSD_RTOL = 1e-3  # relative tolerance of the positive semi-definiteness test (see the module docstring)


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------
def _check_tensors(W, H, *, need_h: bool = True) -> None:
    """Types, dtypes, shapes, devices and finiteness of W and H (H may be None when not needed)."""
    for name, t in (("W", W), ("H", H)):
        if t is None and not need_h and name == "H":
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a real floating-point tensor, got dtype {t.dtype}")
    if W.dim() not in (2, 3):
        raise ValueError(
            f"W must be 2-D (rows, cols) or 3-D (groups, rows, cols), got shape {tuple(W.shape)}"
        )
    if W.numel() == 0:
        raise ValueError(f"W is empty (shape {tuple(W.shape)})")
    check_finite_tensor(W, "W")
    if H is None:
        return
    cols = W.shape[-1]
    if H.shape[-2:] != (cols, cols) or H.dim() != W.dim() or (W.dim() == 3 and H.shape[0] != W.shape[0]):
        raise ValueError(
            f"H must have shape {(*W.shape[:-2], cols, cols)} to match W {tuple(W.shape)}, got {tuple(H.shape)}"
        )
    if H.device != W.device:
        raise ValueError(f"W and H must be on the same device, got W on {W.device} and H on {H.device}")
    check_finite_tensor(H, "H")


def _check_psd(H: torch.Tensor) -> None:
    """Refuse an H that is not symmetric positive semi-definite within ``PSD_RTOL`` (module docstring)."""
    Hb = H.detach() if H.dim() == 3 else H.detach().unsqueeze(0)
    Hb = Hb.to(torch.promote_types(Hb.dtype, torch.float32))
    diag = torch.diagonal(Hb, dim1=-2, dim2=-1)
    # the scale: each problem's largest diagonal entry; for an all-dead group the largest of any group
    top = diag.amax(dim=-1)
    fallback = top.max() if bool((top > 0).any()) else Hb.abs().amax().clamp_min(torch.finfo(Hb.dtype).tiny)
    scale = torch.where(top > 0, top, fallback)
    tol = PSD_RTOL * scale  # (G,)

    def where(g: int, i: int, j: int) -> str:
        return f"H[{g}, {i}, {j}]" if H.dim() == 3 else f"H[{i}, {j}]"

    low = diag < -tol.unsqueeze(-1)
    if bool(low.any()):
        g, i = low.nonzero()[0].tolist()
        raise ValueError(
            f"H is not positive semi-definite: {where(g, i, i)} = {float(diag[g, i]):.3g} is negative "
            f"(largest diagonal entry {float(scale[g]):.3g}); H must be a Gram matrix 2/n X X^T of the "
            "layer inputs"
        )
    asym = (Hb - Hb.transpose(-2, -1)).abs().amax(dim=(-2, -1))
    if bool((~(asym <= tol)).any()):
        g = int((asym / scale).argmax())
        raise ValueError(
            f"H is not symmetric: max |H_ij - H_ji| = {float(asym[g]):.3g} > {PSD_RTOL:g} x the largest "
            f"diagonal entry {float(scale[g]):.3g}; H must be a Gram matrix 2/n X X^T of the layer inputs"
        )
    eye = torch.eye(Hb.shape[-1], dtype=Hb.dtype, device=Hb.device)
    failed = torch.linalg.cholesky_ex(Hb + tol[:, None, None] * eye).info != 0
    # an all-zero H (a layer that saw no input on any view) is a Gram matrix; its tolerance underflows to 0
    failed &= ~(Hb == 0).flatten(1).all(dim=1)
    if bool(failed.any()):  # confirm in float64 before refusing: rounding must not refuse a valid H
        H64, t64 = Hb[failed].double(), tol[failed].double()
        bad = torch.linalg.cholesky_ex(H64 + t64[:, None, None] * eye.double()).info != 0
        if bool(bad.any()):
            k = int(bad.nonzero()[0])
            lam = float(torch.linalg.eigvalsh(H64[k])[0])
            raise ValueError(
                f"H is not positive semi-definite: its smallest eigenvalue is {lam:.3g}, below -{PSD_RTOL:g} x the "
                f"largest diagonal entry {float(t64[k]) / PSD_RTOL:.3g}; H must be a Gram matrix 2/n X X^T of the "
                "layer inputs (eigenvalues >= 0 up to rounding), or the loss tr(dW H dW^T)/2 can be negative"
            )


def _check(W: torch.Tensor, H: torch.Tensor, sparsity) -> float:
    """All checks on a problem (W, H, sparsity) that do not depend on the method; the sparsity as a float."""
    _check_tensors(W, H)
    sparsity = check_sparsity(sparsity)
    _check_psd(H)
    return sparsity


def _options(func, options: dict, method: str) -> dict:
    """Keyword options of ``func`` given in ``options``, validated; unknown names raise TypeError."""
    params = {n: p for n, p in inspect.signature(func).parameters.items() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for method {method!r}; it takes {sorted(params) or 'none'}"
        )
    values = {n: options.get(n, p.default) for n, p in params.items()}
    for name, value in values.items():
        if name == "percdamp":
            check_float(value, "percdamp", low=0.0)
        elif name in ("blocksize", "max_chunk_bytes"):
            check_positive_int(value, name)
        elif name in ("prune_n", "prune_m"):
            check_int(value, name, minimum=0)
        elif name in ("per_row", "sequential"):
            if not isinstance(value, bool) and not (name == "sequential" and value is None):
                allowed = "True, False or None" if name == "sequential" else "True or False"
                raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")
    n, m = values.get("prune_n", 0), values.get("prune_m", 0)
    if (n > 0) != (m > 0) or (n > 0 and n >= m):
        raise ValueError(
            f"prune_n and prune_m give an N:M pattern (N zeros in every M inputs): both 0, or "
            f"0 < prune_n < prune_m; got prune_n={n}, prune_m={m}"
        )
    return values


def _check_nm_sparsity(sparsity: float, prune_n: int, prune_m: int) -> None:
    if prune_n > 0 and abs(sparsity - prune_n / prune_m) > 1e-9:
        raise ValueError(
            f"with prune_n={prune_n}, prune_m={prune_m} the sparsity is prune_n / prune_m = "
            f"{prune_n / prune_m:g}; pass sparsity={prune_n / prune_m:g}, got {sparsity}"
        )


def reconstruction_loss(W: torch.Tensor, W_sparse: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``tr(dW H dW^T) / 2`` per problem, dW being ``W - W_sparse``: with ``H = (2/n) X X^T`` this is the
    mean over the n inputs of ``||(W - W') x||^2`` (squared output units).

    W, W_sparse: (rows, cols) or (G, rows, cols); H: (cols, cols) or (G, cols, cols). Returns a
    tensor of shape () or (G,) in H's dtype. No checks: :func:`solve` validates its inputs.
    """
    dW = (W - W_sparse).to(H.dtype)
    return 0.5 * ((dW @ H) * dW).sum(dim=(-2, -1))


def relative_error(W: torch.Tensor, W_sparse: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``||W X - W' X||^2 / ||W X||^2`` computed from H alone (dimensionless; shapes as
    :func:`reconstruction_loss`; a layer whose dense output is 0 gets its loss over the smallest
    positive float)."""
    dense = reconstruction_loss(W, torch.zeros_like(W), H)
    return reconstruction_loss(W, W_sparse, H) / dense.clamp_min(torch.finfo(H.dtype).tiny)


def layer_relative_error(W: torch.Tensor, W_sparse: torch.Tensor, H: torch.Tensor) -> float:
    """The layer's relative error ``||W X - W' X||^2 / ||W X||^2`` as one number: groups summed, not averaged.

    ``W``, ``W_sparse``: (rows, d) or (groups, rows, d); ``H``: (d, d) or (groups, d, d). This is the one
    definition the trace's records and the solver studies report (a depthwise conv's channels are summed).
    """
    H = H.to(torch.promote_types(H.dtype, torch.float32))
    if W.dim() == 3 and H.dim() == 2:
        H = H.unsqueeze(0)
    num = reconstruction_loss(W.to(H.dtype), W_sparse.to(H.dtype), H).sum()
    den = reconstruction_loss(W.to(H.dtype), torch.zeros_like(W, dtype=H.dtype), H).sum()
    return float(num / den.clamp_min(torch.finfo(H.dtype).tiny))


def _prepare(W: torch.Tensor, H: torch.Tensor, percdamp: float):
    """Float copies with dead inputs zeroed and relative dampening ``percdamp * mean(diag H)`` (mean over live inputs)."""
    W = W.detach().to(torch.float32 if W.dtype in (torch.float16, torch.bfloat16) else W.dtype).clone()
    H = H.detach().to(W.dtype).clone()
    diag = torch.diagonal(H, dim1=-2, dim2=-1)
    dead = diag <= 0
    # a dead input never fires on the calibration data: its weights are free to prune
    W.masked_fill_(dead.unsqueeze(-2), 0.0)
    # writes through the view into H: live inputs gain the dampening, a dead one's diagonal becomes it
    diag.copy_(torch.where(dead, torch.zeros_like(diag), diag) + _dampening(diag, dead, percdamp))
    return W, H, dead


def _dampening(diag: torch.Tensor, dead: torch.Tensor, percdamp: float) -> torch.Tensor:
    """What :func:`_prepare` makes of the diagonal beyond H's own live entries, shaped like ``diag``.

    The scale of H is its mean diagonal over live inputs (1 if none is live), so that the solution does not
    depend on the scale of H. A live input gains ``percdamp * scale``; a dead input's diagonal becomes
    ``scale + percdamp * scale`` (it is decoupled from the rest).
    """
    live = (~dead).sum(dim=-1, keepdim=True)
    scale = torch.where(dead, torch.zeros_like(diag), diag).sum(dim=-1, keepdim=True) / live.clamp_min(1)
    scale = torch.where(live > 0, scale, torch.ones_like(scale))
    return torch.where(dead, scale + percdamp * scale, (percdamp * scale).expand_as(diag))


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
    """Zero the ``round(sparsity * rows * cols)`` smallest-magnitude weights of each (group's) matrix.

    W: (rows, cols) or (G, rows, cols); ``H`` is not used (accepted for a common signature; its
    shape is checked when given). Returns a pruned copy of W. Raises TypeError/ValueError for a
    non-floating, empty or non-finite W, or a sparsity outside [0, 1) (default 0.5).
    """
    _check_tensors(W, H, need_h=False)
    sparsity = check_sparsity(sparsity)
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
    """SparseGPT (Frantar & Alistarh, ICML 2023, arXiv 2301.00774, Algorithm 1): one pass over
    column blocks with lazy OBS updates.

    W: (rows, cols) or (G, rows, cols); H: (cols, cols) or (G, cols, cols), the Gram matrix of the
    layer inputs (symmetric PSD, see the module docstring); ``sparsity`` in [0, 1). Returns the
    pruned W (same shape and dtype; float16/bfloat16 are solved in float32).

    ``percdamp`` (default 0.01, >= 0) adds ``percdamp * mean(diag H)`` to H's diagonal before
    inverting (the mean over inputs, dead inputs counted with diagonal 1); a factorisation that
    still fails gets 10x more, up to 8 times. Inputs with ``H_ii <= 0`` never fire: their
    weights are zeroed first.

    Inside a block of ``blocksize`` columns the mask is chosen once from the OBS score
    ``w^2 / [U]_jj^2`` (U the upper Cholesky factor of H^-1) over all rows and block columns;
    then columns are eliminated left to right, each error spread over the block's remaining
    columns (``W[:, j:] -= e_j U[j, j:]``) and, once per block, over all later columns.
    ``prune_n``/``prune_m`` > 0 choose an N:M pattern (N zeros in every M consecutive inputs).

    With the block's mask fixed, the column-by-column elimination is a triangular solve per
    row, done for all rows at once (:func:`_eliminate_block`): few large kernels, which is what a
    GPU wants. ``sequential=True`` runs the textbook column loop instead, which is faster on a
    CPU; the default (None) picks the loop on CPU and the triangular solve elsewhere. The CPU loop
    runs on one thread (:func:`spade_utils.runtime.one_cpu_thread`); the caller's thread count is
    restored afterwards, also after an error.

    Raises TypeError/ValueError (naming the argument) before any work for: bad W/H (non-floating,
    NaN/inf, mismatched shapes or devices, H not symmetric PSD), a sparsity outside [0, 1),
    ``blocksize`` not an int >= 1, ``percdamp`` negative/NaN/inf, ``prune_n``/``prune_m`` not
    0 < N < M (or both 0), a sparsity other than N/M with an N:M pattern, ``sequential`` not a bool
    or None.
    """
    sparsity = _check(W, H, sparsity)
    opts = _options(
        sparsegpt_prune,
        dict(blocksize=blocksize, percdamp=percdamp, prune_n=prune_n, prune_m=prune_m, sequential=sequential),
        "sparsegpt",
    )
    _check_nm_sparsity(sparsity, opts["prune_n"], opts["prune_m"])
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
    """Exact greedy OBS (Hassibi & Stork 1993) row by row, as in Optimal Brain Compression (Frantar,
    Singh & Alistarh, NeurIPS 2022, arXiv 2208.11580, Algorithm 1 and the global mask of Sec. 4).

    W: (rows, cols) or (G, rows, cols); H: (cols, cols) or (G, cols, cols), the Gram matrix of the
    layer inputs (symmetric PSD, see the module docstring); ``sparsity`` in [0, 1). Returns the
    pruned W (same shape and dtype; float16/bfloat16 are solved in float32). ``percdamp``
    (default 0.01, >= 0) dampens H as in :func:`sparsegpt_prune`.

    Each row removes weights one at a time, always the one with the smallest OBS loss
    ``w_j^2 / (2 [H^-1]_jj)``, compensating the others by ``-w_j / [H^-1]_jj H^-1_{:,j}`` and
    down-dating its own inverse Hessian (``H^-1 -= H^-1_{:,j} H^-1_{j,:} / [H^-1]_jj``).
    By default, as in OBC, every row is first run to full sparsity to record its loss curve and
    the layer's zeros are then shared out between rows where they cost least (a global mask);
    ``per_row=True`` gives every row the same count instead. Rows run together in chunks (one
    d x d inverse per row) and the active set is compacted as weights leave; ``max_chunk_bytes``
    (default 256 MiB, int >= 1) bounds the memory of one chunk's inverses.

    Raises TypeError/ValueError (naming the argument) before any work for bad W/H (as in
    :func:`sparsegpt_prune`), a sparsity outside [0, 1), ``percdamp`` negative/NaN/inf,
    ``per_row`` not a bool, ``max_chunk_bytes`` not an int >= 1.
    """
    sparsity = _check(W, H, sparsity)
    _options(obc_prune, dict(percdamp=percdamp, per_row=per_row, max_chunk_bytes=max_chunk_bytes), "obc")
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

    W: (rows, cols) or (G, rows, cols); H: (cols, cols) or (G, cols, cols), ``(2/n) X X^T`` of the
    layer inputs; ``sparsity`` in [0, 1) (0 returns a copy of W). Returns ``(W_sparse, loss)`` with
    ``loss = tr((W - W') H (W - W')^T) / 2 >= 0`` computed on the undamped H (shape () or (G,)).
    Keyword options go to the solver (:func:`sparsegpt_prune`: blocksize, percdamp, prune_n,
    prune_m, sequential; ``"obc"`` runs :func:`spade_utils.obc.obc_prune_fast` (the same greedy masks as the
    straightforward :func:`obc_prune`): percdamp, per_row, block, max_chunk_bytes, cpu_threads, overlap,
    low_rank; magnitude: none).

    Raises, before any work: TypeError for an unknown ``method`` type or option, or a wrongly typed
    argument; ValueError for an unknown method, a bad option value, and any W/H/sparsity refused by
    the solvers (NaN/inf, mismatched shapes, H not symmetric positive semi-definite within
    ``PSD_RTOL``: see the module docstring).
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, one of {SOLVERS}, got {type(method).__name__}")
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {SOLVERS}, got {method!r}")
    from .obc import (
        obc_prune_fast,  # the fast exact OBC: the same greedy path as obc_prune, delayed downdates
    )

    solvers: dict[str, Callable[..., torch.Tensor]] = {
        "magnitude": magnitude_prune,
        "sparsegpt": sparsegpt_prune,
        "obc": obc_prune_fast,
    }
    solver = solvers[method]
    opts = _options(solver, options, method)
    sparsity = check_sparsity(sparsity)
    if method == "sparsegpt":
        _check_nm_sparsity(sparsity, opts["prune_n"], opts["prune_m"])
    if sparsity == 0.0 or method == "magnitude":
        _check(W, H, sparsity)
        W_sparse = W.detach().clone() if sparsity == 0.0 else magnitude_prune(W, H, sparsity)
    else:  # the solver checks W and H (once) before any work
        W_sparse = solver(W, H, sparsity, **options)
    return W_sparse, reconstruction_loss(W, W_sparse, H.to(torch.promote_types(H.dtype, torch.float32)))


def expected_zeros(shape: tuple[int, ...], sparsity: float, method: str, per_row: bool = False) -> int:
    """How many zeros ``method`` aims for in a weight of ``shape`` (rows x cols or G x rows x cols).

    Magnitude and global OBC round ``sparsity * numel``; OBC with ``per_row=True`` rounds per row.
    SparseGPT floors per column block, so it can fall short by up to one weight per block.
    """
    if method not in SOLVERS:
        raise ValueError(f"method must be one of {SOLVERS}, got {method!r}")
    sparsity = check_sparsity(sparsity)
    *lead, rows, cols = shape
    groups = math.prod(lead) if lead else 1
    if method == "obc" and per_row:
        return groups * rows * int(round(sparsity * cols))
    return int(round(sparsity * groups * rows * cols))
