"""Layer-input statistics: forward hooks that accumulate H = (2/n) sum x x^T per prunable layer.

For ``nn.Linear`` an input vector ``x`` is one row of the layer's input (any leading dims).
For ``nn.Conv2d`` it is one unfolded receptive field, exactly as the convolution sees it: after
the layer's own padding (including ``padding='same'``, non-zero padding modes and the
``static_padding`` / dynamic "same" padding of EfficientNet-style convolutions), with stride
and dilation. A grouped convolution gets one H per group, shape (groups, d, d), matching the
weight matrix from :func:`weight_matrix`.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .archs import default_pre_pad

PRUNABLE = (nn.Linear, nn.Conv2d)


# --------------------------------------------------------------------------------------------
# weights as matrices (the column order matches the unfolded inputs)
# --------------------------------------------------------------------------------------------
def layer_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight`` as a tensor (TypeError naming the module type when it has none)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as (rows, d) for Linear and ungrouped conv, (groups, rows, d) for grouped conv."""
    W = layer_weight(module).detach()
    if isinstance(module, nn.Linear):
        return W
    g = int(getattr(module, "groups", 1))
    flat = W.reshape(W.shape[0], -1)
    return flat if g == 1 else flat.reshape(g, W.shape[0] // g, flat.shape[1])


def set_weight_matrix(module: nn.Module, matrix: torch.Tensor) -> None:
    """Write a matrix from :func:`weight_matrix` back into ``module.weight`` (in place, no grad)."""
    weight = layer_weight(module)
    with torch.no_grad():
        weight.copy_(matrix.reshape(weight.shape).to(weight.dtype))


def is_depthwise(module: nn.Module) -> bool:
    """True for a Conv2d with one group per input channel (``groups == in_channels > 1``): 9-25 weights per row."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def numerical_rank(H: torch.Tensor, *, accumulated_in: torch.dtype | None = None) -> torch.Tensor:
    """Numerical rank of statistics H, (d, d) -> 0-d or (G, d, d) -> (G,) long tensor.

    Eigenvalues (float64, :func:`torch.linalg.eigvalsh`) above ``max eigenvalue * d * eps`` count, with ``eps``
    the machine epsilon of the dtype H was **accumulated** in (``accumulated_in``, default ``H.dtype``): the
    round-off of a float32 sum of outer products is ~1e-7 of its largest eigenvalue, so judging a float32 H by
    float64's tolerance counts that noise as rank (a classifier's H from 128 views read as full rank 1280,
    although 128 pooled feature vectors span at most 128 directions). The tolerance is the one NumPy's
    ``matrix_rank`` uses, with the precision of the accumulation. Raises TypeError/ValueError for a non-float
    or non-square input.
    """
    if not isinstance(H, torch.Tensor) or not H.is_floating_point():
        raise TypeError(f"H must be a floating-point tensor, got {getattr(H, 'dtype', type(H).__name__)}")
    if H.dim() not in (2, 3) or H.shape[-1] != H.shape[-2] or H.shape[-1] == 0:
        raise ValueError(f"H must be (d, d) or (G, d, d) with d >= 1, got shape {tuple(H.shape)}")
    if not bool(torch.isfinite(H).all()):
        raise ValueError("H has NaN or infinite entries")
    if accumulated_in is not None and not (
        isinstance(accumulated_in, torch.dtype) and accumulated_in.is_floating_point
    ):
        raise TypeError(f"accumulated_in must be a floating torch.dtype or None, got {accumulated_in!r}")
    dtype = H.dtype if accumulated_in is None else accumulated_in
    eig = torch.linalg.eigvalsh(H.double())
    tol = eig.amax(dim=-1, keepdim=True).clamp_min(0) * H.shape[-1] * torch.finfo(dtype).eps
    return (eig > tol).sum(dim=-1)


# --------------------------------------------------------------------------------------------
# what the layer really multiplies
# --------------------------------------------------------------------------------------------
PRE_PADS = ("none", "static", "tf_same")


def conv_input(module: nn.Conv2d, x: torch.Tensor, pre_pad: str | None = None) -> torch.Tensor:
    """The padded input the convolution actually reads: (n, C, Hp, Wp).

    ``pre_pad`` (one of :data:`PRE_PADS`, default :func:`default_pre_pad`) is the padding applied in
    ``forward`` before the declared ``module.padding``; the declared padding follows ``padding_mode``
    (zeros, reflect, replicate, circular), for integer padding and for ``padding='same'`` alike,
    as ``nn.Conv2d._conv_forward`` does.
    """
    mode = default_pre_pad(module) if pre_pad is None else pre_pad
    if mode == "static":
        pad = getattr(module, "static_padding", None)
        if not isinstance(pad, nn.Module):
            raise ValueError(
                f"pre_pad='static' needs a module with a static_padding child, got {type(module).__name__}"
            )
        x = pad(x)
    elif mode == "tf_same":
        x = F.pad(x, _same_pad(x.shape[-2:], module, tf_style=True))
    elif mode != "none":
        raise ValueError(f"pre_pad must be one of {PRE_PADS} or None, got {pre_pad!r}")
    pad = module.padding
    if pad == "valid":
        return x
    if module.padding_mode != "zeros":
        rev = getattr(module, "_reversed_padding_repeated_twice", None)
        if rev is None:
            rev = (
                _same_pad(x.shape[-2:], module, tf_style=False)
                if pad == "same"
                else [pad[1], pad[1], pad[0], pad[0]]
            )
        return F.pad(x, list(rev), mode=module.padding_mode)
    if isinstance(pad, str):  # 'same' with zeros
        return F.pad(x, _same_pad(x.shape[-2:], module, tf_style=False))
    if any(pad):
        x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
    return x


def _same_pad(size, module: nn.Conv2d, tf_style: bool) -> list[int]:
    """Left/right/top/bottom padding for 'same' convolutions (PyTorch's and TensorFlow's rules)."""
    pads = []
    for i in (1, 0):  # width first, as F.pad wants
        k, s, d, n = module.kernel_size[i], module.stride[i], module.dilation[i], size[i]
        if tf_style:
            total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        else:
            total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    return pads


def layer_columns(module: nn.Module, x: torch.Tensor, pre_pad: str | None = None) -> torch.Tensor:
    """The input columns the layer multiplies: (groups, d, n) with one column per input vector.

    ``pre_pad``: see :func:`conv_input` (convolutions only)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
    if not isinstance(module, nn.Conv2d):
        raise TypeError(f"cannot prune a {type(module).__name__}; supported: Linear, Conv2d")
    xp = conv_input(module, x, pre_pad)
    g = module.groups
    n = xp.shape[0]
    if module.kernel_size == (1, 1):
        xs = xp[:, :, :: module.stride[0], :: module.stride[1]]
        cols = xs.reshape(n, g, xs.shape[1] // g, -1).permute(1, 2, 0, 3)
        return cols.reshape(g, xs.shape[1] // g, -1)
    u = F.unfold(xp, module.kernel_size, dilation=module.dilation, stride=module.stride)  # (n, C*k*k, L)
    u = u.reshape(n, g, u.shape[1] // g, u.shape[2]).permute(1, 2, 0, 3)
    return u.reshape(g, u.shape[1], -1)


# --------------------------------------------------------------------------------------------
# Gram matrices of convolution inputs without unfolding
# --------------------------------------------------------------------------------------------
# ``xp`` is the padded input the convolution reads, channels-last (n, Hp, Wp, C). Kernel offset
# a = p*kw + q reads xp[i*sh + p*dh, j*sw + q*dw] at output position (i, j).
#
# Column order. ``layer_columns`` orders the d = Cg*K rows of a group (channel, kh, kw): row c*K + a.
# The code below works with the K x K grid (K = kh*kw) of Cg x Cg blocks
#     B[a, b] = sum over n, i, j of x_a x_b^T,     x_a = xp[n, i*sh + p_a*dh, j*sw + q_a*dw, group]
# stored offset-major (g, K, Cg, K, Cg), computes only a <= b (B[b, a] = B[a, b]^T) and permutes
# once to (g, Cg, K, Cg, K) = (g, d, d) at the end.
#
# Exact savings:
# 1. Zero padding contributes nothing. The outputs whose two reads both lie in the real (unpadded)
#    image form a rectangle, so a block is a product over a rectangle of read positions R_ab.
# 2. Boundary correction. With (dy, dx) = ((p_b - p_a)*dh, (q_b - q_a)*dw) and
#    F(y, x) = xp[y, x] xp[y + dy, x + dx]^T, B[a, b] = sum of F over R_ab. Blocks with the same
#    displacement and stride phase (y mod sh, x mod sw) integrate the same F over rectangles that
#    differ by a few rows or columns. With R their bounding rectangle and S = sum of F over R (one
#    matrix product), B[a, b] = S - sum of F over R minus R_ab, and R minus R_ab is at most four thin
#    strips (rows above and below, columns left and right). For a 3x3 stride-1 conv the 45 blocks need
#    13 displacements; with padding 1 only border blocks have a strip, one row or column wide:
#    about 6.7x fewer multiply-adds than unfold-and-multiply at 14x14. A plan picks, per
#    displacement, the shared product or one product per block, whichever multiplies less.
# 3. Diagonal blocks and 1x1 convs need U^T U only: the upper triangle, in column blocks.
# Depthwise convs (one channel per group) reduce each product to a per-channel dot product over a
# slice of the batch; strided convs with few channels per group unfold (channels-last) instead.
_DEPTHWISE_CHUNK = 1 << 20  # elements per slice of the batch for depthwise (memory-bound) products
_SYM_BLOCK = 256  # column block of the upper-triangle product U^T U
_UNFOLD_BELOW = 64  # strided conv with fewer channels per group: unfold (channels-last), one product
_UNFOLD_CHUNK = 1 << 24  # elements of the unfolded slice of the batch
_GEMM_OVERHEAD = 4  # positions (per image) one extra product is worth in the cost model


def _real_region(module: nn.Conv2d, size, pre_pad: str | None = None) -> tuple[int, int, int, int]:
    """Rows y0:y1 and columns x0:x1 of the padded input that can be non-zero (zero padding outside).

    Found by padding an all-ones image the way the layer does; anything other than a zero border
    (reflect, replicate, circular padding) counts as possibly non-zero everywhere.
    """
    mask = conv_input(module, torch.ones(1, 1, *size), pre_pad)[0, 0] != 0
    Hp, Wp = mask.shape
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    if len(rows) == 0:
        return (0, Hp, 0, Wp)
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if int(mask.sum()) != (y1 - y0) * (x1 - x0):
        return (0, Hp, 0, Wp)
    return (y0, y1, x0, x1)


def _span(pa: int, pb: int, step: int, count: int, lo: int, hi: int) -> tuple[int, int]:
    """Outputs i in [0, count) whose reads pa + i*step and pb + i*step both lie in [lo, hi).

    Returned as (first read position of a, number of outputs)."""
    first = max(0, -((pa - lo) // step), -((pb - lo) // step))  # ceil((lo - p) / step)
    last = min(count, -((pa - hi) // step), -((pb - hi) // step))
    return pa + first * step, max(0, last - first)


def _strips(base, region, sh, sw):
    """Rectangles covering base minus region (both (y, h, x, w) on the same stride lattice)."""
    by, bh, bx, bw = base
    ry, rh, rx, rw = region
    top, left = (ry - by) // sh, (rx - bx) // sw
    out = [
        (by, top, bx, bw),
        (ry + rh * sh, bh - top - rh, bx, bw),  # rows above, below
        (ry, rh, bx, left),
        (ry, rh, rx + rw * sw, bw - left - rw),
    ]  # left, right of region
    return [s for s in out if s[1] > 0 and s[3] > 0]


@functools.lru_cache(maxsize=256)
def _conv_gram_plan(Hp, Wp, kh, kw, sh, sw, dh, dw, real):
    """The products a conv Gram needs; depends on shapes only. Returns (Ho, Wo, tasks).

    A task is (dy, dx, base, blocks): one product over the rectangle ``base`` (None: no shared
    product) and, per block (a, b, rect, strips), either its own rectangle or the strips to subtract.
    A rectangle (y, h, x, w) holds the read positions of offset a: rows y, y+sh, ... (h of them)."""
    Ho, Wo = (Hp - dh * (kh - 1) - 1) // sh + 1, (Wp - dw * (kw - 1) - 1) // sw + 1
    y0, y1, x0, x1 = real
    K = kh * kw
    by_key: dict[tuple, list] = {}
    for a in range(K):
        for b in range(a, K):
            (pa, qa), (pb, qb) = divmod(a, kw), divmod(b, kw)
            dy, dx = (pb - pa) * dh, (qb - qa) * dw  # a <= b: dy >= 0, and dx > 0 when dy == 0
            ys, h = _span(pa * dh, pb * dh, sh, Ho, y0, y1)
            xs, w = _span(qa * dw, qb * dw, sw, Wo, x0, x1)
            key = (dy, dx, (pa * dh) % sh, (qa * dw) % sw)
            by_key.setdefault(key, []).append((a, b, (ys, h, xs, w)))
    tasks = []
    for (dy, dx, _, _), blocks in by_key.items():
        blocks = [blk for blk in blocks if blk[2][1] > 0 and blk[2][3] > 0]
        if not blocks:
            continue
        size = [r[1] * r[3] for _, _, r in blocks]
        alone = sum(size) + _GEMM_OVERHEAD * len(blocks)
        if len(blocks) > 1:
            ys = min(r[0] for _, _, r in blocks)
            xs = min(r[2] for _, _, r in blocks)
            base = (
                ys,
                (max(r[0] + r[1] * sh for _, _, r in blocks) - ys) // sh,
                xs,
                (max(r[2] + r[3] * sw for _, _, r in blocks) - xs) // sw,
            )
            strips = [_strips(base, r, sh, sw) for _, _, r in blocks]
            shared = base[1] * base[3] + sum(s[1] * s[3] + _GEMM_OVERHEAD for ss in strips for s in ss)
            if shared + _GEMM_OVERHEAD < alone:
                tasks.append(
                    (dy, dx, base, [(a, b, None, ss) for (a, b, _), ss in zip(blocks, strips, strict=True)])
                )
                continue
        tasks.append((dy, dx, None, [(a, b, r, None) for a, b, r in blocks]))
    return Ho, Wo, tasks


def _rect(X: torch.Tensor, rect, sh: int, sw: int, dy: int = 0, dx: int = 0) -> torch.Tensor:
    """The positions of ``rect`` shifted by (dy, dx), a view (n, h, w, C) of channels-last X."""
    y, h, x, w = rect
    y, x = y + dy, x + dx
    return X[:, y : y + (h - 1) * sh + 1 : sh, x : x + (w - 1) * sw + 1 : sw]


def _sym_gram(U: torch.Tensor) -> torch.Tensor:
    """U^T U for U (m, D): only the upper triangle, in column blocks, mirrored."""
    D = U.shape[1]
    if D <= _SYM_BLOCK * 3 // 2:
        return U.T @ U
    G = U.new_empty(D, D)
    for i0 in range(0, D, _SYM_BLOCK):
        i1 = min(i0 + _SYM_BLOCK, D)
        G[i0:i1, i0:] = U[:, i0:i1].T @ U[:, i0:]
        G[i1:, i0:i1] = G[i0:i1, i1:].T
    return G


def _cross(A: torch.Tensor, B: torch.Tensor | None, g: int) -> torch.Tensor:
    """sum over positions of A B^T per group: (n, h, w, C) views -> (g, C/g, C/g); B None: A A^T."""
    C = A.shape[-1]
    if g == C:  # depthwise: one number per channel
        return (A * (A if B is None else B)).sum((0, 1, 2)).view(g, 1, 1)
    A = A.reshape(-1, g, C // g)
    B = None if B is None else B.reshape(-1, g, C // g)
    if g > 8:
        return torch.einsum("mgi,mgj->gij", A, A if B is None else B)
    if B is None:
        return torch.stack([_sym_gram(A[:, j]) for j in range(g)])
    return torch.stack([A[:, j].T @ B[:, j] for j in range(g)])


def _add_blocks(out: torch.Tensor, X: torch.Tensor, g: int, plan, sh: int, sw: int, add: bool) -> None:
    """Write (add=False) or add the blocks a <= b of the Gram matrix of X into ``out`` (g, K, Cg, K, Cg)."""
    K = out.shape[1]
    written = set()
    for dy, dx, base, blocks in plan[2]:
        S = None
        if base is not None:
            S = _cross(_rect(X, base, sh, sw), None if dy == dx == 0 else _rect(X, base, sh, sw, dy, dx), g)
        for a, b, rect, strips in blocks:
            if S is None:
                blk = _cross(_rect(X, rect, sh, sw), None if a == b else _rect(X, rect, sh, sw, dy, dx), g)
            else:
                blk = S
                for s in strips:
                    blk = blk - _cross(_rect(X, s, sh, sw), _rect(X, s, sh, sw, dy, dx), g)
            if add:
                out[:, a, :, b] += blk
            else:
                out[:, a, :, b] = blk
                written.add((a, b))
    if not add:
        for a in range(K):
            for b in range(a, K):
                if (a, b) not in written:
                    out[:, a, :, b] = 0


def _conv_gram_blocks(
    module: nn.Conv2d,
    x: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
    method: str = "auto",
    pre_pad: str | None = None,
) -> tuple[torch.Tensor, int]:
    """The Gram matrix of :func:`conv_gram` as offset-major blocks (g, K, Cg, K, Cg), blocks a <= b only.

    Blocks below the diagonal are left unset; with ``out`` the blocks are added into it. Accumulating
    many batches this way and calling :func:`_blocks_to_gram` once saves the reordering per batch.
    ``method``: "blocks" (the shared-displacement products), "unfold" (channels-last unfold and one
    product; cheaper for strided convs with few channels per group) or "auto". ``pre_pad``: see
    :func:`conv_input`."""
    if x.is_cuda and module.groups == module.in_channels and module.groups > 1:
        # depthwise on a GPU: one batched product beats many small per-offset kernels
        cols = layer_columns(module, x.detach(), pre_pad).to(dtype)
        gram = (cols @ cols.transpose(1, 2)).view(module.groups, cols.shape[1], 1, cols.shape[1], 1)
        return (gram if out is None else out.add_(gram)), cols.shape[2]
    xp = conv_input(module, x.detach().to(dtype), pre_pad)
    n, C, Hp, Wp = xp.shape
    g = module.groups
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    plan = _conv_gram_plan(Hp, Wp, kh, kw, sh, sw, dh, dw, _real_region(module, x.shape[-2:], pre_pad))
    X = xp.permute(0, 2, 3, 1)
    if not X.is_contiguous():
        X = X.contiguous()
    add = out is not None
    K, Cg = kh * kw, C // g
    if out is None:
        out = X.new_empty(g, K, Cg, K, Cg)
        if n == 0:
            out.zero_()
    if method == "auto":
        method = "unfold" if 1 < Cg < _UNFOLD_BELOW and K > 1 and (sh, sw) != (1, 1) else "blocks"
    if method == "unfold":  # few channels: one product of the unfolded columns, offset-major
        starts = [(p * dh, q * dw) for p in range(kh) for q in range(kw)]
        Ho, Wo = plan[0], plan[1]
        step = max(1, _UNFOLD_CHUNK // max(1, Ho * Wo * K * C))
        for i in range(0, n, step):
            U = torch.stack(
                [_rect(X[i : i + step], (y, Ho, x, Wo), sh, sw).unflatten(-1, (g, Cg)) for y, x in starts],
                dim=4,
            )  # (n, Ho, Wo, g, K, Cg)
            gram = _cross(U.flatten(-3), None, g).view(out.shape)
            if add or i > 0:
                out += gram
            else:
                out.copy_(gram)
        return out, n * Ho * Wo
    step = max(1, _DEPTHWISE_CHUNK // (Hp * Wp * C)) if g == C else max(n, 1)
    for i in range(0, n, step):
        _add_blocks(out, X[i : i + step], g, plan, sh, sw, add=add or i > 0)
    return out, n * plan[0] * plan[1]


def _blocks_to_gram(blocks: torch.Tensor) -> torch.Tensor:
    """Offset-major upper blocks (g, K, Cg, K, Cg) -> the full (g, d, d) Gram in (channel, kh, kw) order.

    Fills the blocks below the diagonal of ``blocks`` in place (adding more batches stays possible)."""
    g, K, Cg = blocks.shape[:3]
    for a in range(K):
        for b in range(a + 1, K):
            blocks[:, b, :, a] = blocks[:, a, :, b].transpose(1, 2)
    gram = blocks.permute(0, 2, 1, 4, 3).reshape(g, Cg * K, Cg * K)
    if gram.data_ptr() == blocks.data_ptr():
        gram = gram.clone()
    # a diagonal entry is a sum of squares; the boundary correction (shared product minus strips) can leave
    # a rounding-level negative where the true value is ~0 (a channel dead inside the image): clamp it
    torch.diagonal(gram, dim1=-2, dim2=-1).clamp_(min=0)
    return gram


def conv_gram(
    module: nn.Conv2d, x: torch.Tensor, dtype: torch.dtype = torch.float32, pre_pad: str | None = None
) -> tuple[torch.Tensor, int]:
    """``sum x x^T`` over the receptive fields of a convolution's input batch: (groups, d, d), count.

    Equal to ``cols @ cols.T`` with ``cols = layer_columns(module, x)`` (column order (channel, kh, kw)
    per group), computed without unfolding: see the notes at the head of this section."""
    blocks, count = _conv_gram_blocks(module, x, dtype, pre_pad=pre_pad)
    return _blocks_to_gram(blocks), count


def batch_gram(
    module: nn.Module, x: torch.Tensor, dtype: torch.dtype = torch.float32, pre_pad: str | None = None
) -> tuple[torch.Tensor, int]:
    """``sum x x^T`` over one input batch of ``module`` and the number of vectors summed."""
    if isinstance(module, nn.Conv2d):
        return conv_gram(module, x, dtype, pre_pad)
    cols = layer_columns(module, x).to(dtype)
    return cols @ cols.transpose(1, 2), cols.shape[2]


# --------------------------------------------------------------------------------------------
# the recorder
# --------------------------------------------------------------------------------------------
class HessianRecorder:
    """Context manager: while active, every forward pass adds to each layer's Gram matrix.

    >>> with HessianRecorder({"fc": model.fc}) as rec:
    ...     model(batch)
    >>> H = rec.hessians()["fc"]          # (d, d), or (groups, d, d) for grouped convs

    ``dtype`` (float32 or float64) is the accumulation dtype, whatever the activations' dtype (fp16 and
    bf16 inputs are cast up before any product). ``pre_pad`` maps a conv's name to the padding its
    ``forward`` applies before the declared one (see :func:`conv_input`; default: :func:`default_pre_pad`).
    """

    def __init__(
        self,
        layers: dict[str, nn.Module],
        dtype: torch.dtype = torch.float32,
        pre_pad: dict[str, str] | None = None,
    ):
        if not isinstance(layers, dict) or not layers:
            raise ValueError("layers must be a non-empty dict name -> module")
        for name, m in layers.items():
            if not isinstance(m, PRUNABLE):
                raise TypeError(f"layer {name!r} is a {type(m).__name__}; supported: Linear, Conv2d")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        pre_pad = dict(pre_pad or {})
        bad = {n: v for n, v in pre_pad.items() if n not in layers or v not in PRE_PADS}
        if bad:
            raise ValueError(f"pre_pad must map layer names to one of {PRE_PADS}, got {bad}")
        self.layers = layers
        self.dtype = dtype
        self.pre_pad = pre_pad  # name -> padding applied in forward before the declared one (see conv_input)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {name: 0 for name in layers}
        self._handles: list = []

    def add(self, name: str, x: torch.Tensor) -> None:
        """Add ``sum x x^T`` of one input batch ``x`` of layer ``name`` (what the forward hook does; also
        called directly by :mod:`spade_utils.batched` with one sample's slice of a shared batch)."""
        module = self.layers[name]
        with torch.no_grad():
            x = x.detach()
            if isinstance(module, nn.Conv2d):  # offset-major blocks; reordered once, in hessians()
                self.sums[name], count = _conv_gram_blocks(
                    module, x, self.dtype, out=self.sums.get(name), pre_pad=self.pre_pad.get(name)
                )
            else:
                gram, count = batch_gram(module, x, self.dtype)
                self.sums[name] = self.sums[name] + gram if name in self.sums else gram
            self.counts[name] += count

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.add(name, inputs[0])

        return hook

    def __enter__(self) -> HessianRecorder:
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def hessians(self) -> dict[str, torch.Tensor]:
        """H = (2/n) sum x x^T per layer; squeezed to (d, d) when the layer has one group."""
        out = {}
        for name, s in self.sums.items():
            if isinstance(self.layers[name], nn.Conv2d):
                s = _blocks_to_gram(s)
            H = s * (2.0 / max(self.counts[name], 1))
            out[name] = H[0] if H.shape[0] == 1 else H
        return out
