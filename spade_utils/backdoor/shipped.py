"""Implanted backdoors shipped with the package: compact, hash-checked, loaded in a second instead of trained.

The offline backdoor (:mod:`.implant`, default recipe) takes 16+ minutes of CPU to train; a student's first
run of notebook 04 should not. A trained implant is stored as its **difference from the original weights**,
quantised per output row to int8 (symmetric: ``delta ≈ q · s``, ``q`` in [-127, 127], ``s = max|delta_row| / 127``),
in one ``.npz`` file named like the implant cache (``backdoor_<Model>_<key>.npz``, the key of
:func:`.implant.cache_paths`: settings + the original weights' hash). For EfficientNet-Lite0 that is 4.4 M
changed values in 77 tensors, about 4 MB instead of 17.6 MB of float32; the largest weight error is 1.1e-4
(|delta| ≤ 0.027) and logits move by at most 0.009 (of ±24) on held-out crops, top-1 unchanged.

Each folder of bundles holds a ``SHA256SUMS`` file (``sha256sum`` format); a bundle whose bytes do not match
its line, or that has none, is refused. The reconstruction ``original + q · s`` is elementwise float32
arithmetic: the same weights on every machine. ``make backdoor-weights`` retrains (or reuses the cache) and
writes the package's bundle again (:func:`ship_backdoor`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "SHIPPED_DIR",
    "bundle_path",
    "dequantize_rows",
    "load_shipped_backdoor",
    "quantize_rows",
    "ship_backdoor",
]

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
SUMS_FILE = "SHA256SUMS"
FORMAT = "spade-backdoor-delta-int8-v1"


def quantize_rows(delta: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantisation per output row (the first dimension; a 0-/1-D tensor is one row).

    delta: float tensor of any shape. Returns ``(q, s)``: ``q`` int8 of shape ``[rows, rest]`` with values in
    [-127, 127], ``s`` float32 of shape ``[rows]`` with ``s = max|row| / 127`` (1 for an all-zero row), so
    that ``|q · s - delta| <= s / 2`` entrywise. Raises TypeError for a non-floating tensor."""
    if not isinstance(delta, torch.Tensor) or not delta.is_floating_point():
        raise TypeError(f"delta must be a floating-point tensor, got {getattr(delta, 'dtype', type(delta))}")
    rows = delta.detach().to("cpu", torch.float32).reshape(delta.shape[0] if delta.dim() > 1 else 1, -1)
    peak = rows.abs().amax(dim=1)
    scale = torch.where(peak > 0, peak / 127, torch.ones_like(peak))
    q = torch.round(rows / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.numpy(), scale.numpy()


def dequantize_rows(q: np.ndarray, s: np.ndarray, shape) -> torch.Tensor:
    """``q · s`` (float32) reshaped to ``shape``: the inverse of :func:`quantize_rows` up to rounding."""
    return (
        torch.from_numpy(np.asarray(q, np.int8)).float()
        * torch.from_numpy(np.asarray(s, np.float32))[:, None]
    ).reshape(tuple(shape))


def bundle_path(folder: str | os.PathLike, cache_file: str | os.PathLike) -> Path:
    """The bundle for the implant cache file ``backdoor_<Model>_<key>.pt``: same name, ``.npz``, in ``folder``."""
    return Path(folder) / (Path(cache_file).stem + ".npz")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_sums(folder: Path) -> dict[str, str]:
    sums = folder / SUMS_FILE
    if not sums.is_file():
        return {}
    out = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.strip().lstrip("*")] = digest
    return out


def _write_sum(folder: Path, name: str, digest: str) -> None:
    sums = _read_sums(folder)
    sums[name] = digest
    (folder / SUMS_FILE).write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))


