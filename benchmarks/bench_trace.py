"""Time and size a whole SPADE trace, stage by stage, next to one plain forward pass.

    python benchmarks/bench_trace.py                 # the three standard cases
    python benchmarks/bench_trace.py --case resnet50-128 --device cuda

Each case runs in a fresh subprocess so that its peak RSS is its own. Printed per case:
augment / forward+statistics / solve seconds, the trace's total, the time of one plain fp32
forward pass of the same N augmented images under ``torch.inference_mode`` (default memory
format, and channels-last), their ratio, and peak RSS (after the trace, and after the baseline,
which holds all N views at once). A last table compares, on one layer, the
reconstruction error of the engine's SparseGPT with a textbook SparseGPT (explicit inverse,
unfold-based statistics): speed-ups must not cost accuracy.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

CASES = {
    # name: (model, layers, sparsity, N)
    "resnet50-128": ("resnet50", ["layer3.4*", "layer3.5*", "layer4*", "fc"], 0.95, 128),
    "resnet50-1024": ("resnet50", ["layer3.4*", "layer3.5*", "layer4*", "fc"], 0.95, 1024),
    "efficientnet_lite0-128": ("efficientnet_lite0", "*", 0.9, 128),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(name: str, device: str, batch_size: int) -> dict:
    from spade_utils.augment import ImageAugmenter
    from spade_utils.data import sample_image
    from spade_utils.models import load_model, resolve_device
    from spade_utils.spade import spade_trace

    model_name, layers, sparsity, n = CASES[name]
    dev = resolve_device(device)
    model = load_model(model_name, pretrained=(model_name == "efficientnet_lite0"), device=dev)
    image = sample_image("chelsea")
    # warm-up (kernels, allocator) on a tiny trace
    spade_trace(
        model, image, layers=layers, sparsity=sparsity, n_augment=2, batch_size=2, device=dev, progress=False
    )
    t0 = time.perf_counter()
    trace = spade_trace(
        model,
        image,
        layers=layers,
        sparsity=sparsity,
        n_augment=n,
        batch_size=batch_size,
        device=dev,
        progress=False,
    )
    total = time.perf_counter() - t0
    trace_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # before the baseline's own views
    views = ImageAugmenter()(image, n, torch.Generator().manual_seed(0))
    forward = {}
    for fmt in ("contiguous", "channels_last"):
        with torch.inference_mode():
            _sync(dev)
            t0 = time.perf_counter()
            for i in range(0, n, batch_size):
                xb = views[i : i + batch_size].to(dev)
                if fmt == "channels_last":
                    xb = xb.contiguous(memory_format=torch.channels_last)
                model(xb)
            _sync(dev)
            forward[fmt] = time.perf_counter() - t0
    peak_gpu = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    return {
        "case": name,
        "device": str(dev),
        "N": n,
        "augment_s": trace.timings["augment"],
        "forward+stats_s": trace.timings["statistics"],
        "solve_s": trace.timings["solve"],
        "trace_s": total,
        "plain_forward_s": forward["contiguous"],
        "forward_channels_last_s": forward["channels_last"],
        "trace/forward": total / forward["contiguous"],
        "trace_peak_rss_GB": trace_rss,
        "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_gpu_GB": peak_gpu,
        "mean_rel_error": float(trace.records.rel_error.mean()),
    }


def textbook_sparsegpt(W, H, sparsity, blocksize=128, percdamp=0.01):
    """SparseGPT as first written: explicit inverse, then its upper Cholesky factor."""
    W = W.clone().float()
    H = H.clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0])
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    cols = W.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Q1, E1, H1 = (
            W[:, i1:i2].clone(),
            torch.zeros_like(W[:, i1:i2]),
            torch.zeros_like(W[:, i1:i2]),
            Hinv[i1:i2, i1:i2],
        )
        score = W1**2 / torch.diag(H1).reshape(1, -1) ** 2
        k = int(score.numel() * sparsity)
        mask = torch.zeros_like(W1, dtype=torch.bool).flatten()
        mask[score.flatten().argsort()[:k]] = True
        mask = mask.reshape(W1.shape)
        for i in range(i2 - i1):
            w, d = W1[:, i], H1[i, i]
            q = w.clone()
            q[mask[:, i]] = 0
            Q1[:, i] = q
            e = (w - q) / d
            W1[:, i:] -= e.unsqueeze(1) @ H1[i, i:].unsqueeze(0)
            E1[:, i] = e
        W[:, i1:i2] = Q1
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    return W


def accuracy_check(n: int = 64) -> list[dict]:
    """One ResNet-50 layer: engine vs textbook statistics and solver, by reconstruction error."""
    import torch.nn.functional as F

    from spade_utils.augment import ImageAugmenter
    from spade_utils.data import sample_image
    from spade_utils.hessian import HessianRecorder, weight_matrix
    from spade_utils.models import load_model
    from spade_utils.solvers import relative_error, solve

    torch.manual_seed(0)  # random ResNet-50 weights, the same every run
    model = load_model("resnet50", pretrained=False)
    layer = model.layer4[1].conv2
    views = ImageAugmenter()(sample_image("chelsea"), n, torch.Generator().manual_seed(0))
    inputs = []
    h = layer.register_forward_hook(lambda m, i, o: inputs.append(i[0].detach()))
    with HessianRecorder({"l": layer}) as rec, torch.no_grad():
        model(views)
    h.remove()
    H_engine = rec.hessians()["l"]
    u = F.unfold(inputs[0].double(), 3, padding=1).transpose(0, 1).reshape(layer.weight[0].numel(), -1)
    H_ref = (2 * u @ u.T / u.shape[1]).float()
    W = weight_matrix(layer)
    rows = []
    with torch.no_grad():
        t0 = time.perf_counter()
        Ws, _ = solve(W, H_engine, 0.95, method="sparsegpt")
        t_engine = time.perf_counter() - t0
        t0 = time.perf_counter()
        Wt = textbook_sparsegpt(W, H_ref, 0.95)
        t_text = time.perf_counter() - t0
        W_exact = solve(W, H_ref, 0.95, method="sparsegpt")[
            0
        ]  # engine solver on the exact H: isolates the solver
    for label, Wx, secs in (
        ("engine (fast H, flipped-Cholesky SparseGPT)", Ws, t_engine),
        ("engine solver on unfold H", W_exact, float("nan")),
        ("textbook (unfold H, explicit inverse)", Wt, t_text),
    ):
        rows.append(
            {
                "version": label,
                "layer": "layer4.1.conv2",
                "rel_error": f"{float(relative_error(W, Wx, H_ref)):.6f}",
                "solve_s": secs,
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    widths = [max(len(k), *(len(fmt(r[k])) for r in rows)) for k in keys]
    lines = ["  ".join(k.rjust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(fmt(r[k]).rjust(w) for k, w in zip(keys, widths)) for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=list(CASES), action="append")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(args.one, args.device, args.batch_size)))
        return
    rows = []
    for case in args.case or list(CASES):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                case,
                "--device",
                args.device,
                "--batch-size",
                str(args.batch_size),
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(f"{case} failed:\n{out.stderr[-3000:]}", flush=True)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(table(rows[-1:]), flush=True)
    if rows:
        print("\nSPADE trace vs plain forward pass")
        print(table(rows))
    if not args.skip_accuracy:
        print("\nSame solver, straightforward vs optimised (reconstruction error on the exact H)")
        print(table(accuracy_check()))


if __name__ == "__main__":
    main()
