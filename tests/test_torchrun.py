"""A real torchrun launch: ``torchrun --nproc-per-node 2 -m spade_utils.run trojan ...`` on this CPU (no GPU, no
process group needed: each worker reads RANK/WORLD_SIZE and runs its stride of the samples) merges into exactly
the table of one process with the same settings."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from spade_utils.run import TROJAN_KEY, main

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).parent / "torchrun"
TINY = [
    "--n-samples", "2", "--no-require-flip", "--methods", "saliency", "--variants", "dense", "fastspade",
    "--sparsities", "0.9", "--views", "8", "--layers", "_fc", "--implant-steps", "2",
    "--implant-n-clean", "8", "--implant-n-triggered", "8", "--device", "cpu",
]  # fmt: skip


def _table(out):
    df = pd.read_csv(out / "trojan" / "merged.csv").sort_values(TROJAN_KEY)
    return df.drop(columns="code_version").reset_index(drop=True)


@pytest.mark.slow  # two fresh interpreters loading EfficientNet-Lite0 and the implant cache: ~1 min here
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_torchrun_two_workers_merge_to_the_one_process_table(tmp_path, capsys):
    cache, one, two = tmp_path / "cache", tmp_path / "one", tmp_path / "two"
    flags = [*TINY, "--cache-dir", str(cache)]
    assert main(["trojan", "--out", str(one), *flags]) == 0  # also fills the implant cache
    assert main(["merge", "--out", str(one)]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_ARRAY")}
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())  # the one-process run's: same rounding
    launch = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "spade_utils.run"]
    done = subprocess.run(
        [*launch, "trojan", "--out", str(two), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shard 0/2" in done.stderr and "shard 1/2" in done.stderr  # torchrun's RANK/WORLD_SIZE chose them
    assert sorted(p.name for p in (two / "trojan").glob("shard-*.csv")) == [
        "shard-0-of-2.csv",
        "shard-1-of-2.csv",
    ]
    assert main(["merge", "--out", str(two)]) == 0
    pd.testing.assert_frame_equal(_table(two), _table(one), check_exact=True)
