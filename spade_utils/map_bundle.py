"""Saliency maps saved once, browsed later: one compressed ``.npz`` file with a small JSON header.

Notebook 04 computes, for each poisoned sample, maps of several saliency methods on several model variants
(dense, SPADE, ...) and each map's Trojan AUC. :func:`save_map_bundle` stores them, downsampled, so that the
explorer (notebook 06) can page through them without recomputing anything; :func:`load_map_bundle` reads
them back as a :class:`MapBundle`.

File layout (format ``spade-map-bundle``, version 1; read with ``numpy.load(..., allow_pickle=False)``):

- ``header``: UTF-8 JSON as a uint8 array: ``format``, ``version``, ``size``, ``sample_names``, and
  ``entries``: one ``{"variant", "method", "map", "scale", "auc"}`` per map, naming its arrays;
- ``images``: float16 ``[S, 3, size, size]`` in [0, 1]; ``masks``: bool ``[S, size, size]``;
- per map: float16 ``[S, size, size]`` divided by its per-sample scale (the largest absolute value, float32
  ``[S]``; float16 alone would flush gradient-sized values, ~1e-8, to zero), and float64 AUCs ``[S]``.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .validation import check_finite_tensor, check_positive_int

FORMAT = "spade-map-bundle"
VERSION = 1


@dataclass(frozen=True)
class MapBundle:
    """Maps of several (variant, method) pairs on S samples, as :func:`load_map_bundle` returns them.

    Attributes
    ----------
    images : float32 array ``[S, 3, size, size]`` in [0, 1] (float16 precision).
    masks : bool array ``[S, size, size]``: the trigger pixels (a pixel is set when any full-size pixel it
        covers was).
    maps : ``(variant, method)`` -> float32 array ``[S, size, size]``, signed, in the units the maps were saved in
        (relative precision of float16, about 1e-3 of each map's largest absolute value).
    aucs : ``(variant, method)`` -> float64 array ``[S]``: the Trojan AUC of each full-size map (NaN where the
        caller stored NaN, e.g. an undefined AUC).
    sample_names : one name per sample.
    size : the side of the stored images and maps, in pixels.
    """

    images: np.ndarray
    masks: np.ndarray
    maps: dict[tuple[str, str], np.ndarray]
    aucs: dict[tuple[str, str], np.ndarray]
    sample_names: tuple[str, ...]
    size: int

    @property
    def variants(self) -> tuple[str, ...]:
        """The model variants in the order they were saved (each once)."""
        return tuple(dict.fromkeys(v for v, _ in self.maps))

    @property
    def methods(self) -> tuple[str, ...]:
        """The saliency methods in the order they were saved (each once)."""
        return tuple(dict.fromkeys(m for _, m in self.maps))

    def __len__(self) -> int:
        return len(self.sample_names)


def _check_path(path, name: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{name} must end in .npz (numpy would append it otherwise), got {str(path)!r}")
    return path


def _check_key(key, name: str) -> tuple[str, str]:
    if (
        not isinstance(key, tuple)
        or len(key) != 2
        or not all(isinstance(part, str) and part.strip() for part in key)
    ):
        raise TypeError(f"{name} keys must be (variant, method) pairs of non-empty strings, got {key!r}")
    return key


def _check_inputs(images, masks, maps, aucs, sample_names, size):
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [S, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape [S, 3, H, W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point in [0, 1], got {images.dtype}")
    check_finite_tensor(images, "images")
    n, _, h, w = images.shape
    if n == 0:
        raise ValueError("images is empty (S = 0)")
    if float(images.min()) < 0.0 or float(images.max()) > 1.0:
        raise ValueError(
            f"images must lie in [0, 1] (denormalize first), got [{float(images.min()):.3g}, {float(images.max()):.3g}]"
        )
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a bool torch.Tensor [S, H, W], got {type(masks).__name__}")
    if masks.dtype != torch.bool:
        raise TypeError(f"masks must be a bool tensor (the trigger pixels), got {masks.dtype}")
    if tuple(masks.shape) != (n, h, w):
        raise ValueError(f"masks must have shape {(n, h, w)} to match images, got {tuple(masks.shape)}")
    if not isinstance(maps, Mapping):
        raise TypeError(f"maps must be a Mapping (variant, method) -> Tensor, got {type(maps).__name__}")
    if not maps:
        raise ValueError("maps is empty")
    for key, value in maps.items():
        _check_key(key, "maps")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"maps[{key!r}] must be a torch.Tensor [S, H, W], got {type(value).__name__}")
        if tuple(value.shape) != (n, h, w):
            raise ValueError(f"maps[{key!r}] must have shape {(n, h, w)}, got {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"maps[{key!r}] must be floating point, got {value.dtype}")
        check_finite_tensor(value, f"maps[{key!r}]")
    if not isinstance(aucs, Mapping):
        raise TypeError(
            f"aucs must be a Mapping (variant, method) -> sequence of floats, got {type(aucs).__name__}"
        )
    if set(aucs) != set(maps):
        raise ValueError(
            f"aucs must have the keys of maps: missing {sorted(set(maps) - set(aucs))}, extra {sorted(set(aucs) - set(maps))}"
        )
    auc_arrays = {}
    for key in maps:
        value = aucs[key]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            raise TypeError(f"aucs[{key!r}] must be a sequence of {n} floats, got {type(value).__name__}")
        try:
            arr = np.asarray(value, dtype=np.float64).ravel()
        except (TypeError, ValueError) as err:
            raise TypeError(f"aucs[{key!r}] must be a sequence of numbers ({err})") from err
        if arr.size != n:
            raise ValueError(f"aucs[{key!r}] must hold one AUC per sample ({n}), got {arr.size}")
        if np.isinf(arr).any() or (np.isfinite(arr) & ((arr < 0) | (arr > 1))).any():
            raise ValueError(
                f"aucs[{key!r}] must lie in [0, 1] (NaN allowed for undefined), got {arr.tolist()}"
            )
        auc_arrays[key] = arr
    if isinstance(sample_names, (str, bytes)) or not isinstance(sample_names, Sequence):
        raise TypeError(f"sample_names must be a sequence of {n} strings, got {type(sample_names).__name__}")
    if len(sample_names) != n or not all(isinstance(s, str) for s in sample_names):
        raise ValueError(f"sample_names must hold {n} strings, got {list(sample_names)!r}")
    if len(set(sample_names)) != n:
        raise ValueError("sample_names must be unique")
    size = check_positive_int(size, "size")
    if size > min(h, w):
        raise ValueError(f"size must be <= the maps' side {min(h, w)} (bundles only downsample), got {size}")
    return auc_arrays, size


def _shrink(x: torch.Tensor, size: int, dtype=torch.float32) -> torch.Tensor:
    """Area-average ``[N, C, H, W]`` to ``[N, C, size, size]`` in ``dtype`` (each output pixel the mean it covers)."""
    x = x.detach().to("cpu", dtype)
    if x.shape[-2:] == (size, size):
        return x
    return F.adaptive_avg_pool2d(x, (size, size))


def save_map_bundle(path, *, images, masks, maps, aucs, sample_names, size: int = 112) -> Path:
    """Write images, trigger masks, saliency maps and their Trojan AUCs to one compressed ``.npz`` file.

    Parameters
    ----------
    path : str or PathLike ending in ``.npz``; parent folders are created.
    images : float Tensor ``[S, 3, H, W]`` in [0, 1] (the samples as shown, not normalized).
    masks : bool Tensor ``[S, H, W]``: the trigger pixels of each sample.
    maps : Mapping ``(variant, method)`` -> float Tensor ``[S, H, W]`` (e.g. ``("SPADE", "Integrated Gradients")``).
    aucs : Mapping with the same keys -> a sequence of S floats in [0, 1] (NaN allowed): each full-size map's AUC.
    sample_names : S unique strings.
    size : int, default 112: the side in pixels the images, masks and maps are area-averaged down to
        (<= min(H, W)); masks keep a pixel when any pixel it covers is set.

    Returns the path written. Raises TypeError/ValueError naming the argument (shapes, dtypes, NaN/inf, values
    outside [0, 1], key mismatch, duplicate names) before anything is written.
    """
    path = _check_path(path)
    auc_arrays, size = _check_inputs(images, masks, maps, aucs, sample_names, size)
    arrays: dict[str, np.ndarray] = {
        "images": _shrink(images, size).clamp(0, 1).numpy().astype(np.float16),
        "masks": (_shrink(masks[:, None].float(), size)[:, 0] > 0).numpy(),
    }
    entries = []
    for i, ((variant, method), value) in enumerate(maps.items()):
        small = _shrink(value[:, None], size, torch.float64)[:, 0]
        scale = small.abs().amax(dim=(1, 2))
        f32 = torch.finfo(torch.float32)
        if ((scale > f32.max) | ((scale > 0) & (scale < f32.tiny))).any():  # loaded maps are float32
            raise ValueError(
                f"maps[{(variant, method)!r}] reaches |value| {scale.max().item():.3g} (smallest sample "
                f"{scale.min().item():.3g}): outside float32's range [{f32.tiny:.3g}, {f32.max:.3g}]; rescale the maps"
            )
        unit = small / torch.where(scale > 0, scale, torch.ones_like(scale))[:, None, None]
        arrays[f"map_{i}"] = unit.numpy().astype(np.float16)
        arrays[f"scale_{i}"] = scale.numpy().astype(np.float32)
        arrays[f"auc_{i}"] = auc_arrays[(variant, method)]
        entries.append(
            {
                "variant": variant,
                "method": method,
                "map": f"map_{i}",
                "scale": f"scale_{i}",
                "auc": f"auc_{i}",
            }
        )
    header = {
        "format": FORMAT,
        "version": VERSION,
        "size": size,
        "sample_names": list(sample_names),
        "entries": entries,
    }
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    return path


def load_map_bundle(path) -> MapBundle:
    """Read a file written by :func:`save_map_bundle` into a :class:`MapBundle` (float32 maps, float64 AUCs).

    Raises TypeError for a ``path`` that is not str/PathLike, ValueError when it does not end in ``.npz``, is not
    a map bundle (wrong format or version, missing arrays) or its arrays disagree with the header;
    FileNotFoundError when the file does not exist.
    """
    path = _check_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no map bundle at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            bundle = _read_bundle(data, path)
    except (
        ValueError,
        *_DAMAGED,
    ) as err:  # a damaged or foreign file: named, whatever numpy or zipfile raised
        if isinstance(err, ValueError) and str(path) in str(err):
            raise
        raise ValueError(f"path {path} is not a readable map bundle ({type(err).__name__}: {err})") from err
    return bundle


_DAMAGED = (zipfile.BadZipFile, EOFError, OSError, KeyError, TypeError, AttributeError, IndexError)


def _read_bundle(data, path: Path) -> MapBundle:
    """The bundle in an open ``.npz``: the header and every array checked as :func:`save_map_bundle` wrote them."""
    if "header" not in data.files:
        raise ValueError(f"path {path} is not a map bundle (no header)")
    try:
        header = json.loads(bytes(data["header"]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"path {path}: unreadable header ({err})") from err
    if not isinstance(header, dict):
        raise ValueError(f"path {path}: the header is not a mapping")
    version = header.get("version")
    if header.get("format") != FORMAT or type(version) is not int or version != VERSION:
        raise ValueError(
            f"path {path} holds format {header.get('format')!r} version {version!r}, "
            f"expected {FORMAT!r} version {VERSION}"
        )
    names = tuple(header["sample_names"])
    size = header["size"]
    if not all(isinstance(s, str) for s in names) or len(set(names)) != len(names) or type(size) is not int:
        raise ValueError(f"path {path}: the header's sample names must be unique strings and size an int")
    n = len(names)
    images = data["images"].astype(np.float32)
    masks = data["masks"]
    if images.shape != (n, 3, size, size) or masks.shape != (n, size, size) or masks.dtype != bool:
        raise ValueError(f"path {path}: images {images.shape} / masks {masks.shape} disagree with the header")
    if not np.isfinite(images).all() or images.min(initial=0) < 0 or images.max(initial=0) > 1:
        raise ValueError(f"path {path}: images must hold finite values in [0, 1]")
    maps, aucs = {}, {}
    for entry in header["entries"]:
        key = (entry["variant"], entry["method"])
        if key in maps:
            raise ValueError(f"path {path}: {key} appears twice")
        missing = [entry[k] for k in ("map", "scale", "auc") if entry[k] not in data.files]
        if missing:
            raise ValueError(f"path {path}: arrays {missing} of {key} are missing")
        unit, scale = data[entry["map"]].astype(np.float32), data[entry["scale"]].astype(np.float64)
        auc = data[entry["auc"]].astype(np.float64)
        if unit.shape != (n, size, size) or scale.shape != (n,) or auc.shape != (n,):
            raise ValueError(f"path {path}: the arrays of {key} disagree with the header")
        if not np.isfinite(unit).all() or np.abs(unit).max(initial=0) > 1 or not np.isfinite(scale).all():
            raise ValueError(
                f"path {path}: the map of {key} holds values a bundle never stores (NaN, inf, |unit| > 1)"
            )
        if (scale < 0).any() or np.isinf(auc).any() or ((auc < 0) | (auc > 1)).any():
            raise ValueError(
                f"path {path}: the scale or AUC of {key} is out of range (scale >= 0, AUC in [0, 1])"
            )
        maps[key] = (unit * scale[:, None, None]).astype(np.float32)
        aucs[key] = auc
    return MapBundle(images=images, masks=masks, maps=maps, aucs=aucs, sample_names=names, size=size)
