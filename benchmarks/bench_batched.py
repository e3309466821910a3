"""Traces per second of batched SPADE traces (spade_utils.batched.spade_traces) for B samples at once.

    python benchmarks/bench_batched.py                          # EfficientNet-Lite0, offline layers, CPU
    python benchmarks/bench_batched.py --device cuda            # + ResNet-50 at 1024 views on the GPU
    python benchmarks/bench_batched.py --batches 1 4 --repeats 1 --views 32   # a quick look

Cases (each B in its own subprocess, so the peak memory is its own):

- ``lite0``: EfficientNet-Lite0 with the layers ``spade-run trojan`` prunes on the offline source
  (``OFFLINE_SPADE_LAYERS``: blocks 8-15, head, classifier; depthwise convs skipped), SparseGPT at 0.9,
  128 views per sample (``--views``), on ``--device`` (default cpu);
- ``resnet50``: ResNet-50 (random weights: the time does not depend on them) with the paper's layers
  (layer3.4-5, layer4, fc), SparseGPT at 0.95, 1024 views per sample, only when CUDA is available
  (otherwise a line says it was skipped).

A forward pass carries ``--views-per-pass`` views in all (default 128 on CPU, 1024 on GPU), i.e.
``views_per_pass // B`` of each sample. Printed: seconds per batch of B traces (min over ``--repeats``
after a warm-up batch), traces per second, the speed-up over B = 1, and peak memory: the process's peak
RSS on CPU (``resource.getrusage``), ``torch.cuda.max_memory_allocated`` on GPU. The table is markdown.
Benchmarks assert nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = {
    # name: (model, layers, skip_depthwise, sparsity, views per sample)
    "lite0": ("efficientnet_lite0", "offline", True, 0.9, 128),
    "resnet50": ("resnet50", ["layer3.4*", "layer3.5*", "layer4*", "fc"], False, 0.95, 1024),
}


def run_one(case: str, B: int, device: str, views: int, per_pass: int, repeats: int) -> dict:
    import torch

    from spade_utils.backdoor import OFFLINE_SPADE_LAYERS, TEST_PHOTOS, TRAIN_PHOTOS, load_image
    from spade_utils.batched import spade_traces
    from spade_utils.models import load_model
    from spade_utils.runtime import resolve_device

    model_name, layers, skip_dw, sparsity, _ = CASES[case]
    layers = list(OFFLINE_SPADE_LAYERS) if layers == "offline" else layers
    dev = resolve_device(device)
    model = load_model(model_name, pretrained=model_name == "efficientnet_lite0", device=dev)
    photos = [load_image(p) for p in (*TEST_PHOTOS, *TRAIN_PHOTOS)]
    images = [photos[i % len(photos)] for i in range(B)]
    kw = dict(
        layers=layers,
        skip_depthwise=skip_dw,
        sparsity=sparsity,
        solver="sparsegpt",
        batch_size=max(1, per_pass // B),
        device=dev,
        progress=False,
    )
    spade_traces(model, images[:1], seeds=0, n_augment=2, **kw)  # warm-up: kernels, allocator
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    stages = {}
    for r in range(repeats):
        t0 = time.perf_counter()
        traces = spade_traces(model, images, seeds=list(range(r * B, (r + 1) * B)), n_augment=views, **kw)
        times.append(time.perf_counter() - t0)
        stages = {k: B * v for k, v in traces[0].timings.items()}  # per-sample shares back to the batch
    peak = (
        torch.cuda.max_memory_allocated(dev) / 2**30
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return dict(
        case=case,
        B=B,
        device=str(dev),
        views=views,
        per_pass=B * kw["batch_size"],
        seconds=min(times),
        all_seconds=times,
        stages=stages,
        peak_gib=peak,
        peak_kind="GPU allocated" if dev.type == "cuda" else "RSS",
        threads=torch.get_num_threads(),
    )


def _subprocess(args, case, B, device, views, per_pass) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        case,
        str(B),
        device,
        str(views),
        str(per_pass),
        str(args.repeats),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if out.returncode != 0:
        raise RuntimeError(f"{case} B={B} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="device of the lite0 case (resnet50 always needs CUDA)")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16], help="B values")
    p.add_argument("--views", type=int, help="views per sample (default: the case's, 128 / 1024)")
    p.add_argument("--views-per-pass", type=int, help="views per forward pass (default 128 CPU, 1024 GPU)")
    p.add_argument("--repeats", type=int, default=2, help="timed batches per B (min is reported)")
    p.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        case, B, device, views, per_pass, repeats = args.child
        print(json.dumps(run_one(case, int(B), device, int(views), int(per_pass), int(repeats))))
        return

    import torch

    plan = [("lite0", args.device)]
    if torch.cuda.is_available():
        plan.append(("resnet50", "cuda"))
    else:
        print("resnet50 at 1024 views: skipped, no CUDA device here (run with a GPU: --device cuda)\n")
    rows = []
    for case, device in plan:
        views = args.views or CASES[case][4]
        per_pass = args.views_per_pass or (1024 if device.startswith("cuda") else 128)
        base = None
        for B in args.batches:
            r = _subprocess(args, case, B, device, views, per_pass)
            base = base or r["seconds"] / r["B"]
            r["speedup"] = base / (r["seconds"] / r["B"])
            rows.append(r)
            print(f"  {case} B={B}: {r['seconds']:.1f} s ({r['all_seconds']})", file=sys.stderr, flush=True)
    print("| case | device | views/sample | B | views/pass | s per batch | traces/s | speed-up vs B=1 |"
          " forward+stats s | solve s | peak memory |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['device']} ({r['threads']} thr) | {r['views']} | {r['B']} | {r['per_pass']} | "
            f"{r['seconds']:.1f} | {r['B'] / r['seconds']:.3f} | {r['speedup']:.2f}x | "
            f"{r['stages'].get('statistics', 0):.1f} | {r['stages'].get('solve', 0):.1f} | "
            f"{r['peak_gib']:.2f} GiB {r['peak_kind']} |"
        )


if __name__ == "__main__":
    main()
