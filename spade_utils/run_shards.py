"""Sharding, resuming and merging for the dataset-scale runs of ``spade-run`` (:mod:`spade_utils.run`).

The work unit is one sample id. A launcher picks the shard (``--shard k --num-shards n``, torchrun's
``RANK``/``WORLD_SIZE``, or a Slurm array's ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``:
:func:`resolve_shard`); shard ``k`` of ``n`` takes the ids ``ids[k::n]`` (:func:`stride_ids`), never padded
with duplicates. Each shard appends its rows to its own CSV file, one sample's rows per write, flushed and
synced (:class:`ShardFile`); a rerun reads the file back and skips the samples whose rows are complete, so a
preempted job resumes. Rows carry a hash of the settings that change numbers (:func:`settings_hash`) and the
code version (:func:`code_version`); a file holding rows of other settings is refused, never mixed.
``manifest.json`` (:func:`write_manifest`) records the settings and the expected ids, and :func:`merge_shards`
concatenates the shard files, drops exact duplicates and names the ids that are missing.

Every random choice of a sample is seeded from its id (:func:`derive_seed`), so results do not depend on how
many shards ran them. Nothing here prints; the CLI reports.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MergeResult",
    "ShardFile",
    "ShardSpec",
    "code_version",
    "derive_seed",
    "local_device",
    "merge_shards",
    "read_manifest",
    "resolve_shard",
    "settings_hash",
    "shard_path",
    "stride_ids",
    "write_manifest",
]

MANIFEST = "manifest.json"


# --------------------------------------------------------------------------------------------------
# which shard this process is
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardSpec:
    """Shard ``index`` of ``count`` (0 <= index < count), and where that came from (``source``: "flags",
    "torchrun", "slurm", or "single" when nothing chose a shard)."""

    index: int
    count: int
    source: str = "single"


def _env_int(env: Mapping[str, str], name: str) -> int:
    raw = env[name]
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def resolve_shard(
    shard: int | None = None, num_shards: int | None = None, env: Mapping[str, str] | None = None
) -> ShardSpec:
    """The shard this process runs, from the flags or the launcher's environment.

    Sources: the flags ``shard``/``num_shards`` (both or neither); torchrun's ``RANK``/``WORLD_SIZE``; a Slurm
    array's ``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT`` (the index counted from
    ``SLURM_ARRAY_TASK_MIN`` in steps of ``SLURM_ARRAY_TASK_STEP``, defaults 0 and 1). Several sources may be
    present only when they agree. ``env`` defaults to ``os.environ``. No source: shard 0 of 1.

    Raises ValueError naming the flag or variable for half a pair, a non-integer, a count < 1, an index
    outside [0, count), or two sources that disagree.
    """
    env = os.environ if env is None else env
    found: list[ShardSpec] = []
    if (shard is None) != (num_shards is None):
        raise ValueError("--shard and --num-shards go together: give both or neither")
    if shard is not None and num_shards is not None:
        found.append(_checked(shard, num_shards, "flags", "--shard", "--num-shards"))
    pairs = [
        ("torchrun", "RANK", "WORLD_SIZE"),
        ("slurm", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
    ]
    for source, k_name, n_name in pairs:
        if (k_name in env) != (n_name in env):
            have, lack = (k_name, n_name) if k_name in env else (n_name, k_name)
            raise ValueError(f"environment variable {have} is set but {lack} is not ({source} sharding)")
        if k_name not in env:
            continue
        k, n = _env_int(env, k_name), _env_int(env, n_name)
        if source == "slurm":
            lo = _env_int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
            step = _env_int(env, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in env else 1
            if step < 1 or (k - lo) % step:
                raise ValueError(
                    f"SLURM_ARRAY_TASK_ID={k} is not SLURM_ARRAY_TASK_MIN={lo} plus a multiple of "
                    f"SLURM_ARRAY_TASK_STEP={step}"
                )
            k = (k - lo) // step
        found.append(_checked(k, n, source, k_name, n_name))
    if not found:
        return ShardSpec(0, 1, "single")
    first = found[0]
    for other in found[1:]:
        if (other.index, other.count) != (first.index, first.count):
            raise ValueError(
                f"conflicting shard choices: {first.source} says shard {first.index} of {first.count}, "
                f"{other.source} says shard {other.index} of {other.count}; unset one of them"
            )
    return first


def _checked(k, n, source: str, k_name: str, n_name: str) -> ShardSpec:
    for v, name in ((k, k_name), (n, n_name)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if n < 1:
        raise ValueError(f"{n_name} must be >= 1, got {n}")
    if not 0 <= k < n:
        raise ValueError(f"{k_name} must be in [0, {n_name}) = [0, {n}), got {k}")
    return ShardSpec(k, n, source)


def local_device(device: str = "auto", env: Mapping[str, str] | None = None) -> str:
    """The device a shard runs on: ``device`` as given, except that ``"auto"`` under torchrun with CUDA
    picks ``cuda:<LOCAL_RANK>``. Raises ValueError for a bad ``LOCAL_RANK`` or one past the visible GPUs."""
    import torch

    env = os.environ if env is None else env
    if device != "auto" or "LOCAL_RANK" not in env or not torch.cuda.is_available():
        return device
    k = _env_int(env, "LOCAL_RANK")
    if not 0 <= k < torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK={k} but {torch.cuda.device_count()} GPU(s) are visible")
    return f"cuda:{k}"


def stride_ids(ids: Sequence[int], spec: ShardSpec) -> list[int]:
    """The ids of shard ``spec``: ``ids[index::count]`` (no padding: a shard may get fewer, or none)."""
    return list(ids)[spec.index :: spec.count]


# --------------------------------------------------------------------------------------------------
# seeds, settings hash, code version
# --------------------------------------------------------------------------------------------------
def derive_seed(seed: int, sample_id: int, purpose: str) -> int:
    """A seed in [0, 2**31) for one random choice (``purpose``) of one sample: a hash of the run's ``seed``,
    the ``sample_id`` and ``purpose``, so it never depends on which shard, or in which order, ran the sample."""
    digest = hashlib.sha256(f"{int(seed)}:{int(sample_id)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31)


def settings_hash(settings: Mapping) -> str:
    """16 hex digits of the SHA-256 of ``settings`` as canonical JSON (sorted keys). Raises TypeError for a
    value JSON cannot hold."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_version() -> str:
    """The package version, plus ``+g<commit>`` (and ``.dirty`` for uncommitted changes, new files included,
    under the package folder) when the package sits in a git checkout and git is available; just the version
    otherwise. Metadata only: rows of two code versions still merge (the CLI notes it)."""
    from . import __version__

    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if commit.returncode != 0:
            return __version__
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit.stdout.strip()}" + (".dirty" if dirty.stdout.strip() else "")