def ship_backdoor(
    trained: Mapping[str, torch.Tensor] | nn.Module,
    original: Mapping[str, torch.Tensor] | nn.Module,
    info: Mapping,
    path: str | os.PathLike,
) -> Path:
    """Write ``trained``'s difference from ``original`` as an int8 bundle at ``path`` (``.npz``) and record its
    SHA-256 in the folder's ``SHA256SUMS``.

    trained, original: state dicts (or modules) with the same keys and shapes; tensors equal in both are not
    stored (non-float buffers must be equal). info: the implant's JSON-serialisable record (its ``settings``
    at least), kept in the bundle's header. Raises ValueError naming the argument when keys, shapes or
    non-float buffers differ, or when ``info`` has no ``settings``."""
    trained_sd = trained.state_dict() if isinstance(trained, nn.Module) else dict(trained)
    original_sd = original.state_dict() if isinstance(original, nn.Module) else dict(original)
    if set(trained_sd) != set(original_sd):
        raise ValueError(
            f"trained and original must have the same keys; differ in {sorted(set(trained_sd) ^ set(original_sd))[:5]}"
        )
    if not isinstance(info, Mapping) or "settings" not in info:
        raise ValueError("info must be the implant's record with its 'settings'")
    arrays: dict[str, Any] = {}  # numpy arrays, by their name in the .npz
    tensors: list[dict] = []
    for name in sorted(trained_sd):
        t, o = trained_sd[name].detach().cpu(), original_sd[name].detach().cpu()
        if t.shape != o.shape:
            raise ValueError(f"trained[{name!r}] has shape {tuple(t.shape)}, original {tuple(o.shape)}")
        if torch.equal(t, o):
            continue
        if not t.is_floating_point():
            raise ValueError(f"trained[{name!r}] is a non-float buffer that differs from the original")
        q, s = quantize_rows(t.float() - o.float())
        arrays[f"q{len(tensors)}"], arrays[f"s{len(tensors)}"] = q, s
        tensors.append({"name": name, "shape": list(t.shape)})
    header = {
        "format": FORMAT,
        "tensors": tensors,
        "info": {k: v for k, v in info.items() if k not in ("history", "path")},
    }
    arrays["header"] = np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    _write_sum(path.parent, path.name, _sha256(path))
    return path


def load_shipped_backdoor(
    original: nn.Module, path: str | os.PathLike
) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``(state_dict, info)`` of the bundle at ``path`` applied to ``original``'s weights, or None when there
    is no such file.

    The file's SHA-256 must match its line in the folder's ``SHA256SUMS``; the state dict is ``original``'s
    with ``original + q · s`` in every stored tensor (``original`` itself is not modified). Raises ValueError
    naming the file for a hash mismatch, a missing checksum, a damaged file or tensors the model does not
    have (with what to do)."""
    path = Path(path)
    if not path.is_file():
        return None
    expected = _read_sums(path.parent).get(path.name)
    if expected is None:
        raise ValueError(
            f"shipped backdoor {path} has no line in {path.parent / SUMS_FILE}; refusing an unchecked file"
        )
    if _sha256(path) != expected:
        raise ValueError(
            f"shipped backdoor {path} does not match its SHA-256 in {SUMS_FILE} (damaged or edited): restore it "
            "with git, or pass shipped=False to implant_backdoor to train the backdoor instead"
        )
    try:
        with np.load(path, allow_pickle=False) as bundle:
            header = json.loads(bytes(bundle["header"]).decode())
            if header.get("format") != FORMAT:
                raise ValueError(f"format {header.get('format')!r}, expected {FORMAT!r}")
            state = {k: v.detach().clone() for k, v in original.state_dict().items()}
            for i, entry in enumerate(header["tensors"]):
                name, shape = entry["name"], tuple(entry["shape"])
                if name not in state or tuple(state[name].shape) != shape:
                    raise ValueError(f"tensor {name!r} of shape {shape} is not in the model")
                base = state[name]
                state[name] = (
                    base.float() + dequantize_rows(bundle[f"q{i}"], bundle[f"s{i}"], shape).to(base.device)
                ).to(base.dtype)
    except (KeyError, OSError, ValueError, json.JSONDecodeError) as err:
        raise ValueError(f"shipped backdoor {path} cannot be read: {err}") from err
    return state, dict(header["info"])


def main() -> int:
    """``make backdoor-weights``: train the default offline backdoor
    (or reuse its cache), then write the package's bundle and checksum from it."""
    from ..models import load_model
    from .implant import implant_backdoor

    original = load_model("efficientnet_lite0")
    bd = implant_backdoor(original, shipped=False, cache=True, device="cpu")
    path = ship_backdoor(bd.model, original, bd.info, bundle_path(SHIPPED_DIR, bd.info["path"]))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and its line in {SHIPPED_DIR / SUMS_FILE}")
    return 0
