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
    torch.testing.assert_close(H.double().cpu(), _explicit(conv.cpu(), torch.cat([x1, x2])), rtol=1e-4, atol=1e-6)