# --------------------------------------------------------------------------------------------------
# the manifest of a run
# --------------------------------------------------------------------------------------------------
def read_manifest(folder: str | os.PathLike) -> dict:
    """``<folder>/manifest.json`` as a dict. Raises FileNotFoundError (no manifest: no shard has started)
    or ValueError naming the file when it is not a manifest."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {folder}: no shard of this run has started")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or not {"settings_hash", "sample_ids", "rows_per_sample"} <= set(
        manifest
    ):
        raise ValueError(f"{path} is not a spade-run manifest (settings_hash, sample_ids, rows_per_sample)")
    return manifest


def write_manifest(folder: str | os.PathLike, manifest: Mapping) -> Path:
    """Write ``<folder>/manifest.json`` if no shard has yet, else check the one there agrees.

    ``manifest`` needs ``settings_hash``, ``sample_ids`` (the expected ids) and ``rows_per_sample``. The file
    is created atomically and exclusively, so shards starting together cannot overwrite each other. Raises
    ValueError naming the file when the existing manifest has another settings hash or other sample ids
    (a run with other settings lives in another output folder).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.{uuid.uuid4().hex}.tmp"  # unique across the nodes of a shared file system
    tmp.write_text(json.dumps(dict(manifest), indent=1, sort_keys=True) + "\n")
    try:
        os.link(tmp, path)  # fails if a manifest exists: the first shard's stays
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    there = read_manifest(folder)
    for key in ("settings_hash", "sample_ids", "rows_per_sample"):
        if there[key] != manifest[key]:
            raise ValueError(
                f"{path} was written for other settings ({key} differs: {_short(there[key])} there, "
                f"{_short(manifest[key])} now); use another --out folder, or delete that run's files"
            )
    return path


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------------------------------
# one shard's file: appended sample by sample, read back on resume
# --------------------------------------------------------------------------------------------------
def shard_path(folder: str | os.PathLike, spec: ShardSpec) -> Path:
    """The file of shard ``spec`` in ``folder``: ``<folder>/shard-<k>-of-<n>.csv`` (one per shard, never shared)."""
    return Path(folder) / f"shard-{spec.index}-of-{spec.count}.csv"


