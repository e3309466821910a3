"""The fast convolution Gram matrix (hessian.conv_gram) equals the unfold-and-multiply reference."""

import pytest
import torch
from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding
from torch import nn

from spade_utils import hessian
from spade_utils.hessian import conv_gram, layer_columns


def reference(module, x):
    """sum x x^T over unfolded receptive fields, in float64: (groups, d, d) and the count."""
    cols = layer_columns(module, x.double())
    return cols @ cols.transpose(1, 2), cols.shape[2]


def assert_gram_close(G, R, rtol):
    assert G.shape == R.shape
    assert torch.allclose(G.double(), R, rtol=rtol, atol=rtol * R.abs().max().item())


# name -> (module, input shape); spatial sizes odd and even, batch sizes 1 and 3
CASES = {
    "3x3 s1 p1": (lambda: nn.Conv2d(8, 6, 3, padding=1), (3, 8, 9, 7)),
    "3x3 s2 p1": (lambda: nn.Conv2d(8, 6, 3, stride=2, padding=1), (3, 8, 9, 8)),
    "3x3 s2 p1 odd": (lambda: nn.Conv2d(8, 6, 3, stride=2, padding=1), (1, 8, 11, 13)),
    "3x3 dilation 2": (lambda: nn.Conv2d(8, 6, 3, padding=2, dilation=2), (3, 8, 9, 11)),
    "3x3 same": (lambda: nn.Conv2d(8, 6, 3, padding="same"), (1, 8, 7, 7)),
    "4x3 same dilation (2,1)": (
        lambda: nn.Conv2d(8, 6, (4, 3), padding="same", dilation=(2, 1)),
        (2, 8, 9, 7),
    ),
    "3x3 valid p0": (lambda: nn.Conv2d(8, 6, 3), (3, 8, 9, 7)),
    "5x5 p2": (lambda: nn.Conv2d(6, 4, 5, padding=2), (3, 6, 11, 9)),
    "5x5 s2 p2": (lambda: nn.Conv2d(6, 4, 5, stride=2, padding=2), (3, 6, 11, 9)),
    "1x1 s1": (lambda: nn.Conv2d(16, 4, 1), (3, 16, 5, 7)),
    "1x1 s2": (lambda: nn.Conv2d(16, 4, 1, stride=2), (3, 16, 5, 7)),
    "1x1 p1": (lambda: nn.Conv2d(5, 4, 1, padding=1), (1, 5, 6, 6)),
    "groups 4": (lambda: nn.Conv2d(16, 8, 3, padding=1, groups=4), (3, 16, 7, 6)),
    "groups 4 s2": (lambda: nn.Conv2d(16, 8, 3, stride=2, padding=1, groups=4), (3, 16, 7, 6)),
    "depthwise": (lambda: nn.Conv2d(12, 12, 3, padding=1, groups=12), (3, 12, 7, 9)),
    "depthwise s2": (lambda: nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12), (1, 12, 7, 9)),
    "depthwise 5x5 s2": (lambda: nn.Conv2d(12, 12, 5, stride=2, padding=2, groups=12), (3, 12, 13, 9)),
    "reflect padding": (lambda: nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect"), (3, 8, 9, 7)),
    "stride 3 kernel 4": (lambda: nn.Conv2d(5, 4, 4, stride=3, padding=1), (3, 5, 13, 11)),
    "padding wider than kernel": (lambda: nn.Conv2d(5, 4, 3, padding=4), (1, 5, 6, 6)),
    "static same s2": (
        lambda: Conv2dStaticSamePadding(3, 8, 3, stride=2, image_size=(15, 14)),
        (3, 3, 15, 14),
    ),
    "static same depthwise 5x5 s2": (
        lambda: Conv2dStaticSamePadding(8, 8, 5, stride=2, groups=8, image_size=15),
        (3, 8, 15, 15),
    ),
    "static same s1 (identity pad)": (lambda: Conv2dStaticSamePadding(4, 4, 1, image_size=7), (3, 4, 7, 7)),
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("name", list(CASES))
def test_conv_gram_matches_unfold(name, channels_last):
    make, shape = CASES[name]
    torch.manual_seed(0)
    module = make()
    x = torch.randn(shape)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    R, count = reference(module, x)
    G64, n64 = conv_gram(module, x, torch.float64)
    G32, n32 = conv_gram(module, x)
    assert n64 == n32 == count
    assert G64.dtype == torch.float64 and G32.dtype == torch.float32
    assert_gram_close(G64, R, rtol=1e-10)
    assert_gram_close(G32, R, rtol=1e-5)


@pytest.mark.parametrize("method", ["blocks", "unfold"])
@pytest.mark.parametrize(
    "name",
    ["3x3 s1 p1", "3x3 s2 p1", "5x5 p2", "groups 4 s2", "depthwise 5x5 s2", "static same s2", "1x1 s2"],
)
def test_both_methods_and_accumulation(name, method):
    """Each internal method is exact, and ``out=`` adds a second batch into the blocks of the first."""
    make, shape = CASES[name]
    torch.manual_seed(1)
    module = make()
    x1, x2 = torch.randn(shape), torch.randn(shape)
    R, count = reference(module, torch.cat([x1, x2]))
    blocks, n1 = hessian._conv_gram_blocks(module, x1, torch.float64, method=method)
    blocks, n2 = hessian._conv_gram_blocks(module, x2, torch.float64, out=blocks, method=method)
    assert n1 + n2 == count
    assert_gram_close(hessian._blocks_to_gram(blocks), R, rtol=1e-10)


def test_depthwise_in_several_slices(monkeypatch):
    """Depthwise products run over slices of the batch; the slices add up exactly."""
    monkeypatch.setattr(hessian, "_DEPTHWISE_CHUNK", 1)
    monkeypatch.setattr(hessian, "_UNFOLD_CHUNK", 1)
    torch.manual_seed(2)
    for make, shape in (CASES["depthwise"][0], (5, 12, 7, 9)), (CASES["static same s2"][0], (3, 3, 15, 14)):
        module = make()
        x = torch.randn(shape)
        R, _ = reference(module, x)
        assert_gram_close(conv_gram(module, x, torch.float64)[0], R, rtol=1e-10)


def test_relu_input_and_float32_precision():
    """Realistic non-negative activations at a ResNet-like shape: float32 within 1e-5 of float64."""
    torch.manual_seed(3)
    module = nn.Conv2d(32, 8, 3, padding=1, bias=False)
    x = torch.randn(4, 32, 14, 14).relu().to(memory_format=torch.channels_last)
    R, _ = reference(module, x)
    assert_gram_close(conv_gram(module, x)[0], R, rtol=1e-5)


def test_plan_shares_displacements():
    """A 3x3 stride-1 padding-1 conv needs 13 displacements (not 45 blocks), most of them shared."""
    Ho, Wo, tasks = hessian._conv_gram_plan(16, 16, 3, 3, 1, 1, 1, 1, (1, 15, 1, 15))
    assert (Ho, Wo) == (14, 14)
    assert len(tasks) == 13
    assert sum(len(blocks) for *_, blocks in tasks) == 45
    positions = 0
    for _, _, base, blocks in tasks:
        positions += base[1] * base[3] if base else 0
        for _, _, rect, strips in blocks:
            positions += rect[1] * rect[3] if rect else sum(s[1] * s[3] for s in strips)
    assert positions * 5 < 81 * 14 * 14  # over 5x fewer multiply-adds than unfold and multiply


def test_empty_batch():
    module = nn.Conv2d(4, 4, 3, padding=1)
    G, count = conv_gram(module, torch.zeros(0, 4, 5, 5))
    assert count == 0 and G.shape == (1, 36, 36) and not G.any()


@pytest.mark.parametrize("groups", [1, 8])
def test_diagonal_never_negative_after_the_boundary_correction(groups):
    """Large values on the border, ~0 inside: shared product minus strips cancels in float32 (it gave -9 on the
    diagonal, which the solvers rightly refuse as not PSD); a sum of squares comes out >= 0 and H stays exact
    to float32 rounding of its largest entries."""
    torch.manual_seed(4)
    module = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
    x = torch.rand(4, 8, 12, 12) * 1e-3
    x[..., 0, :] = torch.rand(4, 8, 12) * 1e3
    x[..., :, 0] = torch.rand(4, 8, 12) * 1e3
    G, _ = conv_gram(module, x)
    assert bool((torch.diagonal(G, dim1=-2, dim2=-1) >= 0).all())
    assert_gram_close(G, reference(module, x)[0], rtol=1e-5)
