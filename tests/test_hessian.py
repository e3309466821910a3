"""Hook-collected H against an explicit 2/n X X^T built independently with F.unfold."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spade_utils.hessian import HessianRecorder, set_weight_matrix, weight_matrix


def _explicit(conv: nn.Conv2d, x: torch.Tensor, pre_pad=None) -> torch.Tensor:
    """2/n sum x x^T of unfolded receptive fields, per group, in float64."""
    x = x.double()
    if pre_pad is not None:
        x = F.pad(x, pre_pad)
    pad = conv.padding
    if pad == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        x = F.pad(x, [total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2])
        pad = (0, 0)
    elif pad == "valid":
        pad = (0, 0)
    u = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=pad, stride=conv.stride)
    g = conv.groups
    n, D, L = u.shape
    u = u.reshape(n, g, D // g, L).permute(1, 2, 0, 3).reshape(g, D // g, n * L)
    return 2 * u @ u.transpose(1, 2) / (n * L)


def _record(layer, *batches, dtype=torch.float32):
    with HessianRecorder({"l": layer}, dtype=dtype) as rec, torch.no_grad():
        for b in batches:
            layer(b)
    H = rec.hessians()["l"]
    return H if H.dim() == 3 else H.unsqueeze(0), rec.counts["l"]


CONVS = [
    dict(in_channels=6, out_channels=5, kernel_size=3, stride=2, padding=1, dilation=2),
    dict(in_channels=6, out_channels=4, kernel_size=3, stride=1, padding=1),
    dict(in_channels=8, out_channels=8, kernel_size=3, stride=1, padding=1, groups=4),
    dict(in_channels=8, out_channels=8, kernel_size=5, stride=2, padding=2, groups=8),  # depthwise
    dict(in_channels=6, out_channels=4, kernel_size=3, padding="same", dilation=2),
    dict(in_channels=6, out_channels=4, kernel_size=(1, 3), stride=(2, 1), padding=0),
    dict(in_channels=6, out_channels=7, kernel_size=1, stride=2),
    dict(in_channels=6, out_channels=7, kernel_size=1),
]


@pytest.mark.parametrize("spec", CONVS, ids=[str(i) for i in range(len(CONVS))])
def test_conv_hessian_matches_unfold(spec):
    torch.manual_seed(0)
    conv = nn.Conv2d(**spec)
    x1, x2 = torch.randn(3, spec["in_channels"], 11, 9), torch.randn(2, spec["in_channels"], 11, 9)
    H, n = _record(conv, x1, x2)
    ref = _explicit(conv, torch.cat([x1, x2]))
    assert H.shape == ref.shape
    torch.testing.assert_close(H.double(), ref, rtol=1e-5, atol=1e-6)
    # the weight matrix's columns line up with the unfolded inputs: W_g @ cols reproduces the conv
    assert weight_matrix(conv).shape[-1] == ref.shape[-1]


def test_channels_last_input_gives_same_hessian():
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 4, 3, padding=1)
    x = torch.randn(2, 8, 10, 10)
    H1, _ = _record(conv, x)
    H2, _ = _record(conv, x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(H1, H2, rtol=1e-5, atol=1e-6)


def test_linear_with_leading_dims_and_float64():
    torch.manual_seed(2)
    lin = nn.Linear(7, 3)
    x = torch.randn(2, 5, 7)
    H, n = _record(lin, x, dtype=torch.float64)
    X = x.reshape(-1, 7).double().T
    assert n == 10 and H.dtype == torch.float64
    torch.testing.assert_close(H[0], 2 * X @ X.T / 10, rtol=1e-10, atol=1e-12)


def test_static_same_padding_conv_sees_its_padded_input():
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    torch.manual_seed(3)
    conv = Conv2dStaticSamePadding(3, 4, kernel_size=3, stride=2, image_size=224)
    x = torch.randn(1, 3, 224, 224)
    H, n = _record(conv, x)
    # 224 -> 112 x 112 output positions: every position the convolution computes is counted
    assert n == 112 * 112
    ref = _explicit(conv, x, pre_pad=list(conv.static_padding.padding))
    torch.testing.assert_close(H.double(), ref, rtol=1e-5, atol=1e-6)


def test_weight_matrix_roundtrip_and_conv_as_matmul():
    torch.manual_seed(4)
    conv = nn.Conv2d(8, 6, 3, padding=1, groups=2)
    x = torch.randn(1, 8, 5, 5)
    W = weight_matrix(conv)
    assert W.shape == (2, 3, 36)
    u = F.unfold(x, 3, padding=1).reshape(2, 36, 25)
    out = (W @ u).reshape(6, 5, 5) + conv.bias.view(6, 1, 1)
    torch.testing.assert_close(out, conv(x)[0], rtol=1e-5, atol=1e-5)
    before = conv.weight.detach().clone()
    set_weight_matrix(conv, W * 2)
    torch.testing.assert_close(conv.weight, before * 2)


def test_recorder_rejects_bad_input():
    with pytest.raises(ValueError):
        HessianRecorder({})
    with pytest.raises(TypeError):
        HessianRecorder({"relu": nn.ReLU()})
    with pytest.raises(ValueError):
        HessianRecorder({"l": nn.Linear(2, 2)}, dtype=torch.float16)


@pytest.mark.gpu
def test_hessian_on_cuda_matches_cpu():
    torch.manual_seed(5)
    conv = nn.Conv2d(16, 8, 3, padding=1)
    x = torch.randn(4, 16, 12, 12)
    H_cpu, _ = _record(conv, x)
    H_gpu, _ = _record(conv.cuda(), x.cuda())
    torch.testing.assert_close(H_gpu.cpu(), H_cpu, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_depthwise_hessian_on_cuda_matches_unfold():
    torch.manual_seed(6)
    conv = nn.Conv2d(12, 12, 5, stride=2, padding=2, groups=12)
    x1, x2 = torch.randn(3, 12, 15, 15), torch.randn(2, 12, 15, 15)
    H, _ = _record(conv.cuda(), x1.cuda(), x2.cuda())
    torch.testing.assert_close(
        H.double().cpu(), _explicit(conv.cpu(), torch.cat([x1, x2])), rtol=1e-4, atol=1e-6
    )


# --------------------------------------------------------------------------------------------
# padding the layer really applies, and the blocked Gram path, against explicit F.pad + F.unfold
# --------------------------------------------------------------------------------------------
def _unfold_oracle(conv: nn.Conv2d, x: torch.Tensor, pads, mode="constant") -> torch.Tensor:
    """2/n sum x x^T per group of F.unfold's columns after F.pad(x, pads, mode), in float64."""
    xp = F.pad(x.double(), pads, mode=mode) if any(pads) else x.double()
    u = F.unfold(xp, conv.kernel_size, dilation=conv.dilation, stride=conv.stride)
    g = conv.groups
    n, D, L = u.shape
    u = u.reshape(n, g, D // g, L).permute(1, 2, 0, 3).reshape(g, D // g, n * L)
    return 2 * u @ u.transpose(1, 2) / (n * L)


def _tf_same_pads(conv: nn.Conv2d, x: torch.Tensor):
    """TensorFlow 'SAME': output ceil(n / s), the odd pixel of padding on the right/bottom."""
    pads = []
    for i in (1, 0):
        n, k, s, d = x.shape[2 + i], conv.kernel_size[i], conv.stride[i], conv.dilation[i]
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


class _PadsInForward(nn.Conv2d):
    """TF-same padding inside forward under an arbitrary class name (like timm's Conv2dSame)."""

    def forward(self, x):
        return F.conv2d(
            F.pad(x, _tf_same_pads(self, x)),
            self.weight,
            self.bias,
            self.stride,
            0,
            self.dilation,
            self.groups,
        )


@pytest.mark.parametrize("shape", [(2, 6, 11, 9), (2, 6, 10, 12)], ids=["odd", "even"])
@pytest.mark.parametrize(
    "stride, dilation, groups", [(2, 1, 1), (1, 2, 2), (2, 1, 6)], ids=["s2", "d2g2", "dw"]
)
def test_dynamic_same_padding_matches_unfold(shape, stride, dilation, groups):
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    torch.manual_seed(7)
    x = torch.randn(shape)
    for conv, pre_pad in (
        (Conv2dDynamicSamePadding(6, 6, 3, stride=stride, dilation=dilation, groups=groups), None),
        (_PadsInForward(6, 6, 3, stride=stride, dilation=dilation, groups=groups), "tf_same"),
    ):
        with (
            HessianRecorder({"l": conv}, pre_pad=None if pre_pad is None else {"l": pre_pad}) as rec,
            torch.no_grad(),
        ):
            y = conv(x)
        H = rec.hessians()["l"]
        H = H if H.dim() == 3 else H.unsqueeze(0)
        ref = _unfold_oracle(conv, x, _tf_same_pads(conv, x))
        assert rec.counts["l"] == y.shape[0] * y.shape[2] * y.shape[3]
        torch.testing.assert_close(H.double(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "spec",
    [
        dict(kernel_size=3, padding="valid"),
        dict(kernel_size=3, padding="valid", stride=2, dilation=2),
        dict(kernel_size=(3, 2), padding="valid", stride=(1, 2), groups=2),
        dict(kernel_size=3, padding="valid", padding_mode="reflect"),
    ],
)
def test_valid_padding_matches_unfold(spec):
    torch.manual_seed(8)
    conv = nn.Conv2d(6, 4, **spec)
    x = torch.randn(3, 6, 11, 9)
    H, n = _record(conv, x)
    assert n == conv(x).shape[0] * conv(x).shape[2] * conv(x).shape[3]
    torch.testing.assert_close(H.double(), _unfold_oracle(conv, x, [0, 0, 0, 0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("kernel, dilation", [(3, 1), (4, 1), ((3, 5), (2, 1))])
def test_same_padding_with_a_padding_mode_matches_unfold(mode, kernel, dilation):
    """padding='same' with a non-zero padding_mode pads with that mode (it was built with zeros: H 14% off)."""
    torch.manual_seed(9)
    conv = nn.Conv2d(5, 4, kernel, padding="same", padding_mode=mode, dilation=dilation)
    x = torch.randn(2, 5, 12, 11)
    H, _ = _record(conv, x)
    pads = []
    for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation), strict=True):
        total = d * (k - 1)
        pads += [total // 2, total - total // 2]
    torch.testing.assert_close(H.double(), _unfold_oracle(conv, x, pads, mode), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nn.Conv2d(48, 4, 3, stride=2, padding=1), (2, 48, 9, 9)),  # unfold path: D = 432 columns
        (lambda: nn.Conv2d(400, 4, 1), (2, 400, 5, 4)),  # 1x1: one diagonal block of 400 channels
        (
            lambda: nn.Conv2d(2 * 200, 4, 1, groups=2),
            (2, 400, 5, 4),
        ),  # two groups of 200: below the threshold
    ],
    ids=["unfold-432", "1x1-400", "groups-200"],
)
def test_blocked_gram_path_matches_unfold(monkeypatch, make, shape):
    """hessian._sym_gram computes U^T U in column blocks above 1.5 blocks (D > 384); each block is exact."""
    from spade_utils import hessian

    sizes = []
    real = hessian._sym_gram
    monkeypatch.setattr(hessian, "_sym_gram", lambda U: sizes.append(U.shape[1]) or real(U))
    torch.manual_seed(10)
    conv = make()
    x = torch.randn(shape).relu()
    H, _ = _record(conv, x)
    torch.testing.assert_close(
        H.double(), _unfold_oracle(conv, x, list(conv._reversed_padding_repeated_twice)), rtol=1e-5, atol=1e-6
    )
    if conv.groups == 1:
        assert max(sizes) > hessian._SYM_BLOCK * 3 // 2, "the blocked path ran"


@pytest.mark.parametrize("D", [17, 40, 64])
def test_sym_gram_with_ragged_blocks(monkeypatch, D):
    from spade_utils import hessian

    monkeypatch.setattr(hessian, "_SYM_BLOCK", 8)
    U = torch.randn(30, D, dtype=torch.float64)
    torch.testing.assert_close(hessian._sym_gram(U), U.T @ U, rtol=1e-12, atol=1e-12)


def test_numerical_rank_of_a_float32_statistics_sum_is_the_number_of_views():
    """n views of a d-input layer span at most n directions; a float32 accumulation must not read as full rank."""
    from spade_utils.hessian import numerical_rank

    g = torch.Generator().manual_seed(0)
    d, n = 320, 40
    X = torch.randn(n, d, generator=g).abs()  # non-negative features, as after a ReLU and pooling
    H = torch.zeros(d, d)
    for i in range(0, n, 8):  # accumulated batch by batch in float32, as HessianRecorder does
        H += X[i : i + 8].T @ X[i : i + 8]
    H *= 2 / n
    assert int(numerical_rank(H)) == n
    assert int(numerical_rank(H.double(), accumulated_in=torch.float32)) == n
    # independent oracle: the rank of the factor itself, computed in float64
    assert int(torch.linalg.matrix_rank(X.double())) == n
    # batched, and full rank when the views outnumber the inputs
    Y = torch.randn(3 * d, d, generator=g, dtype=torch.float64)
    full = Y.T @ Y
    assert numerical_rank(torch.stack([full, H.double()]), accumulated_in=torch.float32).tolist() == [d, n]
    with pytest.raises(ValueError, match="H must be"):
        numerical_rank(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="H must be"):
        numerical_rank(torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        numerical_rank(torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="d >= 1"):
        numerical_rank(torch.zeros(0, 0))
    with pytest.raises(TypeError, match="accumulated_in"):
        numerical_rank(H, accumulated_in="float32")
