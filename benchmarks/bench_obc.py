"""Exact OBC: the straightforward greedy OBS (solvers.obc_prune) next to the fast one (obc.obc_prune_fast).

    python benchmarks/bench_obc.py                       # everything, default sizes
    python benchmarks/bench_obc.py --only exact,lite0    # parts: exact, lite0, resnet50, offline
    python benchmarks/bench_obc.py --full                # straightforward on every row (Lite0 fc: minutes)

Printed tables (nothing is asserted):

* ``exact``: on 50 random float64 problems (up to 64 columns, dead inputs, per-row and global
  masks, sparsity 0.5 and 0.9): how many masks are equal, and the largest relative loss gap; then
  50 low-rank ones (64-256 columns, fewer positions than columns/5: the Woodbury route).
* ``layers``: seconds (min / median of ``--repeats``) of both solvers measured side by side on
  the same rows, their ratio, and the relative reconstruction errors ``||WX - W'X||^2 / ||WX||^2``,
  for the EfficientNet-Lite0 classifier and a 1x1 projection conv (H from a real ``--views``-view
  statistics pass on the chelsea photo), ResNet-50 ``fc`` and ``layer4.*.conv2`` (4608 columns;
  torchvision, random weights, H from the same views). Wide layers time the straightforward solver
  on a row subset (``rows timed``); the fast solver is also timed on the whole layer.
* ``offline``: the fast solver on every layer of the offline backdoor trace
  (``backdoor.OFFLINE_SPADE_LAYERS``: Lite0 blocks 8-15, head, classifier) from one ``--views`` pass;
  the sum (min/median of ``--repeats`` whole passes) is the solve time of an exact-OBC trace,
  printed with the three slowest layers.

The fast solver's options: ``--block`` (default adaptive), ``--cpu-threads`` (default 1),
``--no-overlap`` (one chunk of rows at a time instead of two in flight), ``--no-low-rank`` (never the
Woodbury route for low-rank statistics); the first line says which.
The machine's load is printed first: ratios measured side by side are what to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from spade_utils.obc import obc_prune_fast
from spade_utils.solvers import obc_prune, reconstruction_loss, relative_error


def _timed(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if out.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, min(times), statistics.median(times)


def _random_problem(g, cols_range, n_range):
    G = int(torch.randint(1, 4, (1,), generator=g))
    rows = int(torch.randint(1, 9, (1,), generator=g))
    cols = int(torch.randint(*cols_range, (1,), generator=g))
    n = int(torch.randint(n_range[0], max(n_range[0] + 1, n_range[1](cols)), (1,), generator=g))
    n_dead = min(int(torch.randint(0, 4, (1,), generator=g)), cols - 1)
    idx = torch.arange(cols)
    C = (0.9 ** (idx[:, None] - idx[None]).abs()).double()
    Z = torch.linalg.cholesky(C) @ torch.randn(G, cols, n, generator=g, dtype=torch.float64)
    Z = Z * (0.2 + torch.rand(G, cols, 1, generator=g, dtype=torch.float64))
    Z[:, :n_dead] = 0
    W = torch.randn(G, rows, cols, generator=g, dtype=torch.float64)
    return W, 2 * Z @ Z.mT / n


def exactness(n_problems: int = 50) -> None:
    families = {
        "dense route: up to 64 columns, n in [4, 200)": ((2, 65), (4, lambda c: 200)),
        "low-rank route: 64-256 columns, n < cols / 5": ((64, 257), (2, lambda c: c // 5)),
    }
    for title, (cols_range, n_range) in families.items():
        g = torch.Generator().manual_seed(7)
        equal, worst, worst_abs, at, total = 0, 0.0, 0.0, 0.0, 0
        for _ in range(n_problems):
            W, H = _random_problem(g, cols_range, n_range)
            for per_row in (False, True):
                for sparsity in (0.5, 0.9):
                    a = obc_prune(W, H, sparsity, per_row=per_row)
                    b = obc_prune_fast(W, H, sparsity, per_row=per_row)
                    total += 1
                    equal += bool(torch.equal(a == 0, b == 0))
                    la, lb = reconstruction_loss(W, a, H), reconstruction_loss(W, b, H)
                    scale = reconstruction_loss(W, torch.zeros_like(W), H)
                    gap = (la - lb).abs() / (la + 1e-14 * scale)
                    if float(gap.max()) > worst:
                        worst, at = float(gap.max()), float((la / scale)[gap.argmax()])
                    worst_abs = max(worst_abs, float(((la - lb).abs() / scale).max()))
        print(
            f"\n== exactness, {title}: {n_problems} random float64 problems x (global, per-row) x (0.5, 0.9)"
        )
        print(
            f"masks equal: {equal}/{total}; largest relative loss gap: {worst:.2e} (where the loss is {at:.1e} "
            f"of the all-pruned loss); largest gap relative to the all-pruned loss: {worst_abs:.1e}"
        )


def _views(n):
    from spade_utils.augment import augment_image
    from spade_utils.data import sample_image

    return augment_image(sample_image("chelsea"), n, seed=0)


def _hessians(model, names, views):
    from spade_utils.hessian import HessianRecorder, weight_matrix

    modules = dict(model.named_modules())
    chosen = {n: modules[n] for n in names}
    with HessianRecorder(chosen) as rec, torch.no_grad():
        for i in range(0, len(views), 16):
            model(views[i : i + 16])
    H = rec.hessians()
    return {n: (weight_matrix(chosen[n]).detach().float(), H[n].float()) for n in names}


def layers_table(args) -> None:
    problems = {}
    views = _views(args.views)
    if "lite0" in args.only:
        from spade_utils.models import load_model

        lite = load_model("efficientnet_lite0")
        for name, (W, H) in _hessians(lite, ["_fc", "_blocks.15._project_conv"], views).items():
            problems[f"lite0 {name}"] = (W, H)
    if "resnet50" in args.only:
        from torchvision.models import resnet50

        torch.manual_seed(0)
        rn = resnet50(weights=None).eval()
        names = ["fc"] + [f"layer4.{i}.conv2" for i in range(3)]
        for name, (W, H) in _hessians(rn, names, views).items():
            problems[f"resnet50 {name}"] = (W, H)
    dev = torch.device(args.device)
    print(f"\n== layers: H from {args.views} views of 'chelsea'; seconds min/median of {args.repeats}")
    head = (
        f"{'layer':30s} {'shape':>11s} {'sp':>4s} {'rows':>5s} {'straight s':>15s} {'fast s':>13s} "
        f"{'ratio':>6s} {'err straight':>12s} {'err fast':>9s} {'fast all rows s':>16s}"
    )
    print(head)
    for name, (W, H) in problems.items():
        W, H = W.to(dev), H.to(dev)
        rows, cols = W.shape
        n_rows = rows if args.full else min(rows, args.rows if cols <= 2048 else args.wide_rows)
        Ws = W[:n_rows]
        for sparsity in args.sparsity:
            a, s_min, s_med = _timed(
                lambda Ws=Ws, H=H, sparsity=sparsity: obc_prune(Ws, H, sparsity),
                1 if n_rows == rows and rows > 256 else args.repeats,
            )
            b, f_min, f_med = _timed(
                lambda Ws=Ws, H=H, sparsity=sparsity: obc_prune_fast(Ws, H, sparsity, **args.fast),
                args.repeats,
            )
            ea, eb = float(relative_error(Ws, a, H)), float(relative_error(Ws, b, H))
            same = "" if torch.equal(a == 0, b == 0) else " (masks differ)"
            if n_rows < rows and (cols <= 2048 or args.wide_full):
                full, t_full, _ = _timed(
                    lambda W=W, H=H, sparsity=sparsity: obc_prune_fast(W, H, sparsity, **args.fast), 1
                )
                full_s = f"{t_full:.2f} (err {float(relative_error(W, full, H)):.4f})"
            elif n_rows == rows:
                full_s = f"{f_min:.2f}"
            else:
                full_s = "(--wide-full)"
            print(
                f"{name:30s} {rows:>5d}x{cols:<5d} {sparsity:>4.2f} {n_rows:>5d} {s_min:>7.2f}/{s_med:<7.2f} "
                f"{f_min:>6.2f}/{f_med:<6.2f} {s_min / f_min:>6.1f} {ea:>12.3e} {eb:>9.3e} {full_s:>16s}{same}"
            )


def offline_trace(args) -> None:
    from spade_utils.backdoor import OFFLINE_SPADE_LAYERS
    from spade_utils.models import load_model
    from spade_utils.spade import select_layers

    lite = load_model("efficientnet_lite0")
    names = list(select_layers(lite, OFFLINE_SPADE_LAYERS))
    problems = _hessians(lite, names, _views(args.views))
    dev = torch.device(args.device)
    print(
        f"\n== offline backdoor layer set ({len(names)} layers, {args.views} views): fast exact OBC {args.fast or ''}; "
        f"seconds min/median of {args.repeats} whole passes"
    )
    for sparsity in args.sparsity:
        totals, per_layer = [], {}
        for _ in range(args.repeats):
            total = 0.0
            for name, (W, H) in problems.items():
                W, H = W.to(dev), H.to(dev)
                _, t, _ = _timed(
                    lambda W=W, H=H, sparsity=sparsity: obc_prune_fast(W, H, sparsity, **args.fast), 1
                )
                total += t
                per_layer[name] = min(t, per_layer.get(name, float("inf")))
            totals.append(total)
        top = sorted(per_layer.items(), key=lambda x: -x[1])[:3]
        print(
            f"sparsity {sparsity:.2f}: sum of solve seconds {min(totals):.1f}/{statistics.median(totals):.1f} "
            f"(slowest: {', '.join(f'{n} {t:.1f} s' for n, t in top)})"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="exact,lite0,resnet50,offline")
    ap.add_argument("--sparsity", default="0.8,0.9")
    ap.add_argument("--views", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--rows", type=int, default=64, help="rows the straightforward solver is timed on (<= 2048 cols)"
    )
    ap.add_argument("--wide-rows", type=int, default=8, help="the same for wider layers")
    ap.add_argument(
        "--wide-full", action="store_true", help="also run the fast solver on all rows of wide layers"
    )
    ap.add_argument("--full", action="store_true", help="time the straightforward solver on every row")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--block",
        type=int,
        default=None,
        help="fast solver: removals per delayed downdate (default adaptive)",
    )
    ap.add_argument("--cpu-threads", type=int, default=1, help="fast solver: torch threads on CPU")
    ap.add_argument("--no-overlap", action="store_true", help="fast solver: one chunk of rows at a time")
    ap.add_argument("--no-low-rank", action="store_true", help="fast solver: never the Woodbury route")
    args = ap.parse_args()
    args.only = args.only.split(",")
    args.sparsity = [float(s) for s in args.sparsity.split(",")]
    args.fast = {
        k: v
        for k, v in (
            ("block", args.block),
            ("cpu_threads", args.cpu_threads),
            ("overlap", False if args.no_overlap else None),
            ("low_rank", False if args.no_low_rank else None),
        )
        if v is not None
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, fast solver {args.fast}; "
        f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"
    )
    if "exact" in args.only:
        exactness()
    if "lite0" in args.only or "resnet50" in args.only:
        layers_table(args)
    if "offline" in args.only:
        offline_trace(args)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
