"""Time the convolution Gram matrix: unfold-and-multiply reference vs ``hessian.conv_gram``.

For the ResNet-50 layer shapes of a SPADE trace over layer3.4 ... fc (a batch of 64 images by default)
and a few EfficientNet-Lite0 shapes (16 images), print seconds per batch for
- ``unfold``: ``layer_columns(m, x) @ layer_columns(m, x).T`` (the straightforward way),
- ``fast``: ``conv_gram`` (shared-displacement products, symmetric blocks, no unfold),
- ``blocks``: the same without reordering the blocks into (channel, kh, kw) order, i.e. what a
  recorder pays per batch when it accumulates blocks and reorders once at the end,
and the max relative error max|G - T| / max|T| of both float32 results against float64 ``conv_gram``.
The "trace" line sums the ResNet rows, times their multiplicity in the trace, scaled to N = 1024.

Inputs are ReLU'd Gaussian, channels-last. Times are the best of ``--repeat`` runs, the two methods
alternating. On a shared machine, run it with ``--threads 1 --clock cpu`` too: a busy neighbour slows
small parallel operations far more than one big matrix product. Prints a table; asserts nothing.

    python benchmarks/bench_conv_gram.py [--batch 64] [--threads N] [--clock wall|cpu] [--repeat 3]
                                         [--no-fp64] [--only NAME]
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import torch
from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding
from torch import nn

from spade_utils import hessian
from spade_utils.hessian import conv_gram, layer_columns

# name, times in the layer3.4 ... fc trace, module, (channels, height, width) of its input
RESNET = [
    ("layer3.x.conv1 1x1 1024->256 14x14", 2, nn.Conv2d(1024, 256, 1, bias=False), (1024, 14, 14)),
    ("layer3.x.conv2 3x3 256 14x14", 2, nn.Conv2d(256, 256, 3, padding=1, bias=False), (256, 14, 14)),
    ("layer3.x.conv3 1x1 256->1024 14x14", 2, nn.Conv2d(256, 1024, 1, bias=False), (256, 14, 14)),
    ("layer4.0.conv1 1x1 1024->512 14x14", 1, nn.Conv2d(1024, 512, 1, bias=False), (1024, 14, 14)),
    (
        "layer4.0.conv2 3x3/2 512 14x14",
        1,
        nn.Conv2d(512, 512, 3, stride=2, padding=1, bias=False),
        (512, 14, 14),
    ),
    (
        "layer4.0.downsample 1x1/2 1024 14x14",
        1,
        nn.Conv2d(1024, 2048, 1, stride=2, bias=False),
        (1024, 14, 14),
    ),
    ("layer4.x.conv1 1x1 2048->512 7x7", 2, nn.Conv2d(2048, 512, 1, bias=False), (2048, 7, 7)),
    ("layer4.x.conv2 3x3 512 7x7", 2, nn.Conv2d(512, 512, 3, padding=1, bias=False), (512, 7, 7)),
    ("layer4.x.conv3 1x1 512->2048 7x7", 3, nn.Conv2d(512, 2048, 1, bias=False), (512, 7, 7)),
]
EFFICIENTNET = [
    (
        "lite0 stem 3x3/2 3ch 224",
        Conv2dStaticSamePadding(3, 32, 3, stride=2, image_size=224, bias=False),
        (3, 224, 224),
    ),
    (
        "lite0 dw 3x3 32ch 112",
        Conv2dStaticSamePadding(32, 32, 3, groups=32, image_size=112, bias=False),
        (32, 112, 112),
    ),
    (
        "lite0 dw 3x3/2 96ch 112",
        Conv2dStaticSamePadding(96, 96, 3, stride=2, groups=96, image_size=112, bias=False),
        (96, 112, 112),
    ),
    (
        "lite0 dw 5x5/2 144ch 56",
        Conv2dStaticSamePadding(144, 144, 5, stride=2, groups=144, image_size=56, bias=False),
        (144, 56, 56),
    ),
    (
        "lite0 dw 5x5 672ch 14",
        Conv2dStaticSamePadding(672, 672, 5, groups=672, image_size=14, bias=False),
        (672, 14, 14),
    ),
]


def unfold_gram(module, x):
    cols = layer_columns(module, x)
    return cols @ cols.transpose(1, 2)


def blocks_only(module, x):
    return hessian._conv_gram_blocks(module, x)[0]


CLOCK = time.perf_counter


def best_of(fns, repeat):
    """Best seconds (of CLOCK) of each function, the functions alternating; and their last results."""
    times, results = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = CLOCK()
            results[i] = fn()
            times[i] = min(times[i], CLOCK() - t0)
    return times, results


def rel_err(G, T):
    return ((G.double() - T).abs().max() / T.abs().max()).item()


def bench_row(module, x, repeat, fp64):
    """Seconds of unfold, conv_gram and blocks-only on x, and the error columns as text."""
    fns = [partial(unfold_gram, module, x), partial(conv_gram, module, x), partial(blocks_only, module, x)]
    (t_ref, t_fast, t_blk), (R, (G, _), _) = best_of(fns, repeat)
    if not fp64:
        return t_ref, t_fast, t_blk, f"{rel_err(G, R.double()):>10.1e} {'(vs unfold)':>9s}"
    T = conv_gram(module, x, torch.float64)[0]
    return t_ref, t_fast, t_blk, f"{rel_err(R, T):>10.1e} {rel_err(G, T):>9.1e}"


def gemm_rate(repeat):
    A = torch.randn(12544, 512)
    (t,), _ = best_of([lambda: A.T @ A], repeat)
    return 2 * 12544 * 512 * 512 / t / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-fp64", action="store_true", help="skip the float64 error columns")
    ap.add_argument("--only", default=None, help="run only rows whose name contains this")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: process CPU time, steadier on a busy shared machine (use with --threads 1)",
    )
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, "
        f"load average {load:.1f}, fp32 matmul {gemm_rate(args.repeat):.0f} GFLOP/s now"
    )
    head = f"{'layer':38s} {'batch':>5s} {'unfold s':>9s} {'fast s':>8s} {'blocks s':>9s} {'speed-up':>8s}"
    print(head + f" {'err unfold':>10s} {'err fast':>9s}")
    print("-" * (len(head) + 21))
    trace = [0.0, 0.0, 0.0]
    rows = [(n, k, m, s, args.batch) for n, k, m, s in RESNET]
    rows += [(n, 0, m, s, min(args.batch, 16)) for n, m, s in EFFICIENTNET]
    for name, times_in_trace, module, shape, batch in rows:
        if args.only and args.only not in name:
            continue
        x = torch.randn(batch, *shape).relu().to(memory_format=torch.channels_last)
        t_ref, t_fast, t_blk, errs = bench_row(module, x, args.repeat, not args.no_fp64)
        print(
            f"{name:38s} {batch:5d} {t_ref:9.3f} {t_fast:8.3f} {t_blk:9.3f} {t_ref / t_fast:7.1f}x {errs}",
            flush=True,
        )
        scale = times_in_trace * 1024 / batch
        trace = [trace[0] + scale * t_ref, trace[1] + scale * t_fast, trace[2] + scale * t_blk]
    if trace[0]:
        print(
            f"{'trace layer3.4..layer4.2 convs, N=1024':38s} {'':5s} {trace[0]:9.1f} {trace[1]:8.1f} "
            f"{trace[2]:9.1f} {trace[0] / trace[1]:7.1f}x"
        )


if __name__ == "__main__":
    main()