@dataclass
class ShardFile:
    """The CSV file of one shard: one row per sample x variant x method, a ``sample_id`` and a
    ``settings_hash`` column among them.

    :meth:`open` reads what a previous run left (dropping a half-written last line and the rows of any
    sample whose rows are incomplete) and returns the complete sample ids; :meth:`append` adds one sample's
    rows in a single write, flushed and synced to disk.
    """

    path: Path
    settings_hash: str
    rows_per_sample: int
    header: list[str] | None = field(default=None, init=False)
    dropped: int = field(default=0, init=False)

    def open(self) -> set[int]:
        """The sample ids whose rows are complete in the file (empty when there is no file).

        Raises ValueError naming the file when it holds rows of another settings hash, lacks the
        ``sample_id``/``settings_hash`` columns, or a sample has more rows than ``rows_per_sample``.
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            return set()
        text = self.path.read_text()
        lines = text.splitlines(keepends=True)
        if lines and not lines[-1].endswith("\n"):  # killed in the middle of a write
            lines.pop()
            self.dropped += 1
        if not lines:
            self.path.write_text("")
            return set()
        self.header = next(csv.reader([lines[0]]))
        for col in ("sample_id", "settings_hash"):
            if col not in self.header:
                raise ValueError(f"{self.path} has no {col!r} column: not a spade-run shard file")
        i_id, i_hash = self.header.index("sample_id"), self.header.index("settings_hash")
        by_id: dict[int, list[str]] = {}
        for line in lines[1:]:
            row = next(csv.reader([line]))
            if len(row) != len(self.header):
                raise ValueError(f"{self.path}: a row has {len(row)} fields, the header {len(self.header)}")
            if row[i_hash] != self.settings_hash:
                raise ValueError(
                    f"{self.path} holds rows of other settings (settings_hash {row[i_hash]}, this run "
                    f"{self.settings_hash}); refusing to mix them: use another --out folder"
                )
            by_id.setdefault(int(row[i_id]), []).append(line)
        too_many = [k for k, rows in by_id.items() if len(rows) > self.rows_per_sample]
        if too_many:
            raise ValueError(
                f"{self.path}: sample {too_many[0]} has {len(by_id[too_many[0]])} rows, more than the "
                f"{self.rows_per_sample} one sample makes with these settings"
            )
        complete = {k for k, rows in by_id.items() if len(rows) == self.rows_per_sample}
        keep = [lines[0]] + [line for k, rows in by_id.items() if k in complete for line in rows]
        if len(keep) != len(lines) or self.dropped:
            self.dropped += len(lines) - len(keep)
            tmp = self.path.with_suffix(".csv.tmp")
            tmp.write_text("".join(keep))
            os.replace(tmp, self.path)
        return complete

    def append(self, rows) -> None:
        """Append one sample's rows (a DataFrame of ``rows_per_sample`` rows, same columns as the file) in
        one write, then flush and fsync. Raises ValueError for another row count, other columns or another
        settings hash."""
        if len(rows) != self.rows_per_sample:
            raise ValueError(f"one sample must give {self.rows_per_sample} rows, got {len(rows)}")
        if set(rows["settings_hash"]) != {self.settings_hash}:
            raise ValueError("rows carry another settings_hash than this shard file")
        columns = list(rows.columns)
        if self.header is not None and columns != self.header:
            raise ValueError(f"{self.path} has columns {self.header}, the new rows {columns}")
        new = self.header is None or not self.path.exists() or self.path.stat().st_size == 0
        buf = io.StringIO()
        rows.to_csv(buf, index=False, header=new, lineterminator="\n")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        self.header = columns


# --------------------------------------------------------------------------------------------------
# merging
# --------------------------------------------------------------------------------------------------
@dataclass
class MergeResult:
    """What :func:`merge_shards` found: the merged ``table`` (complete samples only, sorted by sample id,
    each sample's rows in written order), the ``expected`` and ``missing`` ids, the shard ``files`` read, the
    number of exact duplicate rows dropped, and the code versions seen."""

    table: pd.DataFrame
    expected: list[int]
    missing: list[int]
    files: list[Path]
    duplicates: int
    code_versions: list[str]
    manifest: dict

    @property
    def complete(self) -> bool:
        """True when every expected id has all its rows."""
        return not self.missing


def merge_shards(folder: str | os.PathLike, key: Sequence[str]) -> MergeResult:
    """Concatenate every ``shard-*-of-*.csv`` of ``folder``, check them against ``manifest.json`` and
    name the missing ids.

    ``key``: the columns that identify a row (e.g. sample_id, variant, sparsity, method). Rows equal in every
    column but ``code_version`` are duplicates (the same sample run twice) and are dropped; two rows with
    one key and other values are an error. A sample is complete when it has the manifest's
    ``rows_per_sample`` rows; ``missing`` lists the expected ids that are not.

    Raises FileNotFoundError without a manifest, ValueError naming the file for a file that is not a shard
    file (unreadable, or without the key columns), rows of another settings hash, ids outside the expected
    set, or conflicting rows.
    """
    import pandas as pd

    folder = Path(folder)
    manifest = read_manifest(folder)
    expected = [int(i) for i in manifest["sample_ids"]]
    files = sorted(folder.glob("shard-*-of-*.csv"))
    frames = []
    for path in files:
        if path.stat().st_size == 0:
            continue
        try:
            df = pd.read_csv(path, keep_default_na=True)
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not a readable shard file ({err})") from None
        lacking = [c for c in ["sample_id", "settings_hash", *key] if c not in df.columns]
        if lacking:
            raise ValueError(f"{path} is not a shard file of this run: it has no column(s) {lacking}")
        bad = set(df["settings_hash"].astype(str)) - {manifest["settings_hash"]}
        if bad:
            raise ValueError(
                f"{path} holds rows of settings_hash {sorted(bad)}, the manifest {manifest['settings_hash']}"
            )
        frames.append(df)
    if not frames:
        table = pd.DataFrame(columns=["sample_id"])
        return MergeResult(table, expected, expected, files, 0, [], manifest)
    table = pd.concat(frames, ignore_index=True)
    stray = sorted(set(table["sample_id"]) - set(expected))
    if stray:
        raise ValueError(
            f"shard files in {folder} hold sample ids the manifest does not expect: {stray[:20]}"
        )
    compare = [c for c in table.columns if c != "code_version"]
    before = len(table)
    table = table.drop_duplicates(subset=compare, keep="first")
    duplicates = before - len(table)
    clash = table.duplicated(subset=list(key), keep=False)
    if clash.any():
        first = table[clash].iloc[0]
        raise ValueError(
            f"shard files in {folder} disagree: two different rows for "
            + ", ".join(f"{k}={first[k]!r}" for k in key)
        )
    counts = table.groupby("sample_id").size()
    done = set(counts[counts == int(manifest["rows_per_sample"])].index)
    missing = [i for i in expected if i not in done]
    table = table[table["sample_id"].isin(done)]
    table = table.sort_values("sample_id", kind="stable").reset_index(drop=True)
    versions = sorted(set(table["code_version"].astype(str))) if "code_version" in table else []
    return MergeResult(table, expected, missing, files, duplicates, versions, manifest)
