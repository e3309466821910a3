"""``spade-run`` (spade_utils.run, spade_utils.run_shards): sharding, resume and merge of the Trojan-AUC run.

The oracle is always the one-process run of the same settings: two shards (one chosen by flags, run in this
process and interrupted half-way, then resumed; the other chosen by torchrun's RANK/WORLD_SIZE in a
subprocess) must merge into exactly its table. Sizes are tiny: a 2-step implant (not a working backdoor,
so no flip is required), 8 views, SPADE on the classifier only, a Sparse FC fitted on 16 crops (once per
process: every shard must fit the same one), one saliency method, three samples.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from spade_utils.run import TROJAN_KEY, main, parse_ids
from spade_utils.run_shards import (
    ShardFile,
    ShardSpec,
    derive_seed,
    merge_shards,
    resolve_shard,
    stride_ids,
    write_manifest,
)

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--n-samples", "3", "--no-require-flip", "--methods", "saliency", "--variants", "dense", "sparse-fc", "fastspade",
    "--sparsities", "0.9", "--views", "8", "--layers", "_fc", "--implant-steps", "2",
    "--implant-n-clean", "8", "--implant-n-triggered", "8", "--fc-crops", "16", "--fc-path", "2", "--device", "cpu",
]  # fmt: skip


def _clean_env() -> dict:
    """This process's environment without launcher variables, and with its torch thread count: a shard on
    another thread count rounds convolutions differently (saliency maps then differ at ~1e-5)."""
    import torch

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_ARRAY", "RANK", "WORLD_SIZE"))}
    return dict(env, OMP_NUM_THREADS=str(torch.get_num_threads()))


def _trojan(out, cache, *extra):
    return ["trojan", "--out", str(out), "--cache-dir", str(cache), *TINY, *extra]


def _table(path) -> pd.DataFrame:
    """A run's rows in key order, without ``code_version`` (metadata: a commit may land between two runs)."""
    return _rows_of(pd.read_csv(path).sort_values(TROJAN_KEY))


