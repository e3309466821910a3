#!/usr/bin/env bash
# One prepared run on a CUDA machine: the GPU-marked tests, then the trace benchmark.
# Usage (repository root): bash benchmarks/gpu_check.sh [OUTDIR]
set -uo pipefail
out=${1:-${OUT:-/tmp}}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_solvers.py tests/test_hessian.py tests/test_spade.py 2>&1 | tail -15 | tee "$out/gpu_tests.log"
timeout 300 python3 benchmarks/bench_trace.py --device cuda --batch-size 256 --skip-accuracy 2>&1 | tee "$out/bench_gpu.log"