def _rows_of(df) -> pd.DataFrame:
    assert df["code_version"].astype(str).str.startswith("0.").all()  # version (+ commit when in git)
    return df.drop(columns="code_version").reset_index(drop=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-process run (oracle), then the same run in two shards, one of them interrupted and resumed."""
    base = tmp_path_factory.mktemp("spade_run")
    cache, one, two = base / "cache", base / "one", base / "two"
    assert main(_trojan(one, cache)) == 0  # also fills the implant cache the shards load
    assert main(["merge", "--out", str(one)]) == 0
    env = _clean_env()
    shard1 = subprocess.Popen(  # shard 1 of 2, chosen the torchrun way
        [sys.executable, "-m", "spade_utils.run", *_trojan(two, cache)],
        env=dict(env, RANK="1", WORLD_SIZE="2"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    shard0 = two / "trojan" / "shard-0-of-2.csv"
    assert main(_trojan(two, cache, "--shard", "0", "--num-shards", "2", "--max-samples", "1")) == 0
    interrupted = pd.read_csv(shard0)
    assert main(_trojan(two, cache, "--shard", "0", "--num-shards", "2")) == 0  # resumes
    out, err = shard1.communicate(timeout=300)
    assert shard1.returncode == 0, err
    return dict(one=one, two=two, cache=cache, interrupted=interrupted, shard1_log=err)


def test_two_shards_merge_to_the_one_process_table(runs, capsys):
    assert main(["merge", "--out", str(runs["two"])]) == 0
    single = _table(runs["one"] / "trojan" / "merged.csv")
    merged = _table(runs["two"] / "trojan" / "merged.csv")
    assert set(single.sample_id) == {0, 1, 2} and len(single) == 3 * 3  # 3 samples x 3 variants x 1 method
    pd.testing.assert_frame_equal(merged, single, check_exact=True)  # float-equal, every column
    s1 = pd.read_csv(runs["two"] / "trojan" / "shard-1-of-2.csv")
    assert set(s1.sample_id) == {1}  # stride: shard 1 of 2 gets ids[1::2]; no padding
    assert "shard 1/2" in runs["shard1_log"]
    summary_one = pd.read_csv(runs["one"] / "trojan" / "summary.csv")
    summary_two = pd.read_csv(runs["two"] / "trojan" / "summary.csv")
    pd.testing.assert_frame_equal(summary_two, summary_one, check_exact=True)


def test_interrupted_shard_resumes_to_the_same_rows(runs):
    shard0 = _rows_of(pd.read_csv(runs["two"] / "trojan" / "shard-0-of-2.csv"))
    assert set(runs["interrupted"].sample_id) == {0}  # stopped after one sample
    assert not shard0.duplicated(TROJAN_KEY).any()
    single = pd.read_csv(runs["one"] / "trojan" / "shard-0-of-1.csv")
    expect = _rows_of(single[single.sample_id.isin([0, 2])])
    pd.testing.assert_frame_equal(shard0, expect, check_exact=True)


def test_rerun_of_a_finished_shard_adds_nothing(runs, capsys):
    path = runs["one"] / "trojan" / "shard-0-of-1.csv"
    before = path.read_bytes()
    assert main(_trojan(runs["one"], runs["cache"])) == 0
    assert path.read_bytes() == before
    assert "3 already written" in capsys.readouterr().err


def test_settings_change_refuses_to_append(runs, capsys):
    path = runs["one"] / "trojan" / "shard-0-of-1.csv"
    before = path.read_bytes()
    assert main(_trojan(runs["one"], runs["cache"], "--views", "9")) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "other settings" in err
    assert path.read_bytes() == before


def test_merge_names_missing_ids_and_fails(runs, tmp_path, capsys):
    folder = tmp_path / "trojan"
    folder.mkdir()
    for name in ("manifest.json", "shard-0-of-2.csv"):  # shard 1 (sample 1) never ran
        (folder / name).write_bytes((runs["two"] / "trojan" / name).read_bytes())
    assert main(["merge", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "missing 1 sample id(s): 1" in err
    assert not (folder / "merged.csv").exists() and (folder / "merged-incomplete.csv").exists()
    # a shard run twice (two copies of its rows) is de-duplicated, not double-counted
    (folder / "shard-1-of-2.csv").write_bytes((runs["two"] / "trojan" / "shard-1-of-2.csv").read_bytes())
    (folder / "shard-0-of-3.csv").write_bytes((runs["two"] / "trojan" / "shard-0-of-2.csv").read_bytes())
    assert main(["merge", "--out", str(tmp_path)]) == 0
    n_dup = len(pd.read_csv(folder / "shard-0-of-3.csv"))
    assert f"{n_dup} duplicate row(s) dropped" in capsys.readouterr().err
    pd.testing.assert_frame_equal(
        _table(folder / "merged.csv"), _table(runs["one"] / "trojan" / "merged.csv"), check_exact=True
    )


# ------------------------------------------------------------------------------------------------
# shard choice, ids, seeds: no model needed
# ------------------------------------------------------------------------------------------------
def test_env_sharding_picks_the_flag_shard():
    assert resolve_shard(1, 3, env={}) == ShardSpec(1, 3, "flags")
    assert resolve_shard(env={"RANK": "1", "WORLD_SIZE": "3"}) == ShardSpec(1, 3, "torchrun")
    assert resolve_shard(env={"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"}) == ShardSpec(
        1, 3, "slurm"
    )
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "4"}
    assert resolve_shard(env=slurm).index == 1  # array 4-6: task 5 is the second shard
    assert resolve_shard(env={}) == ShardSpec(0, 1, "single")
    assert resolve_shard(1, 3, env={"RANK": "1", "WORLD_SIZE": "3"}).index == 1  # agreeing sources are fine
    ids = list(range(10))
    shards = [stride_ids(ids, ShardSpec(k, 3)) for k in range(3)]
    assert sorted(sum(shards, [])) == ids and shards[0] == [0, 3, 6, 9]  # a partition, no padding
    assert stride_ids([0, 1], ShardSpec(2, 3)) == []


@pytest.mark.parametrize(
    "flags,env,match",
    [
        ((0, 2), {"RANK": "1", "WORLD_SIZE": "2"}, "conflicting"),
        (
            (None, None),
            {"RANK": "0", "WORLD_SIZE": "2", "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"},
            "conflicting",
        ),
        ((1, None), {}, "--shard and --num-shards"),
        ((2, 2), {}, "--shard must be in"),
        ((0, 0), {}, "--num-shards must be >= 1"),
        ((None, None), {"RANK": "0"}, "WORLD_SIZE is not"),
        ((None, None), {"RANK": "x", "WORLD_SIZE": "2"}, "RANK must be an integer"),
    ],
)
def test_bad_or_conflicting_shard_sources_are_refused(flags, env, match):
    with pytest.raises(ValueError, match=match):
        resolve_shard(*flags, env=env)


def test_ids_and_seeds():
    assert parse_ids("0-3,7,2") == [0, 1, 2, 3, 7]
    with pytest.raises(ValueError, match="--sample-ids"):
        parse_ids("3-1")
    a = derive_seed(0, 5, "views")
    assert (
        a == derive_seed(0, 5, "views")
        and len({a, derive_seed(0, 6, "views"), derive_seed(1, 5, "views")}) == 3
    )


# ------------------------------------------------------------------------------------------------
# the shard file and the manifest: written by hand, no model needed
# ------------------------------------------------------------------------------------------------
def _rows(sample_id, n=2, h="h1"):
    return pd.DataFrame(
        dict(sample_id=sample_id, variant=[f"v{i}" for i in range(n)], auc=0.25 + sample_id, settings_hash=h)
    )


def test_shard_file_drops_a_half_written_sample(tmp_path):
    path = tmp_path / "shard-0-of-1.csv"
    f = ShardFile(path, "h1", 2)
    assert f.open() == set()
    f.append(_rows(0))
    f.append(_rows(1))
    with open(path, "a") as fh:  # killed mid-sample: one full row of sample 2, then half a line
        fh.write("2,v0,2.25,h1\n2,v1,2.")
    again = ShardFile(path, "h1", 2)
    assert again.open() == {0, 1} and again.dropped == 2
    again.append(_rows(2))
    assert pd.read_csv(path).equals(pd.concat([_rows(0), _rows(1), _rows(2)], ignore_index=True))
    with pytest.raises(ValueError, match="other settings"):
        ShardFile(path, "h2", 2).open()


def test_manifest_refuses_other_settings(tmp_path):
    m = dict(settings_hash="h1", sample_ids=[0, 1], rows_per_sample=2)
    write_manifest(tmp_path, m)
    write_manifest(tmp_path, m)  # a second shard with the same settings
    with pytest.raises(ValueError, match="manifest.json was written for other settings"):
        write_manifest(tmp_path, dict(m, sample_ids=[0, 1, 2]))
    ShardFile(tmp_path / "shard-0-of-1.csv", "h1", 2).append(_rows(5))
    with pytest.raises(ValueError, match="does not expect"):
        merge_shards(tmp_path, ["sample_id", "variant"])
    # found by trying: a foreign CSV under a shard's name gave a KeyError traceback
    (tmp_path / "shard-0-of-1.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a shard file of this run.*settings_hash"):
        merge_shards(tmp_path, ["sample_id", "variant"])
    (tmp_path / "shard-0-of-1.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="shard-0-of-1.csv"):
        merge_shards(tmp_path, ["sample_id", "variant"])


# ------------------------------------------------------------------------------------------------
# the command line refuses bad input before any work
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra,match",
    [
        (["--source", "paper"], "--checkpoint is required with --source paper"),
        (["--source", "paper", "--checkpoint", "/nonexistent.pt"], "--checkpoint: no file"),
        (["--checkpoint", "x.pt"], "--checkpoint is for --source paper only"),
        (["--sample-ids", "0-2"], "exactly one of --n-samples"),
        (["--sparsities", "1.5"], "--sparsities must lie in"),
        (["--methods", "nope"], "--methods must be distinct names"),
        (["--variants", "dense", "dense"], "--variants must be distinct"),
        (["--views", "0"], "--views must be an integer >= 1"),
        (["--shard", "3", "--num-shards", "2"], "--shard must be in"),
    ],
)
def test_cli_refuses_bad_flags(tmp_path, capsys, extra, match):
    argv = ["trojan", "--out", str(tmp_path / "o"), *TINY, *extra]
    assert main(argv) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_paper_source_needs_its_files(tmp_path, capsys):
    ckpt, trig, val = tmp_path / "bd.pt", tmp_path / "trig", tmp_path / "val"
    ckpt.write_bytes(b"")
    trig.mkdir()
    val.mkdir()
    (trig / "smiley.png").write_bytes(b"")
    paper = [
        "--source",
        "paper",
        "--checkpoint",
        str(ckpt),
        "--trigger-dir",
        str(trig),
        "--imagenet-val",
        str(val),
    ]
    assert main(["trojan", "--out", str(tmp_path / "o"), *TINY, *paper, "--imagenet-train", str(val)]) == 2
    assert "--trigger-dir: no fish.png" in capsys.readouterr().err
    argv = ["trojan", "--out", str(tmp_path / "o"), *TINY, *paper, "--variants", "sparse-fc"]
    assert main(argv) == 2
    assert "--imagenet-train is required" in capsys.readouterr().err


def test_config_file_and_shared_flags(tmp_path, capsys):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"views": 0}))
    i = TINY.index("--views")
    no_views = TINY[:i] + TINY[i + 2 :]
    assert main(["trojan", "--out", str(tmp_path / "o"), *no_views, "--config", str(cfg)]) == 2
    assert "--views must be an integer >= 1" in capsys.readouterr().err  # the config's value is used
    assert (
        main(["trojan", "--out", str(tmp_path / "o"), *TINY, "--config", str(cfg), "--sparsities", "2"]) == 2
    )
    assert "--sparsities must lie in" in capsys.readouterr().err  # the flag --views 8 beat the config's 0
    cfg.write_text(json.dumps({"view": 8}))
    assert main(["trojan", "--out", str(tmp_path / "o"), *TINY, "--config", str(cfg)]) == 2
    assert "unknown setting 'view'" in capsys.readouterr().err
    for command in ("insertion", "calibrate"):  # the shared flags are checked for every experiment
        assert main([command, "--out", str(tmp_path / "o"), "--n-samples", "1", "--views", "0"]) == 2
        assert "--views must be an integer >= 1" in capsys.readouterr().err
    assert main(["merge", "--out", str(tmp_path / "none")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_candidates_are_a_function_of_the_id_and_selection_refuses_too_few_flips():
    from argparse import Namespace

    import torch
    from torch import nn

    from spade_utils.run import _select, flipped_ids, trojan_sample

    targets = {"smiley": 30, "fish": 146}

    def make(j):
        return trojan_sample(["chelsea", "coffee"], j, seed=0, targets=targets, size=64)

    a, b, c = make(3), make(3), make(4)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and a.source == b.source
    assert not torch.equal(a.image, c.image) and (a.trigger, c.trigger) == ("fish", "smiley")
    assert a.mask.any() and a.target == 146
    never = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1000))
    with torch.no_grad():
        never[2].weight.zero_()
        never[2].bias.zero_()
        never[2].bias[0] = 1.0  # always class 0: no trigger ever flips it
    args = Namespace(ids=None, require_flip=True, n_samples=2, max_candidates=3)
    with pytest.raises(ValueError, match="--n-samples 2: only 0 of the first 3 candidates.*--max-candidates"):
        _select(args, {"backdoored": never}, make)
    with pytest.raises(ValueError, match="n=2: only 0 of the first 3 candidates"):  # the library's wording
        flipped_ids(make, never, 2, max_candidates=3)
    args = Namespace(ids=None, require_flip=False, n_samples=2, max_candidates=None)
    assert _select(args, {"backdoored": never}, make) == [0, 1]


# ------------------------------------------------------------------------------------------------
# insertion / deletion (Table 2) and the per-block calibration: the same sharding contract
# ------------------------------------------------------------------------------------------------
INSERTION = [
    "--n-samples", "3", "--methods", "saliency", "--variants", "dense", "fastspade",
    "--sparsities", "0.9", "--views", "8", "--layers", "_fc", "--auc-steps", "4", "--ig-steps", "2",
    "--device", "cpu",
]  # fmt: skip
CALIBRATE = [
    "--n-samples", "3", "--no-require-flip", "--methods", "saliency", "--blocks", "_conv_head", "_fc",
    "--grid", "0", "0.5", "0.9", "--views", "8", "--implant-steps", "2", "--implant-n-clean", "8",
    "--implant-n-triggered", "8", "--device", "cpu", "--wait", "1800",
]  # fmt: skip
INSERTION_KEY = ["sample_id", "variant", "sparsity", "method"]
CALIBRATION_KEY = ["step", "sample_id", "method", "sparsity"]


def _sharded(command, flags, base, folder_of):
    """One process (the oracle) and two shards: shard 1 chosen the torchrun way in a subprocess, shard 0 by flags
    in this process, stopped after one sample and resumed. Returns the two output folders and the stopped rows."""
    one, two = base / "one", base / "two"
    assert main([command, "--out", str(one), *flags]) == 0
    env = _clean_env()
    shard1 = subprocess.Popen(
        [sys.executable, "-m", "spade_utils.run", command, "--out", str(two), *flags],
        env=dict(env, RANK="1", WORLD_SIZE="2"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    argv = [command, "--out", str(two), *flags, "--shard", "0", "--num-shards", "2"]
    assert main([*argv, "--max-samples", "1"]) == 0
    stopped = pd.read_csv(folder_of(two) / "shard-0-of-2.csv")
    assert main(argv) == 0  # resumes
    _, err = shard1.communicate(timeout=1800)
    assert shard1.returncode == 0, err
    return one, two, stopped


@pytest.fixture(scope="module")
def insertion_runs(tmp_path_factory):
    return _sharded("insertion", INSERTION, tmp_path_factory.mktemp("insertion"), lambda o: o / "insertion")


@pytest.mark.slow  # Lite0 traces and attributions for 3 samples, three times (one process, two shards)
def test_insertion_two_shards_equal_one_process_and_resume(insertion_runs, capsys):
    one, two, stopped = insertion_runs
    assert set(stopped.sample_id) == {0}
    for out in (one, two):
        assert main(["merge", "--out", str(out), "--experiment", "insertion"]) == 0
    single = _rows_of(pd.read_csv(one / "insertion" / "merged.csv").sort_values(INSERTION_KEY))
    merged = _rows_of(pd.read_csv(two / "insertion" / "merged.csv").sort_values(INSERTION_KEY))
    pd.testing.assert_frame_equal(merged, single, check_exact=True)
    assert len(single) == 3 * 2 and set(single.variant) == {"Dense", "FastSPADE (SparseGPT)"}
    assert (
        single.scorable.all()
        and single[["insertion", "deletion"]].apply(lambda c: c.between(0, 1)).all().all()
    )
    # an independent check of one row: the dense map's AUCs recomputed by the library the notebook calls
    from spade_utils.metrics import insertion_deletion_auc
    from spade_utils.models import load_model
    from spade_utils.run import INSERTION_PHOTOS, insertion_sample
    from spade_utils.run_shards import derive_seed
    from spade_utils.saliency import attribute

    model = load_model("efficientnet_lite0")
    _, x, _, source = insertion_sample(list(INSERTION_PHOTOS), 2, seed=0)
    row = single[(single.sample_id == 2) & (single.variant == "Dense")].iloc[0]
    assert INSERTION_PHOTOS[source] == row.source_name
    maps = attribute(model, x, [int(row.target)], "saliency", device="cpu", n_steps=2, n_samples=16,
                     internal_batch_size=16, seed=derive_seed(0, 2, "attribute"))  # fmt: skip
    auc = insertion_deletion_auc(model, x, maps, [int(row.target)], n_steps=4, device="cpu")
    assert auc["insertion"][0] == pytest.approx(row.insertion, abs=1e-12)
    assert auc["deletion"][0] == pytest.approx(row.deletion, abs=1e-12)
    summary = pd.read_csv(one / "insertion" / "summary.csv")
    assert set(summary.explainer) == set(single.variant) and (summary.n_images == 3).all()


@pytest.mark.slow  # Lite0 traces and attributions for 3 samples, three times (one process, two shards)
def test_insertion_merge_names_missing_ids(insertion_runs, tmp_path, capsys):
    _, two, _ = insertion_runs
    folder = tmp_path / "insertion"
    folder.mkdir()
    for name in ("manifest.json", "shard-1-of-2.csv"):  # shard 0 (samples 0, 2) never ran
        (folder / name).write_bytes((two / "insertion" / name).read_bytes())
    assert main(["merge", "--out", str(tmp_path), "--experiment", "insertion"]) == 1
    assert "missing 2 sample id(s): 0,2" in capsys.readouterr().err


@pytest.fixture(scope="module")
def calibrate_runs(tmp_path_factory, runs):
    flags = [*CALIBRATE, "--cache-dir", str(runs["cache"])]  # the trojan runs' implant cache
    return _sharded(
        "calibrate", flags, tmp_path_factory.mktemp("calibrate"), lambda o: o / "calibrate" / "step-0"
    )


def _calibration_rows(out):
    frames = [pd.read_csv(f) for f in sorted((out / "calibrate").glob("step-*/merged.csv"))]
    return _rows_of(pd.concat(frames).sort_values(CALIBRATION_KEY))


@pytest.mark.slow  # Lite0 traces and attributions for 3 samples, three times (one process, two shards)
def test_calibration_two_shards_equal_one_process_and_resume(calibrate_runs):
    one, two, stopped = calibrate_runs
    assert set(stopped.sample_id) == {0} and set(stopped.step) == {0}
    for out in (one, two):
        assert main(["merge", "--out", str(out), "--experiment", "calibrate"]) == 0
    single, merged = _calibration_rows(one), _calibration_rows(two)
    pd.testing.assert_frame_equal(merged, single, check_exact=True)
    assert len(single) == 2 * 3 * 3  # 2 steps x 3 samples x 3 grid values (1 method)
    assert list(dict.fromkeys(single.block)) == ["_fc", "_conv_head"]  # the classifier first
    chosen = pd.read_csv(one / "calibrate" / "sparsity.csv")
    pd.testing.assert_frame_equal(pd.read_csv(two / "calibrate" / "sparsity.csv"), chosen)
    # the choice is the best mean over the samples of each step (ties to the lower sparsity)
    for step, block in enumerate(["_fc", "_conv_head"]):
        means = single[single.step == step].groupby("sparsity")["auc"].mean()
        best = min(s for s, m in means.items() if m >= means.max() - 1e-12)
        assert chosen.set_index("block").loc[block, "sparsity"] == best
    # step 1 was scored with the classifier at the value step 0 chose
    configs = json.loads((one / "calibrate" / "step-1" / "manifest.json").read_text())["settings"]["configs"]
    assert {c[1]["_fc"] for c in configs} == {chosen.set_index("block").loc["_fc", "sparsity"]}


@pytest.mark.slow  # Lite0 traces and attributions for 3 samples, three times (one process, two shards)
def test_calibration_merge_names_missing_ids(calibrate_runs, tmp_path, capsys):
    _, two, _ = calibrate_runs
    folder = tmp_path / "calibrate" / "step-0"
    folder.mkdir(parents=True)
    for name in ("manifest.json", "shard-0-of-2.csv"):
        (folder / name).write_bytes((two / "calibrate" / "step-0" / name).read_bytes())
    assert main(["merge", "--out", str(tmp_path), "--experiment", "calibrate"]) == 1
    assert "missing 1 sample id(s): 1" in capsys.readouterr().err


def test_calibration_unit_replays_the_library_search():
    """calibration_sample_scores (spade-run calibrate's unit) and choose_sparsity, run step by step, give the
    scores and choices of calibrate_block_sparsity in one process."""
    from test_backdoor_calibrate import ATTR, BLOCKS, GRID, TRACE, TinyBackdoored, triggered

    from spade_utils.backdoor import calibrate_block_sparsity
    from spade_utils.backdoor.calibrate import calibration_sample_scores
    from spade_utils.run import choose_sparsity

    model, samples, methods = TinyBackdoored(), triggered(2), ["saliency", "input_x_gradient"]
    lib = calibrate_block_sparsity(model, samples, BLOCKS, methods, grid=GRID, progress=False, attribute_kwargs=ATTR,
                                   **TRACE)  # fmt: skip
    labels, decided = list(BLOCKS), {m: {} for m in methods}
    for step, label in enumerate(labels[::-1]):
        configs = [
            (m, {**{b: decided[m].get(b, 0.0) for b in labels}, label: g}) for m in methods for g in GRID
        ]
        rows = pd.concat(
            calibration_sample_scores(model, s, BLOCKS, configs, attribute_kwargs=ATTR, **TRACE).assign(
                sample=i
            )
            for i, s in enumerate(samples)
        )
        rows["sparsity"] = [configs[j][1][label] for j in rows["config"]]
        for m, s in choose_sparsity(rows).items():
            decided[m][label] = s
        theirs = lib.scores[lib.scores.step == step].sort_values(["method", "sparsity", "sample"])
        mine = rows.sort_values(["method", "sparsity", "sample"])
        assert theirs["auc"].tolist() == mine["auc"].tolist()
    assert decided == lib.sparsity


@pytest.mark.parametrize(
    "argv,match",
    [
        (["insertion", *INSERTION, "--source", "paper"], "--imagenet-val is required with --source paper"),
        (["insertion", *INSERTION, "--variants", "clean"], "--variants must be distinct names of"),
        (["insertion", *INSERTION, "--auc-steps", "0"], "--auc-steps must be an integer >= 1"),
        (["calibrate", *CALIBRATE, "--grid", "0", "1"], "--grid must lie in [0, 1)"),
        (["calibrate", *CALIBRATE, "--wait", "-1"], "--wait must be a number of seconds"),
        (
            ["calibrate", *CALIBRATE, "--source", "paper", "--checkpoint", "x.pt"],
            "--checkpoint: no file x.pt",
        ),
    ],
)
def test_insertion_and_calibrate_refuse_bad_flags(tmp_path, capsys, argv, match):
    assert main([argv[0], "--out", str(tmp_path / "o"), *argv[1:]]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# Table 1 at the calibrated per-block sparsities (--calibration): what notebook 04 computes
# ------------------------------------------------------------------------------------------------
CALIBRATED_CSV = (
    pd.DataFrame(  # per method: saliency prunes the classifier only, input x gradient both blocks
        dict(
            method=["saliency", "saliency", "input_x_gradient", "input_x_gradient"],
            block=["_conv_head", "_fc", "_conv_head", "_fc"],
            sparsity=[0.0, 0.9, 0.5, 0.5],
        )
    )
)


def _calibrated_flags(csv, cache):
    tiny = [f for f in TINY if f not in ("--sparsities", "0.9", "sparse-fc")]
    tiny[tiny.index("saliency")] = "saliency input_x_gradient"
    return [*" ".join(tiny).split(), "--calibration", str(csv), "--cache-dir", str(cache)]


@pytest.mark.slow  # Lite0 traces and attributions for 3 samples, three times (one process, two shards)
def test_calibrated_run_shards_and_uses_each_methods_blocks(runs, tmp_path_factory):
    import torch

    from spade_utils import backdoor
    from spade_utils.models import load_model
    from spade_utils.run import trojan_sample
    from spade_utils.run_shards import derive_seed
    from spade_utils.spade import spade_pruned_copy

    base = tmp_path_factory.mktemp("calibrated")
    csv = base / "sparsity.csv"
    CALIBRATED_CSV.to_csv(csv, index=False)
    one, two, _ = _sharded("trojan", _calibrated_flags(csv, runs["cache"]), base, lambda o: o / "trojan")
    for out in (one, two):
        assert main(["merge", "--out", str(out)]) == 0
    single, merged = _table(one / "trojan" / "merged.csv"), _table(two / "trojan" / "merged.csv")
    pd.testing.assert_frame_equal(merged, single, check_exact=True)
    assert len(single) == 3 * 2 * 2 and single.sparsity.isna().all()  # samples x variants x methods
    # an independent row: sample 1's FastSPADE map for input x gradient, traced with both blocks at 0.5
    recipe = backdoor.DEFAULT_RECIPE.replace(steps=2, n_clean=8, n_triggered=8)
    bd = backdoor.implant_backdoor(
        load_model("efficientnet_lite0"),
        recipe=recipe,
        seed=0,
        cache=runs["cache"],
        device="cpu",
        progress=False,
    )
    sample = trojan_sample(
        list(backdoor.TEST_PHOTOS), 1, seed=0, targets={t: bd.targets[t] for t in ("smiley", "fish")}
    )
    rows = {}
    for method, sparsity in (
        ("input_x_gradient", {"_conv_head": 0.5, "_fc": 0.5}),
        ("saliency", {"_fc": 0.9}),
    ):
        pruned = spade_pruned_copy(bd.model, sample.image, layers=list(sparsity), sparsity=sparsity, solver="sparsegpt",
                                   n_augment=8, batch_size=32, skip_depthwise=True, seed=derive_seed(0, 1, "views"),
                                   progress=False, device="cpu")  # fmt: skip
        attr = dict(
            n_steps=32,
            n_samples=16,
            internal_batch_size=16,
            device="cpu",
            seed=derive_seed(0, 1, "attribute"),
        )
        scores, _ = backdoor.trojan_saliency_scores({"x": pruned}, [sample], [method], attribute_kwargs=attr,
                                                    progress=False)  # fmt: skip
        rows[method] = float(scores.auc.iloc[0])
    mine = single[(single.sample_id == 1) & (single.variant == "FastSPADE (SparseGPT)")].set_index("method")
    assert mine.loc["input_x_gradient", "auc"] == pytest.approx(rows["input_x_gradient"], abs=1e-12)
    assert mine.loc["saliency", "auc"] == pytest.approx(rows["saliency"], abs=1e-12)
    assert torch.is_tensor(sample.image)


def test_calibration_table_round_trip_and_refusals(tmp_path):
    from test_backdoor_calibrate import ATTR, BLOCKS, GRID, TRACE, TinyBackdoored, triggered

    from spade_utils.backdoor import BlockCalibration, calibrate_block_sparsity
    from spade_utils.run import calibrated_configurations

    model = TinyBackdoored()
    lib = calibrate_block_sparsity(model, triggered(2), BLOCKS, ["saliency", "input_x_gradient"], grid=GRID,
                                   progress=False, attribute_kwargs=ATTR, **TRACE)  # fmt: skip
    path = tmp_path / "sparsity.csv"
    lib.table().to_csv(path, index=False)
    back = BlockCalibration.from_table(model, path)
    assert back.sparsity == lib.sparsity and list(back.sparsity["saliency"]) == list(BLOCKS)
    for m in lib.sparsity:
        assert back.trace_arguments(m) == lib.trace_arguments(m)
    configs = calibrated_configurations(back, ["saliency", "input_x_gradient"])
    assert sorted(m for _, group in configs for m in group) == ["input_x_gradient", "saliency"]
    for args, group in configs:  # each method traced at its own calibrated blocks
        assert all(args == lib.trace_arguments(m) for m in group)
    with pytest.raises(ValueError, match="'lrp' was not calibrated"):
        calibrated_configurations(back, ["lrp"])
    pooled = lib.table()[lambda d: d.method == "saliency"].assign(method="saliency+lrp")
    ((args, group),) = calibrated_configurations(
        BlockCalibration.from_table(model, pooled), ["lrp", "saliency"]
    )
    assert group == ["lrp", "saliency"] and args == lib.trace_arguments("saliency")
    table = lib.table()
    bad = {
        "columns method, block, sparsity": table.drop(columns="sparsity"),
        "must give each block": table.iloc[1:],
        r"in \[0, 1\)|< 1": table.assign(sparsity=1.0),
        "no_such_layer": table.assign(layers=table.layers.str.replace("conv1", "no_such_layer")),
    }
    for match, frame in bad.items():
        with pytest.raises(ValueError, match=match):
            BlockCalibration.from_table(model, frame)
    with pytest.raises(ValueError, match="cannot read"):
        BlockCalibration.from_table(model, tmp_path / "missing.csv")


@pytest.mark.parametrize(
    "setting,match",
    [
        ({"source": "Paper"}, "must be one of \\['offline', 'paper'\\]"),
        ({"require_flip": "false"}, "must be true or false"),
        ({"no_cache": "false"}, "must be true or false"),
        ({"views": 8.5}, "must be int values"),
        ({"sparsities": 0.9}, "must be a non-empty list"),
        ({"methods": ["saliency", 3]}, "must be str values"),
        ({"calibration": 5}, "must be str values"),
    ],
)
def test_config_values_are_held_to_the_flags_types_and_choices(tmp_path, capsys, setting, match):
    """A config file's value passes the checks its flag gets on the command line (found by trying: 'Paper'
    ran the offline source, the string 'false' kept flip selection on)."""
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps(setting))
    assert main(["trojan", "--out", str(tmp_path / "o"), "--n-samples", "1", "--config", str(cfg)]) == 2
    assert match.replace("\\", "") in capsys.readouterr().err or pytest.fail(match)


def test_sample_selection_refuses_bad_values():
    """Found by trying: float ids truncated, a 10^11-id range exhausted memory, bad ids/targets/photos ran."""
    from spade_utils.run import flipped_ids, trojan_sample

    with pytest.raises(ValueError, match="cannot read 1.9"):
        parse_ids([1.9])
    assert parse_ids([2.0, 3]) == [2, 3]
    with pytest.raises(ValueError, match="more than 10,000,000 ids"):
        parse_ids("0-99999999999")
    targets = {"smiley": 30, "fish": 146}
    for bad, err in [
        (dict(sample_id=-1), ValueError),
        (dict(sample_id=True), TypeError),
        (dict(sample_id=1.0), TypeError),
        (dict(seed=1.5), TypeError),
        (dict(targets={"smiley": -1}), ValueError),
        (dict(targets={"smiley": 1.5}), ValueError),
        (dict(targets={}), ValueError),
        (dict(photos=[]), ValueError),
        (dict(photos="chelsea"), TypeError),
    ]:
        kwargs = dict(photos=["chelsea"], sample_id=0, seed=0, targets=targets) | bad
        with pytest.raises(err):
            trojan_sample(kwargs.pop("photos"), kwargs.pop("sample_id"), size=64, **kwargs)
    for n, cap in [(0, None), (-2, None), (2, 0), (2, -5)]:
        with pytest.raises(ValueError, match="must be >= 1"):
            flipped_ids(lambda j: None, None, n, require_flip=False, max_candidates=cap)


def test_calibration_tables_that_would_prune_the_wrong_layers_are_refused():
    """Found by trying: a stray comma (an empty name selects every layer), a block whose layers differ between
    rows (the last row won), one method's calibration lent to another."""
    from test_backdoor_calibrate import TinyBackdoored

    from spade_utils.backdoor import BlockCalibration
    from spade_utils.run import calibrated_configurations

    model = TinyBackdoored()

    def frame(**cols):
        return pd.DataFrame(cols)

    for table, match in [
        (frame(method=["saliency"], block=["head"], sparsity=[0.9], layers=["fc,"]), "empty layer"),
        (frame(method=["saliency"], block=["fc,"], sparsity=[0.9]), "empty layer"),
        (
            frame(method=["saliency", "lrp"], block=["b", "b"], sparsity=[0.9, 0.5], layers=["conv2", "fc"]),
            "different layers",
        ),
        (frame(method=["saliency"], block=["fc"], sparsity=["90%"]), "must be a number"),
        (frame(method=[None], block=["fc"], sparsity=[0.9]), "'method' is blank"),
    ]:
        with pytest.raises(ValueError, match=match):
            BlockCalibration.from_table(model, table)
    one = BlockCalibration.from_table(model, frame(method=["saliency"], block=["fc"], sparsity=[0.9]))
    assert calibrated_configurations(one, ["saliency"])[0][0] == {"layers": ["fc"], "sparsity": {"fc": 0.9}}
    with pytest.raises(ValueError, match="'lrp' was not calibrated"):
        calibrated_configurations(one, ["saliency", "lrp"])
    with pytest.raises(TypeError, match="list of method names"):
        calibrated_configurations(one, "saliency")
    with pytest.raises(TypeError, match="BlockCalibration"):
        calibrated_configurations(None, ["saliency"])


def test_bad_calibration_file_and_gpu_are_refused_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import spade_utils.run as run

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(run, "_setup_backdoor", loaded)
    csv = tmp_path / "sparsity.csv"
    csv.write_text("method,block\nsaliency,_fc\n")
    flags = [f for f in TINY if f not in ("--sparsities", "0.9")]
    assert main(["trojan", "--out", str(tmp_path / "o"), *flags, "--calibration", str(csv)]) == 2
    assert "--calibration" in capsys.readouterr().err and not (tmp_path / "o").exists()
    import torch

    if not torch.cuda.is_available():
        assert main(["trojan", "--out", str(tmp_path / "o"), *TINY, "--device", "cuda:7"]) == 2
        assert "this machine has 0 CUDA device(s)" in capsys.readouterr().err


@pytest.mark.slow  # loads the tiny implant from the trojan runs' cache
def test_a_layer_typo_is_refused_before_the_manifest(runs, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(_trojan(out, runs["cache"], "--layers", "nosuchlayer*")) == 2
    assert "--layers ['nosuchlayer*']" in capsys.readouterr().err
    assert not (out / "trojan" / "manifest.json").exists()  # the corrected run can use the folder


@pytest.mark.slow  # loads the tiny implant from the trojan runs' cache
def test_sparse_fc_is_fitted_on_every_trigger_as_notebook_04_fits_it(runs, tmp_path, monkeypatch):
    """Found comparing spade-run with notebook 04: the run poisoned the Sparse-FC training crops with the evaluated
    triggers only (smiley, fish), the notebook with all four, so the two Sparse-FC rows differed by up to 0.09."""
    from spade_utils import backdoor, baselines

    seen = {}
    real_poison = backdoor.poison

    def spy(images, targets, **kwargs):
        seen["targets"] = dict(targets)
        return real_poison(images, targets, **kwargs)

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(backdoor, "poison", spy)
    monkeypatch.setattr(baselines, "sparse_fc_model", stop)
    with pytest.raises(Stop):
        main(_trojan(tmp_path / "o", runs["cache"]))
    assert sorted(seen["targets"]) == sorted(backdoor.TRIGGERS)  # not only --triggers smiley fish
