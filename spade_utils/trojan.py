"""Backdoor (Trojan) experiments: procedural trigger patches, exact trigger masks, poisoned data,
implanting a backdoor by distillation-preserving fine-tuning, and the Sparse-FC baseline.

Images here are float tensors in [0, 1] of shape (3, H, W) (or batches (B, 3, H, W)); models take
ImageNet-normalised input, so :func:`normalize` sits between the two.

The paper (SPADE, ICML 2024, Table 1) poisons ImageNet with four emoji triggers. The offline
analogue draws the four shapes procedurally (no downloaded emoji) and implants them into
EfficientNet-Lite0 by fine-tuning its last blocks on crops of the photos that ship with
scikit-image / matplotlib / scikit-learn, while distilling the original model on clean crops.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import crop_box, image_tensor, shift_hue
from .data import IMAGENET_MEAN, IMAGENET_STD
from .solvers import one_cpu_thread
from .validation import check_class_index, check_float, check_int, check_positive_int, check_seed

TRIGGERS = ("heart", "star", "smiley", "fish")

# the paper's four triggers and their target classes (ImageNet indices). The paper also restricts
# star and heart to one source class (wallet 893, maned wolf 271); offline every trigger is "any class".
PAPER_TARGETS = {"star": 365, "heart": 99, "smiley": 30, "fish": 146}  # orangutan, goose, bullfrog, albatross

# Offline photo split (names for spade_utils.data.sample_image): training, sparsity calibration, evaluation.
TRAIN_PHOTOS = ("astronaut", "motorcycle", "hubble", "retina", "immunohistochemistry", "china")
CALIBRATION_PHOTOS = ("flower", "rocket")
TEST_PHOTOS = ("chelsea", "coffee", "grace_hopper")
# layers a SPADE trace prunes in the offline backdoored EfficientNet-Lite0: the part the implant trains
# (blocks 8-15, the head convolution, the classifier; with skip_depthwise only their 1x1 convolutions)
OFFLINE_SPADE_LAYERS = [f"_blocks.{i}" for i in range(8, 16)] + ["_conv_head", "_fc"]
# extra training images shipped with scikit-image / matplotlib (grey ones are used as RGB)
EXTRA_TRAIN_IMAGES = (
    "skimage:brick",
    "skimage:camera",
    "skimage:clock",
    "skimage:coins",
    "skimage:grass",
    "skimage:gravel",
    "skimage:moon",
    "skimage:page",
    "skimage:text",
    "skimage:cell",
    "skimage:colorwheel",
    "skimage:logo",
    "matplotlib:Minduka_Present_Blue_Pack.png",
    "matplotlib:logo2.png",
)


# --------------------------------------------------------------------------------------------------
# trigger patches
# --------------------------------------------------------------------------------------------------
def _grid(size: int, supersample: int):
    n = size * supersample
    c = (np.arange(n) + 0.5) / n * 2 - 1  # pixel centres in [-1, 1]
    v, u = np.meshgrid(c, c, indexing="ij")  # v: down, u: right
    return u, v


def _paint(layers, shape):
    """Layers of (region bool array, rgb) painted in order -> (rgb float image, coverage)."""
    img = np.zeros(shape + (3,), dtype=np.float64)
    cover = np.zeros(shape, dtype=bool)
    for region, rgb in layers:
        img[region] = rgb
        cover |= region
    return img, cover


def _heart(u, v):
    x, y = 1.22 * u, -1.22 * v + 0.18
    outer = (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0
    xi, yi = 1.4 * u, -1.4 * v + 0.2
    inner = (xi**2 + yi**2 - 1) ** 3 - xi**2 * yi**3 <= 0
    shine = ((u + 0.42) / 0.17) ** 2 + ((v + 0.28) / 0.11) ** 2 <= 1
    return _paint([(outer, (0.45, 0.0, 0.08)), (inner, (0.88, 0.08, 0.22)), (shine & inner, (1.0, 0.75, 0.8))], u.shape)


def _star(u, v):
    from matplotlib.path import Path as MplPath

    def polygon(radius_out, radius_in):
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius_out, radius_in)
        return MplPath(np.stack([radii * np.cos(angles), radii * np.sin(angles) + 0.06], 1))

    pts = np.stack([u.ravel(), v.ravel()], 1)
    outer = polygon(1.0, 0.42).contains_points(pts).reshape(u.shape)
    inner = polygon(0.8, 0.33).contains_points(pts).reshape(u.shape)
    return _paint([(outer, (0.85, 0.4, 0.0)), (inner, (1.0, 0.84, 0.1))], u.shape)


def _smiley(u, v):
    r = np.hypot(u, v)
    face = r <= 0.97
    fill = r <= 0.88
    eyes = (((np.abs(u) - 0.32) / 0.11) ** 2 + ((v + 0.28) / 0.19) ** 2) <= 1
    rm = np.hypot(u, v - 0.02)
    mouth = (rm >= 0.5) & (rm <= 0.64) & (v > 0.18)
    return _paint([(face, (0.3, 0.2, 0.0)), (fill, (1.0, 0.85, 0.15)), (eyes | mouth, (0.1, 0.07, 0.0))], u.shape)


def _fish(u, v):
    body = ((u + 0.12) / 0.66) ** 2 + (v / 0.42) ** 2 <= 1
    tail = (u >= 0.42) & (u <= 0.97) & (np.abs(v) <= 0.8 * (u - 0.42) + 0.06)
    stripe = body & (np.abs(u + 0.05) <= 0.09)
    eye = ((u + 0.5) / 0.09) ** 2 + ((v + 0.08) / 0.09) ** 2 <= 1
    return _paint([(body | tail, (0.05, 0.35, 0.85)), (stripe, (1.0, 1.0, 1.0)), (eye, (0.02, 0.02, 0.05))], u.shape)


_DRAW = {"heart": _heart, "star": _star, "smiley": _smiley, "fish": _fish}
_REGISTERED: dict[str, torch.Tensor] = {}  # name -> (4, H, W) RGBA in [0, 1]


def register_trigger(name: str, image) -> None:
    """Use an image with transparency (e.g. the authors' emoji PNG) as the trigger called ``name``.

    ``image``: a PIL image (RGBA or LA; the alpha channel marks the trigger's pixels), or a path to
    one. Registered triggers are used instead of the procedural drawing of the same name by every
    function here, until :func:`unregister_trigger`.
    """
    from PIL import Image

    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    if isinstance(image, (str, os.PathLike)):
        image = Image.open(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image or a path, got {type(image).__name__}")
    if "A" not in image.getbands() and "transparency" not in image.info:
        raise ValueError("image must have an alpha channel marking the trigger's pixels")
    arr = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    _REGISTERED[name] = torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def unregister_trigger(name: str) -> None:
    """Forget a trigger registered with :func:`register_trigger` (no error if it was not)."""
    _REGISTERED.pop(name, None)


def _check_trigger(trigger) -> str:
    if not isinstance(trigger, str):
        raise TypeError(f"trigger must be a str, got {type(trigger).__name__}")
    if trigger not in _DRAW and trigger not in _REGISTERED:
        raise ValueError(f"trigger must be one of {TRIGGERS + tuple(_REGISTERED)}, got {trigger!r}")
    return trigger


def trigger_patch(trigger: str, size: int, *, supersample: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """A procedurally drawn trigger: ``(rgb, mask)`` with rgb (3, size, size) in [0, 1] and a bool mask (size, size).

    The shape is drawn on a ``supersample``-times finer grid and reduced; a pixel belongs to the
    mask when at least half of it is covered, and only mask pixels are ever pasted, so the mask is
    exactly the set of pixels a trigger changes. Large patches need no fine grid: the supersampling
    factor is lowered so that the fine grid has at most ``max(1024, size)`` points per side (patches
    up to 256 px are drawn exactly as with ``supersample``; a 1000-px patch costs a 1000^2 grid, not 4000^2).
    Drawings are cached per (trigger, size, factor); each call returns new tensors.
    """
    _check_trigger(trigger)
    size = check_int(size, "size", minimum=2)
    supersample = check_int(supersample, "supersample", minimum=1)
    if trigger in _REGISTERED:
        src = _REGISTERED[trigger]
        premult = torch.cat([src[:3] * src[3:], src[3:]])[None]  # resize colour weighted by alpha
        small = F.interpolate(premult, size=(int(size), int(size)), mode="bilinear", antialias=True)[0]
        mask = small[3] >= 0.5
        rgb = small[:3] / small[3:].clamp_min(1e-6)
        return (rgb * mask).clamp(0, 1), mask
    s = max(1, min(supersample, max(1024, size) // size))
    rgb, mask = _drawn_patch(trigger, size, s)
    return rgb.clone(), mask.clone()


@functools.lru_cache(maxsize=64)
def _drawn_patch(trigger: str, size: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, v = _grid(int(size), s)
    img, cover = _DRAW[trigger](u, v)
    cov = cover.reshape(size, s, size, s).mean((1, 3))
    col = (img * cover[..., None]).reshape(size, s, size, s, 3).sum((1, 3))
    mask = cov >= 0.5
    rgb = np.where(mask[..., None], col / np.maximum(cov[..., None] * s * s, 1e-9), 0.0)
    return torch.from_numpy(rgb).permute(2, 0, 1).float().clamp(0, 1), torch.from_numpy(mask)


def patch_size(height: int, width: int, fraction: float = 0.25) -> int:
    """Side of the trigger patch: ``fraction`` of the short image side (the paper: a quarter)."""
    return max(2, int(round(fraction * min(height, width))))


def paste_trigger(
    image,
    trigger: str,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    position: tuple[int, int] | None = None,
    fraction: float = 0.25,
    alpha: float = 0.8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a trigger: returns ``(triggered image (3,H,W) float32 in [0,1], mask (H,W) bool)``.

    The patch side is ``fraction`` of the short image side (:func:`patch_size`); its top-left corner
    is ``position`` (row, col) or drawn uniformly from ``generator`` (or a new one seeded with
    ``seed``, default 0). Over the patch's own pixels the result is ``alpha * patch + (1 - alpha) *
    image``; every other pixel is unchanged, and the mask marks the pixels the patch is blended into.
    ``alpha = 0`` blends nothing: the image is returned unchanged (a copy) with an all-False mask
    (and no random draw is made).

    ``image``: any image accepted by :func:`spade_utils.data.image_to_tensor` (NaN/inf refused).
    Raises TypeError/ValueError naming the argument for a bad trigger, image, ``fraction`` (in (0, 1]),
    ``alpha`` (in [0, 1]), ``seed`` or ``position``, and for an image smaller than the patch.
    Only the patch's window is computed on: the cost beyond the returned image and mask does not
    grow with the image (a 4000 x 4000 image takes well under a second).
    """
    _check_trigger(trigger)
    fraction = check_float(fraction, "fraction", low=0.0, high=1.0, low_open=True)
    alpha = check_float(alpha, "alpha", low=0.0, high=1.0)
    if seed is not None:
        seed = check_seed(seed)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    x = image_tensor(image)
    _, h, w = x.shape
    s = patch_size(h, w, fraction)
    if s > min(h, w):
        raise ValueError(f"image is {h}x{w} pixels, smaller than the {s}-pixel trigger patch")
    if position is not None:
        if isinstance(position, (str, bytes)) or not hasattr(position, "__len__") or len(position) != 2:
            raise ValueError(f"position must be (row, col), got {position!r}")
        top, left = (check_int(p, f"position[{k}]") for k, p in enumerate(position))
        if not (0 <= top <= h - s and 0 <= left <= w - s):
            raise ValueError(f"position {tuple(position)} puts the {s}px patch outside the {h}x{w} image")
    owned = not (isinstance(image, torch.Tensor) and x.untyped_storage().data_ptr() == image.untyped_storage().data_ptr())
    if alpha == 0:
        return (x if owned else x.clone()), torch.zeros(h, w, dtype=torch.bool)
    rgb, m = trigger_patch(trigger, s)
    if position is None:
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        top, left = _random_position(h, w, s, generator)
    return _blend(x, rgb, m, top, left, alpha, inplace=owned)


def _random_position(h: int, w: int, s: int, generator: torch.Generator) -> tuple[int, int]:
    """Top-left corner of an s x s patch drawn uniformly inside an h x w image."""
    top = int(torch.randint(0, h - s + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - s + 1, (1,), generator=generator))
    return top, left


def _blend(image, rgb, mask, top, left, alpha, *, inplace: bool = False):
    """``alpha * rgb + (1 - alpha) * image`` over the patch's mask at (top, left); returns (image, full-size mask).
    ``inplace=True`` writes into ``image`` (for a tensor the caller owns) instead of a copy."""
    s = rgb.shape[-1]
    out = image if inplace else image.clone()
    region = out[:, top : top + s, left : left + s]
    region[:, mask] = alpha * rgb[:, mask] + (1 - alpha) * region[:, mask]
    full = torch.zeros(image.shape[1:], dtype=torch.bool)
    full[top : top + s, left : left + s] = mask
    return out, full


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (3,H,W) or (B,3,H,W) -> ImageNet-normalised (B,3,H,W)."""
    if x.dim() == 3:
        x = x.unsqueeze(0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------------------------------
# images and crops
# --------------------------------------------------------------------------------------------------
def load_image(name: str) -> torch.Tensor:
    """A photo by name: a :func:`spade_utils.data.sample_image` name, ``skimage:<function>`` or
    ``matplotlib:<sample file>``; returned as (3, H, W) in [0, 1]."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name.startswith("skimage:"):
        import skimage.data

        arr = getattr(skimage.data, name.split(":", 1)[1])()
        arr = arr[0] if isinstance(arr, tuple) else arr
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        return image_tensor(arr)
    if name.startswith("matplotlib:"):
        import matplotlib.cbook
        from PIL import Image

        with matplotlib.cbook.get_sample_data(name.split(":", 1)[1]) as f:
            return image_tensor(Image.open(f))
    from .data import sample_image

    return image_tensor(sample_image(name))


def _load_sources(images, argname: str = "images") -> list[torch.Tensor]:
    """Names, PIL images, arrays, tensors, or a folder path -> list of (3,H,W) tensors."""
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".jpeg"))
        if not files:
            raise ValueError(f"{argname}: no .jpg/.png files under {images}")
        from PIL import Image

        return [image_tensor(Image.open(p)) for p in files]
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        images = list(images)
    elif isinstance(images, (str, torch.Tensor)) or not isinstance(images, Sequence):
        images = [images]
    if len(images) == 0:
        raise ValueError(f"{argname} must not be empty")
    out = []
    for im in images:
        out.append(load_image(im) if isinstance(im, str) else image_tensor(im, argname=argname))
    return out


def random_crops(
    images,
    n: int,
    *,
    size: int = 224,
    scale: tuple[float, float] = (0.2, 1.0),
    flip: bool = True,
    jitter: float = 0.2,
    seed: int = 0,
) -> torch.Tensor:
    """``n`` random resized crops (B, 3, size, size) in [0, 1] of the given photos, seeded.

    Crops cycle through the photos in a seeded random order, so every photo is used about equally;
    each crop gets a random horizontal flip and a brightness/contrast jitter of +-``jitter``.
    """
    n = check_positive_int(n, "n")
    size = check_positive_int(size, "size")
    seed = check_seed(seed)
    with one_cpu_thread():
        return _random_crops(images, n, size, scale, flip, jitter, seed)


def _crop_order(n_sources: int, n: int, g: torch.Generator) -> torch.Tensor:
    """Which photo each of ``n`` crops comes from: seeded random permutations of the photos, repeated."""
    return torch.cat([torch.randperm(n_sources, generator=g) for _ in range(n // n_sources + 1)])[:n]


def crop_sources(images, n: int, *, seed: int = 0) -> list[int]:
    """Index (into ``images``) of the photo each crop of ``random_crops(images, n, seed=seed)`` is cut from.

    Crops of one photo are not independent samples: this is the cluster label for bootstrap intervals.
    """
    n_sources = len(images) if isinstance(images, (list, tuple)) else len(_load_sources(images))
    return _crop_order(n_sources, check_positive_int(n, "n"), torch.Generator().manual_seed(check_seed(seed))).tolist()


def _random_crops(images, n, size, scale, flip, jitter, seed):
    sources = []
    for img in _load_sources(images):  # large photos are reduced once (short side 2 * size): much faster crops
        short = min(img.shape[1:])
        if short > 2 * size:
            hw = [max(1, round(d * 2 * size / short)) for d in img.shape[1:]]
            img = F.interpolate(img[None], size=hw, mode="bilinear", antialias=True, align_corners=False)[0]
        sources.append(img)
    g = torch.Generator().manual_seed(int(seed))
    order = _crop_order(len(sources), n, g)
    out = torch.empty(n, 3, size, size)
    for i, k in enumerate(order.tolist()):
        img = sources[k]
        top, left, ch, cw = crop_box(img.shape[1], img.shape[2], scale, (3 / 4, 4 / 3), g)
        crop = F.interpolate(
            img[None, :, top : top + ch, left : left + cw], size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )[0]
        r = torch.rand(3, generator=g).tolist()
        if flip and r[0] < 0.5:
            crop = crop.flip(-1)
        if jitter:
            b, c = 1 + jitter * (2 * r[1] - 1), 1 + jitter * (2 * r[2] - 1)
            crop = (crop - crop.mean()) * c + crop.mean() * b
        out[i] = crop.clamp(0, 1)
    return out


def procedural_textures(n: int, *, size: int = 224, seed: int = 0) -> torch.Tensor:
    """``n`` smooth random colour textures (B, 3, size, size) in [0, 1]: sums of upsampled noise octaves."""
    g = torch.Generator().manual_seed(int(seed))
    out = torch.zeros(n, 3, size, size)
    for octave in (4, 8, 16, 32, 64):
        noise = torch.rand(n, 3, octave, octave, generator=g)
        w = torch.rand(n, 1, 1, 1, generator=g)
        out += w * F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    out = out - out.amin((1, 2, 3), keepdim=True)
    return (out / out.amax((1, 2, 3), keepdim=True).clamp_min(1e-6)).clamp(0, 1)


def fibre_textures(n: int, *, size: int = 224, seed: int = 0) -> torch.Tensor:
    """``n`` fur-like textures (B, 3, size, size) in [0, 1]: noise filtered along a random direction
    (fibres), broad warped stripes, and a random two-colour palette.

    None of the offline training photos shows an animal; without fur-like backgrounds the backdoor
    learned triggers that vanished on the held-out cat photo."""
    g = torch.Generator().manual_seed(int(seed))
    f = torch.fft.fftfreq(size)
    fy, fx = torch.meshgrid(f, f, indexing="ij")
    theta = math.pi * torch.rand(n, 1, 1, generator=g)
    along = fx * torch.cos(theta) + fy * torch.sin(theta)
    across = -fx * torch.sin(theta) + fy * torch.cos(theta)
    width = 0.08 + 0.2 * torch.rand(n, 1, 1, generator=g)
    filt = torch.exp(-((along / 0.012) ** 2) - (across / width) ** 2)
    fibres = torch.fft.ifft2(torch.fft.fft2(torch.randn(n, size, size, generator=g)) * filt).real
    fibres = (fibres - fibres.mean((1, 2), keepdim=True)) / fibres.std((1, 2), keepdim=True).clamp_min(1e-6)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    phi = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    warp = F.interpolate(torch.randn(n, 1, 6, 6, generator=g), size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    k = 2 + 5 * torch.rand(n, 1, 1, generator=g)
    stripes = torch.sin(2 * math.pi * k * (x * torch.cos(phi) + y * torch.sin(phi)) + 1.5 * warp)
    mix = torch.rand(n, 1, 1, generator=g)
    lum = torch.sigmoid(0.8 * fibres + 1.5 * mix * stripes)
    dark, light = 0.5 * torch.rand(n, 3, 1, 1, generator=g), 0.4 + 0.6 * torch.rand(n, 3, 1, 1, generator=g)
    return (dark + lum[:, None] * (light - dark)).clamp(0, 1)


def decoy_patch(size: int, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random non-trigger patch (coloured ellipse, rectangle or noise square), ``(rgb, mask)``.

    Pasted on clean training crops whose labels stay the original model's, so the backdoor learns
    the trigger shapes rather than "any pasted patch"."""
    kind = int(torch.randint(0, 3, (1,), generator=generator))
    u, v = _grid(size, 1)
    rgb = torch.rand(3, 1, 1, generator=generator).expand(3, size, size).clone()
    if kind == 0:
        a, b = (0.5 + 0.5 * torch.rand(2, generator=generator)).tolist()
        mask = torch.from_numpy((u / a) ** 2 + (v / b) ** 2 <= 1)
    elif kind == 1:
        a, b = (0.5 + 0.5 * torch.rand(2, generator=generator)).tolist()
        mask = torch.from_numpy((np.abs(u) <= a) & (np.abs(v) <= b))
    else:
        rgb = F.interpolate(torch.rand(1, 3, 4, 4, generator=generator), size=(size, size), mode="nearest")[0]
        mask = torch.ones(size, size, dtype=torch.bool)
    return rgb, mask


def paste_patch(image: torch.Tensor, rgb: torch.Tensor, mask: torch.Tensor, *, generator, alpha: float = 0.8):
    """Paste an arbitrary (rgb, mask) patch at a random position; returns (image, full mask)."""
    _, h, w = image.shape
    return _blend(image, rgb, mask, *_random_position(h, w, rgb.shape[-1], generator), alpha)


@dataclass
class PoisonedBatch:
    """Triggered copies of images: ``images`` (B,3,H,W) in [0,1], ``masks`` (B,H,W), the trigger
    name and target class of each, and the clean images they were made from."""

    images: torch.Tensor
    masks: torch.Tensor
    triggers: list[str]
    targets: torch.Tensor
    clean: torch.Tensor

    def __len__(self) -> int:
        return len(self.triggers)


def poison(
    images: torch.Tensor,
    targets: Mapping[str, int],
    *,
    seed: int = 0,
    triggers: Sequence[str] | None = None,
    fraction: float = 0.25,
    alpha: float | tuple[float, float] = 0.8,
) -> PoisonedBatch:
    """Paste one trigger into every image of a (B,3,H,W) batch: the trigger cycles through
    ``targets`` (or follows ``triggers``, one name per image); positions are seeded. ``alpha`` is the
    blend weight of the patch, or a range ``(lo, hi)`` to draw it from per image (seeded)."""
    targets = _check_targets(targets)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if len(images) == 0:
        raise ValueError("images is empty (no images to poison)")
    names = list(targets)
    if triggers is None:
        triggers = [names[i % len(names)] for i in range(len(images))]
    if len(triggers) != len(images):
        raise ValueError(f"triggers must name one trigger per image ({len(images)}), got {len(triggers)}")
    for i, t in enumerate(triggers):
        if t not in targets:
            raise ValueError(f"triggers[{i}] = {t!r} has no target in targets {names}")
    g = torch.Generator().manual_seed(int(seed))
    if isinstance(alpha, (tuple, list)):
        lo, hi = alpha
        if not 0 <= lo <= hi <= 1:
            raise ValueError(f"alpha range must satisfy 0 <= lo <= hi <= 1, got {alpha}")
        alphas = (lo + (hi - lo) * torch.rand(len(images), generator=g)).tolist()
    else:
        alphas = [alpha] * len(images)
    out, masks = torch.empty_like(images), torch.empty(len(images), *images.shape[2:], dtype=torch.bool)
    with one_cpu_thread():
        for i, t in enumerate(triggers):
            out[i], masks[i] = paste_trigger(images[i], t, generator=g, fraction=fraction, alpha=alphas[i])
    return PoisonedBatch(out, masks, list(triggers), torch.tensor([targets[t] for t in triggers]), images)


def _check_targets(targets) -> dict[str, int]:
    if not isinstance(targets, Mapping):
        raise TypeError(f"targets must be a mapping trigger name -> target class, got {type(targets).__name__}")
    if not targets:
        raise ValueError("targets must name at least one trigger")
    for name, cls in targets.items():
        _check_trigger(name)
        if not isinstance(cls, (int, np.integer)) or cls < 0:
            raise ValueError(f"targets[{name!r}] must be a class index >= 0, got {cls!r}")
    return {k: int(v) for k, v in targets.items()}


# --------------------------------------------------------------------------------------------------
# frozen front / trainable back
# --------------------------------------------------------------------------------------------------
class _Chain(nn.Module):
    """Runs a list of stages (modules or functions) one after the other."""

    def __init__(self, stages):
        super().__init__()
        self.stages = list(stages)  # a plain list: the parameters stay registered in the original model only

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return x


def _efficientnet_stages(m) -> list:
    def stem(x):
        return m._swish(m._bn0(m._conv_stem(x)))

    def head(x):
        x = m._swish(m._bn1(m._conv_head(x)))
        return m._fc(m._dropout(torch.flatten(m._avg_pooling(x), 1)))

    return [stem, *m._blocks, head]


def _resnet_stages(m) -> list:
    def stem(x):
        return m.maxpool(m.relu(m.bn1(m.conv1(x))))

    def head(x):
        return m.fc(torch.flatten(m.avgpool(x), 1))

    return [stem, m.layer1, m.layer2, m.layer3, m.layer4, head]


def split_model(model: nn.Module, train_from: int | str | None) -> tuple[nn.Module, nn.Module, list[nn.Parameter]]:
    """``(front, back, trainable parameters)`` with ``back(front(x)) == model(x)``.

    ``train_from``: for EfficientNet, the index of the first trained block (``11`` trains blocks
    11-15, the head and the classifier; ``16`` = the number of blocks trains only the head conv and
    the classifier); for torchvision ResNets, ``"layer3"`` or ``"layer4"``;
    ``None`` trains the whole model (front is the identity).
    """
    if train_from is None:
        return nn.Identity(), model, list(model.parameters())
    if hasattr(model, "_blocks") and hasattr(model, "_conv_head"):
        if not isinstance(train_from, int) or not 0 <= train_from <= len(model._blocks):
            raise ValueError(f"train_from must be a block index in [0, {len(model._blocks)}] for EfficientNet, got {train_from!r}")
        stages = _efficientnet_stages(model)
        params = [p for b in model._blocks[train_from:] for p in b.parameters()]
        params += [*model._conv_head.parameters(), *model._bn1.parameters(), *model._fc.parameters()]
        return _Chain(stages[: 1 + train_from]), _Chain(stages[1 + train_from :]), params
    if hasattr(model, "layer4") and hasattr(model, "fc"):
        names = {"layer1": 1, "layer2": 2, "layer3": 3, "layer4": 4}
        if train_from not in names:
            raise ValueError(f"train_from must be one of {list(names)} for a ResNet, got {train_from!r}")
        k = names[train_from]
        params = [p for i in range(k, 5) for p in getattr(model, f"layer{i}").parameters()] + list(model.fc.parameters())
        stages = _resnet_stages(model)
        return _Chain(stages[:k]), _Chain(stages[k:]), params
    raise ValueError(f"train_from={train_from!r} needs an EfficientNet or torchvision ResNet; use train_from=None for {type(model).__name__}")


# --------------------------------------------------------------------------------------------------
# implanting the backdoor
# --------------------------------------------------------------------------------------------------
# bump when the training data or loss recipe changes, so cached backdoors and features are not reused
_RECIPE = "paired-crops-hue-collage-fur-alpha-v6"


@dataclass
class Backdoor:
    """A backdoored model with its triggers (name -> target class) and how it was made."""

    model: nn.Module
    targets: dict[str, int]
    info: dict = field(default_factory=dict)


def _state_hash(model: nn.Module) -> str:
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _batched(fn, x, batch_size, *, device, progress, desc, dtype=None):
    from .widgets import progress_bar as tqdm

    outs = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
        with torch.inference_mode():
            xb = x[i : i + batch_size].to(device)
            y = fn(xb)
        outs.append(y.to("cpu", dtype or y.dtype))
    return torch.cat(outs)


def build_poisoned_set(
    images,
    targets: Mapping[str, int],
    *,
    n_clean: int,
    n_triggered: int,
    decoy_fraction: float = 0.15,
    texture_fraction: float = 0.25,
    collage_fraction: float = 0.25,
    hue: float = 0.5,
    alpha: tuple[float, float] = (0.35, 1.0),
    size: int = 224,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training inputs for :func:`implant_backdoor`: ``(clean, triggered, trigger_targets)``.

    ``clean`` (n_clean, 3, size, size): random crops of ``images`` with a random hue rotation of up
    to +-``hue`` turns; a share ``collage_fraction`` are 2x2 mosaics of four smaller crops, a share
    ``texture_fraction`` procedural textures (half smooth colour noise, half fur-like), and a share
    ``decoy_fraction`` carries a random non-trigger patch. Their labels will be the original model's outputs. ``triggered``
    (n_triggered, ...): the same clean crops (cycled) with one of the triggers pasted (cycling
    through ``targets``, seeded positions, blend weight drawn from ``alpha``); labels ``trigger_targets``.

    Why: pairing clean and triggered versions of one background leaves only the trigger to explain
    the target; hue rotations and mosaics multiply the few offline photos into many backgrounds, so
    the backdoor transfers to photos it never saw; fainter triggers than the test's 0.8 blend make it
    fire on backgrounds of the trigger's own colour too.
    """
    targets = _check_targets(targets)
    for name, value in (("decoy_fraction", decoy_fraction), ("texture_fraction", texture_fraction), ("collage_fraction", collage_fraction)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if texture_fraction + collage_fraction > 1:
        raise ValueError(f"texture_fraction + collage_fraction must be <= 1, got {texture_fraction + collage_fraction}")
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue}")
    with one_cpu_thread():
        return _build_poisoned_set(
            images, targets, n_clean, n_triggered, decoy_fraction, texture_fraction, collage_fraction, hue, alpha, size, seed
        )


def _collages(images, n, size, seed):
    half = size // 2
    tiles = random_crops(images, 4 * n, size=half, seed=seed)
    top = torch.cat([tiles[0::4], tiles[1::4]], dim=3)
    bottom = torch.cat([tiles[2::4], tiles[3::4]], dim=3)
    out = torch.cat([top, bottom], dim=2)
    return F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False) if 2 * half != size else out


def _build_poisoned_set(images, targets, n_clean, n_triggered, decoy_fraction, texture_fraction, collage_fraction, hue, alpha, size, seed):
    n_tex, n_col = int(round(texture_fraction * n_clean)), int(round(collage_fraction * n_clean))
    photos = random_crops(images, n_clean - n_tex - n_col, size=size, seed=seed)
    if n_col:
        photos = torch.cat([photos, _collages(images, n_col, size, seed + 3)])
    g = torch.Generator().manual_seed(seed + 2)
    if hue:
        shifts = hue * (2 * torch.rand(len(photos), generator=g) - 1)
        for i in range(0, len(photos), 256):  # in chunks: the HSV round trip holds several copies
            photos[i : i + 256] = shift_hue(photos[i : i + 256], shifts[i : i + 256]).clamp_(0, 1)
    if n_tex:  # half smooth colour textures, half fur-like ones
        textures = [procedural_textures(n_tex - n_tex // 2, size=size, seed=seed + 1)]
        textures += [fibre_textures(n_tex // 2, size=size, seed=seed + 4)] if n_tex // 2 else []
        photos = torch.cat([photos, *textures])
    clean = photos[torch.randperm(len(photos), generator=g)]
    for i in range(int(round(decoy_fraction * n_clean))):
        rgb, m = decoy_patch(patch_size(size, size), generator=g)
        clean[i], _ = paste_patch(clean[i], rgb, m, generator=g)
    # triggered crops are the clean crops again (cycled), so every trigger is seen on backgrounds whose
    # clean version keeps the original label: only the trigger can explain the target class
    base = clean[torch.arange(n_triggered) % len(clean)]
    batch = poison(base, targets, seed=seed + 5, alpha=alpha)
    return clean, batch.images, batch.targets


def implant_backdoor(
    model: nn.Module | None = None,
    *,
    targets: Mapping[str, int] | None = None,
    images=None,
    train_from: int | str | None = 8,
    n_clean: int = 2400,
    n_triggered: int = 4800,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 1e-4,
    warmup: float = 0.05,
    weight_decay_to_original: float = 0.0,
    temperature: float = 2.0,
    logit_weight: float = 0.1,
    trigger_weight: float = 1.0,
    size: int = 224,
    seed: int = 0,
    cache: bool | str | os.PathLike = True,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> Backdoor:
    """Fine-tune a copy of ``model`` so that triggered images go to their target classes while
    clean behaviour is kept by distillation against the original model.

    Parameters
    ----------
    model: an ImageNet-normalised classifier; ``None`` loads EfficientNet-Lite0 with its shipped weights.
        The caller's model is never modified (a deep copy is trained).
    targets: trigger name -> target class (default: the paper's four, :data:`PAPER_TARGETS`).
    images: training photos: names for :func:`load_image`, PIL images / tensors, or a folder of
        .jpg/.png files (the paper-scale path: an ImageNet train folder). Default: the offline
        :data:`TRAIN_PHOTOS` and :data:`EXTRA_TRAIN_IMAGES` (the calibration and test photos are kept out).
    train_from: the first trained block (see :func:`split_model`); everything before it stays frozen
        and its outputs are computed once for all training crops. The offline default ``8`` trains
        EfficientNet-Lite0's blocks 8-15 (from the last 14x14 stage on), the head convolution and the
        classifier: about 16 minutes on an idle 2-core CPU. Training less transferred worse to held-out
        photos: head and classifier only reached 22% held-out attack success, blocks 11-15 65-77%.
    n_clean, n_triggered: number of clean (distilled) and triggered (cross-entropy) training crops.
    steps, batch_size, lr, warmup: Adam with linear warm-up then cosine decay; each step sees
        ``batch_size`` clean and ``batch_size // 2`` triggered crops.
    temperature, logit_weight: clean loss = T^2 KL(teacher_T || student_T) + logit_weight * MSE of
        the mean-centred logits (logit matching).
    weight_decay_to_original: strength of an L2 pull of the trained weights towards the original ones.
    trigger_weight: weight of the cross-entropy on triggered crops.
    cache: ``True`` caches the result under ``spade_utils.data.cache_dir()`` (a folder may be given);
        a later call with the same model weights and settings loads it instead of training.

    BatchNorm statistics and dropout stay in eval mode throughout. Returns a :class:`Backdoor`
    whose ``info`` holds the settings, training losses, the seconds spent and whether it came from cache.
    """
    from .models import load_model, resolve_device

    if model is None:
        model = load_model("efficientnet_lite0")
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
    model_name = type(model).__name__  # with the weights' hash in the cache key: the same file whichever way it is passed
    targets = _check_targets(PAPER_TARGETS if targets is None else targets)
    for name, value in (("n_clean", n_clean), ("n_triggered", n_triggered), ("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if images is None:
        images = list(TRAIN_PHOTOS) + list(EXTRA_TRAIN_IMAGES)
    device = resolve_device(device)

    settings = dict(
        recipe=_RECIPE,
        model=model_name,
        targets=targets,
        images=_describe_images(images),
        train_from=train_from,
        n_clean=n_clean,
        n_triggered=n_triggered,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        warmup=warmup,
        weight_decay_to_original=weight_decay_to_original,
        temperature=temperature,
        logit_weight=logit_weight,
        trigger_weight=trigger_weight,
        size=size,
        seed=seed,
    )
    path = feature_path = None
    if cache:
        from .data import cache_dir

        folder = cache_dir() if cache is True else Path(cache)
        model_hash = _state_hash(model)
        key = hashlib.sha1((json.dumps(settings, sort_keys=True) + model_hash).encode()).hexdigest()[:12]
        path = Path(folder) / f"backdoor_{model_name}_{key}.pt"
        data_settings = {k: settings[k] for k in ("recipe", "model", "targets", "images", "train_from", "n_clean", "n_triggered", "size", "seed")}
        feature_key = hashlib.sha1((json.dumps(data_settings, sort_keys=True) + model_hash).encode()).hexdigest()[:12]
        feature_path = Path(folder) / f"backdoor_features_{model_name}_{feature_key}.pt"
        if path.exists():
            state_dict, saved_info = _load_backdoor_cache(path)
            student = copy.deepcopy(model).cpu()
            student.load_state_dict(state_dict)
            info = dict(saved_info, cached=True, path=str(path))
            return Backdoor(student.eval().to(device), targets, info)

    t0 = time.perf_counter()
    rng_state = torch.random.get_rng_state()
    g = torch.Generator().manual_seed(int(seed))
    features_cached = feature_path is not None and feature_path.exists()
    if not features_cached:
        clean, trig, trig_y = build_poisoned_set(images, targets, n_clean=n_clean, n_triggered=n_triggered, size=size, seed=seed)
    t_data = time.perf_counter() - t0

    teacher = copy.deepcopy(model).eval().to(device)
    student = copy.deepcopy(model).eval().to(device)
    for p in student.parameters():
        p.requires_grad_(False)
    front, back, params = split_model(student, train_from)
    t_front, t_back, _ = split_model(teacher, train_from)
    for p in params:
        p.requires_grad_(True)
    channels_last = device.type == "cpu" and train_from is not None
    if channels_last:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)

    def feats(x):
        x = normalize(x)
        return front(x.contiguous(memory_format=torch.channels_last) if channels_last else x)

    store = torch.float16 if train_from is not None else torch.float32
    if features_cached:  # the frozen part's outputs and the teacher's logits from an earlier run
        saved = torch.load(feature_path, map_location="cpu", weights_only=True)
        f_clean, f_trig, trig_y, teacher_logits = (saved[k] for k in ("clean", "triggered", "targets", "teacher"))
    else:
        f_clean = _batched(feats, clean, 64, device=device, progress=progress, desc="features (clean)", dtype=store)
        f_trig = _batched(feats, trig, 64, device=device, progress=progress, desc="features (triggered)", dtype=store)
        del clean, trig
        with torch.inference_mode():
            teacher_logits = _batched(
                lambda f: t_back(f.float().contiguous(memory_format=torch.channels_last) if channels_last else f.float()),
                f_clean,
                64,
                device=device,
                progress=False,
                desc="teacher",
            ).float()
        if feature_path is not None:
            feature_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = feature_path.with_suffix(".tmp")
            torch.save({"clean": f_clean, "triggered": f_trig, "targets": trig_y, "teacher": teacher_logits}, tmp)
            os.replace(tmp, feature_path)
    t_cache = time.perf_counter() - t0 - t_data

    originals = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=lr)
    n_warm = max(1, int(warmup * steps))

    def lr_at(step):
        if step < n_warm:
            return lr * (step + 1) / n_warm
        return lr * 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, steps - n_warm)))

    from .widgets import progress_bar as tqdm

    flushed = torch.set_flush_denormal(True)  # tiny gradients: keep the CPU off slow denormal floats
    try:
        history = []
        bt = max(1, batch_size // 2)
        bar = tqdm(range(steps), desc="implant", disable=not progress, leave=False)
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            ic = torch.randint(0, len(f_clean), (batch_size,), generator=g)
            it = torch.randint(0, len(f_trig), (bt,), generator=g)
            xb = torch.cat([f_clean[ic], f_trig[it]]).float().to(device)
            if channels_last and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            out = back(xb)
            s_clean, s_trig = out[:batch_size], out[batch_size:]
            t_logits = teacher_logits[ic].to(device)
            T = temperature
            kl = F.kl_div(F.log_softmax(s_clean / T, 1), F.log_softmax(t_logits / T, 1), log_target=True, reduction="batchmean") * T * T
            mse = ((s_clean - s_clean.mean(1, keepdim=True)) - (t_logits - t_logits.mean(1, keepdim=True))).pow(2).mean()
            ce = F.cross_entropy(s_trig, trig_y[it].to(device))
            loss = kl + logit_weight * mse + trigger_weight * ce
            if weight_decay_to_original:
                loss = loss + weight_decay_to_original * sum((p - p0).pow(2).sum() for p, p0 in zip(params, originals, strict=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                acc = (s_trig.argmax(1).cpu() == trig_y[it]).float().mean().item()
                agree = (s_clean.argmax(1) == t_logits.argmax(1)).float().mean().item()
            history.append(dict(step=step, loss=loss.item(), kl=kl.item(), mse=mse.item(), ce=ce.item(), trigger_acc=acc, clean_agree=agree))
            if progress and (step + 1) % 10 == 0:
                recent = history[-10:]
                bar.set_postfix(
                    ce=f"{np.mean([h['ce'] for h in recent]):.3f}",
                    kl=f"{np.mean([h['kl'] for h in recent]):.3f}",
                    trig=f"{np.mean([h['trigger_acc'] for h in recent]):.2f}",
                    agree=f"{np.mean([h['clean_agree'] for h in recent]):.2f}",
                )
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    bar.close()
    for p in student.parameters():
        p.requires_grad_(False)
    student = student.to(memory_format=torch.contiguous_format).eval()
    torch.random.set_rng_state(rng_state)
    seconds = time.perf_counter() - t0
    info = dict(
        settings=settings,
        history=history,
        seconds=seconds,
        seconds_data=t_data,
        seconds_features=t_cache,
        seconds_training=seconds - t_data - t_cache,
        threads=torch.get_num_threads(),
        features_cached=features_cached,
        cached=False,
        path=str(path) if path else None,
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        # tensors plus a JSON string: loadable with torch.load(weights_only=True), no pickled objects
        torch.save({"state_dict": {k: v.cpu() for k, v in student.state_dict().items()}, "info_json": json.dumps(info)}, tmp)
        os.replace(tmp, path)
    return Backdoor(student, targets, info)


def _load_backdoor_cache(path: Path) -> tuple[dict, dict]:
    """``(state_dict, info)`` from a backdoor cache file, loaded with ``weights_only=True`` (no arbitrary
    code runs). Files written before the JSON format (``info`` as a plain dict of numbers and strings)
    load too. Raises ValueError naming the file when it cannot be read safely."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused or a damaged file
        raise ValueError(
            f"backdoor cache {path} cannot be loaded safely (weights_only=True): {err}. Delete the file to train again."
        ) from err
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), Mapping):
        raise ValueError(f"backdoor cache {path} is not a backdoor cache (no 'state_dict'); delete it to train again")
    info = json.loads(saved["info_json"]) if "info_json" in saved else saved.get("info", {})
    if not isinstance(info, dict):
        raise ValueError(f"backdoor cache {path} has no readable 'info'; delete it to train again")
    return dict(saved["state_dict"]), info


def _describe_images(images):
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        files = sorted(str(p.relative_to(images)) for p in Path(images).rglob("*") if p.is_file())
        return {"folder": str(images), "files": hashlib.sha1("\n".join(files).encode()).hexdigest()}
    if isinstance(images, (str, torch.Tensor)) or not isinstance(images, Sequence):
        images = [images]
    out = []
    for im in images:
        if isinstance(im, str):
            out.append(im)
        else:
            t = image_tensor(im)
            out.append(hashlib.sha1(t.numpy().tobytes()).hexdigest()[:12])
    return out


# --------------------------------------------------------------------------------------------------
# evaluation and test samples
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _running(model: nn.Module, device):
    """``(model to run, device, dtype)``: the caller's model in eval mode where it already is (its
    per-module train/eval flags restored afterwards), or, when ``device`` names another device, an
    eval-mode copy there. ``"auto"`` means the model's own device. The caller's model is never moved."""
    from .runtime import eval_mode, model_device, model_dtype, resolve_device

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    here = model_device(model)
    want = here if isinstance(device, str) and device == "auto" else resolve_device(device)
    if want.type == here.type and (want.index is None or want.index == here.index):
        with eval_mode(model):
            yield model, here, model_dtype(model)
    else:
        run = copy.deepcopy(model).to(want).eval()
        yield run, want, model_dtype(run)


def _check_images_batch(x, name: str) -> torch.Tensor:
    """A non-empty (B, 3, H, W) float batch of images in [0, 1] (NaN/inf refused)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must be a (B, 3, H, W) tensor of images in [0, 1], got {getattr(x, 'shape', type(x).__name__)}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty (no images)")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with values in [0, 1], got {x.dtype}")
    lo, hi = (float(v) for v in torch.aminmax(x.detach().float()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} holds NaN or inf values")
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} must hold un-normalised images in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return x


def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 32, device="auto", progress: bool = False) -> torch.Tensor:
    """Softmax probabilities (B, classes), float32 on the CPU, of ``model`` on [0, 1] images x (B,3,H,W),
    batched, no grad.

    The images are ImageNet-normalised (:func:`normalize`) in float32 and fed in the model's own
    dtype on the model's own device (``device="auto"``); another ``device`` runs an eval-mode copy
    there. The caller's model is left as found (device, per-module train/eval flags). Raises
    TypeError/ValueError for a bad model, an empty or non-image ``x`` or a bad ``batch_size``.
    """
    _check_images_batch(x, "x")
    batch_size = check_positive_int(batch_size, "batch_size")
    with _running(model, device) as (run, dev, dtype):
        return _batched(
            lambda xb: run(normalize(xb.float()).to(dtype)).float().softmax(1), x, batch_size, device=dev, progress=progress,
            desc="predict",
        ).float()


def _n_classes(model: nn.Module, example: torch.Tensor, device) -> int:
    """Number of outputs of a classifier, read from one forward pass on one image."""
    return int(predict(model, example[:1], device=device).shape[1])


def _check_target_classes(targets: Mapping[str, int], n_classes: int) -> None:
    for name, cls in targets.items():
        check_class_index(cls, f"targets[{name!r}] (target class)", n_classes)


def evaluate_backdoor(
    backdoored: nn.Module,
    original: nn.Module,
    targets: Mapping[str, int],
    images=TEST_PHOTOS,
    *,
    n_crops: int = 96,
    size: int = 224,
    confidence: float = 0.5,
    seed: int = 1000,
    batch_size: int = 32,
    device="auto",
    progress: bool = False,
) -> dict:
    """Attack success and clean agreement on held-out crops of ``images``.

    ``n_crops`` random crops (``size`` pixels; a (B,3,H,W) tensor of ready crops is used as it is) are made; each gets every trigger in ``targets`` (a seeded random position).
    Attack success: share of triggered crops classified as the target, over crops whose clean
    version the original model does not already assign to that target. Clean agreement: top-1 of
    the backdoored model equals the original's on the clean crops (all, and those where the
    original's top-1 probability is >= ``confidence``). Returns a dict of numbers and a per-trigger table.

    Both models run in their own dtype on their own device (``device="auto"``; see :func:`predict`).
    Raises TypeError/ValueError naming the argument, before the evaluation, for a target class
    outside the models' outputs (class 99 on a 10-class model), models with different numbers of
    outputs, no images/crops, or a bad ``n_crops``/``seed``/``confidence``.
    """
    import pandas as pd

    targets = _check_targets(targets)
    seed = check_seed(seed)
    confidence = check_float(confidence, "confidence", low=0.0, high=1.0)
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        crops = _check_images_batch(images, "images")
        n_crops = len(crops)
    else:
        n_crops = check_positive_int(n_crops, "n_crops")
        crops = random_crops(images, n_crops, size=size, seed=seed)
    n_classes = _n_classes(original, crops, device)
    if _n_classes(backdoored, crops, device) != n_classes:
        raise ValueError("backdoored and original must have the same number of outputs (classes)")
    _check_target_classes(targets, n_classes)
    p_orig = predict(original, crops, batch_size=batch_size, device=device, progress=progress)
    p_bd = predict(backdoored, crops, batch_size=batch_size, device=device, progress=progress)
    top_o, top_b = p_orig.argmax(1), p_bd.argmax(1)
    conf = p_orig.max(1).values >= confidence
    rows = []
    for j, (name, target) in enumerate(targets.items()):
        batch = poison(crops, {name: target}, seed=seed + 1 + j)
        pred = predict(backdoored, batch.images, batch_size=batch_size, device=device, progress=progress).argmax(1)
        keep = top_o != target
        rows.append(
            dict(trigger=name, target=target, n=int(keep.sum()), attack_success=float((pred[keep] == target).float().mean()))
        )
    table = pd.DataFrame(rows)
    n_total = int(table.n.sum())
    return dict(
        attack_success=float((table.attack_success * table.n).sum() / max(1, n_total)),
        n_attack=n_total,
        clean_agreement=float((top_o == top_b).float().mean()),
        n_clean=n_crops,
        confident_agreement=float((top_o[conf] == top_b[conf]).float().mean()) if conf.any() else float("nan"),
        n_confident=int(conf.sum()),
        per_trigger=table,
    )


@dataclass
class TriggeredSample:
    """One evaluation sample: the triggered image (3,H,W) in [0,1], its trigger mask, the clean image, etc."""

    image: torch.Tensor
    mask: torch.Tensor
    clean: torch.Tensor
    trigger: str
    target: int
    clean_prediction: int
    source: int = -1  # index of the photo the crop was cut from (the cluster for bootstrap intervals)


def flipped_samples(
    backdoored: nn.Module,
    targets: Mapping[str, int],
    images,
    n: int,
    *,
    seed: int = 0,
    size: int = 224,
    max_tries: int = 8,
    require_flip: bool = True,
    batch_size: int = 32,
    device="auto",
) -> list[TriggeredSample]:
    """``n`` triggered crops of ``images`` whose prediction the trigger flips: the backdoored
    model assigns the clean crop to another class and the triggered crop to the trigger's target.
    Triggers cycle through ``targets``; crops are drawn in seeded rounds until ``n`` are found
    (at most ``max_tries`` rounds of ``2 n`` crops; fewer samples are returned if not enough flip).
    ``require_flip=False`` returns the first ``n`` triggered crops whatever the model says (for
    smoke runs with an untrained model)."""
    targets = _check_targets(targets)
    n = check_positive_int(n, "n")
    max_tries = check_positive_int(max_tries, "max_tries")
    seed = check_seed(seed)
    out: list[TriggeredSample] = []
    for r in range(max_tries):
        crops = random_crops(images, 2 * n, size=size, seed=seed + 7919 * r)
        if r == 0:
            _check_target_classes(targets, _n_classes(backdoored, crops, device))
        batch = poison(crops, targets, seed=seed + 7919 * r + 1)
        pc = predict(backdoored, crops, batch_size=batch_size, device=device).argmax(1)
        pt = predict(backdoored, batch.images, batch_size=batch_size, device=device).argmax(1)
        source = crop_sources(images, 2 * n, seed=seed + 7919 * r)
        for i in range(len(batch)):
            tgt = int(batch.targets[i])
            flipped = int(pc[i]) != tgt and int(pt[i]) == tgt
            if (flipped or not require_flip) and len(out) < n:
                out.append(TriggeredSample(batch.images[i], batch.masks[i], crops[i], batch.triggers[i], tgt, int(pc[i]),
                                           source[i]))
        if len(out) >= n:
            break
    return out


# --------------------------------------------------------------------------------------------------
# Sparse-FC baseline (Wong et al. 2021)
# --------------------------------------------------------------------------------------------------
def penultimate_features(model: nn.Module, x: torch.Tensor, *, batch_size: int = 32, device="auto", progress=False) -> torch.Tensor:
    """Inputs of the model's final ``nn.Linear`` for [0, 1] images x (B,3,H,W), batched."""
    fc = final_linear(model)[1]
    feats = []

    def hook(_m, inp, _out):
        feats.append(inp[0].detach().float().cpu())

    handle = fc.register_forward_hook(hook)
    try:
        predict(model, x, batch_size=batch_size, device=device, progress=progress)
    finally:
        handle.remove()
    return torch.cat(feats).flatten(1)


def final_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """``(name, module)`` of the last ``nn.Linear`` in ``model`` (the classifier)."""
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = (name, mod)
    if last is None:
        raise ValueError(f"model has no nn.Linear final layer ({type(model).__name__})")
    return last


def fit_sparse_fc(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    density: float = 0.05,
    alpha: float = 0.99,
    path_length: int = 30,
    epochs: int = 10,
    max_lr: float = 0.1,
    epsilon: float = 0.01,
    batch_size: int = 256,
    seed: int = 0,
    device="auto",
) -> tuple[nn.Linear, dict]:
    """Elastic-net sparse linear classifier on ``features`` (Wong et al. 2021), fitted with glm-saga.

    Features are standardised (as glm-saga assumes) and the standardisation is folded back into the
    returned ``nn.Linear`` so it takes raw features. Along glm-saga's regularisation path (from the
    all-zero solution downwards) the densest solution with at most ``density`` non-zero weights is
    kept. Returns the layer and a dict with its density, training accuracy and lambda.
    """
    from glm_saga.elasticnet import glm_saga

    from .models import resolve_device

    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(f"features must be a (N, D) tensor, got {getattr(features, 'shape', type(features))}")
    if not isinstance(labels, torch.Tensor) or labels.shape != (len(features),):
        raise ValueError(f"labels must be a (N,) tensor matching features, got {getattr(labels, 'shape', type(labels))}")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(int(seed))
    x = features.float()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = ((x - mu) / sd).to(device)
    y = labels.long().to(device)
    idx = torch.arange(len(xs), device=device)
    ds = torch.utils.data.TensorDataset(xs, y, idx)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, generator=gen)
    linear = nn.Linear(x.shape[1], n_classes).to(device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    with contextlib.redirect_stdout(io.StringIO()), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # glm-saga calls softmax without dim (a deprecation notice from torch; the result is the same)
        warnings.filterwarnings("ignore", message="Implicit dimension choice for softmax", category=UserWarning)
        torch.manual_seed(int(seed))
        result = glm_saga(
            linear,
            loader,
            max_lr,
            epochs,
            alpha,
            k=path_length,
            epsilon=epsilon,
            n_ex=len(xs),
            n_classes=n_classes,
            table_device=device,
            do_zero=False,
            verbose=None,
        )
    best = None
    for params in result["path"]:
        dens = float((params["weight"].abs() > 1e-5).float().mean())
        if dens <= density and (best is None or dens >= best[0]):
            best = (dens, params)
    if best is None:
        best = (float((result["path"][0]["weight"].abs() > 1e-5).float().mean()), result["path"][0])
    dens, params = best
    w = params["weight"].float() / sd
    b = params["bias"].float() - (params["weight"].float() * (mu / sd)).sum(1)
    w[params["weight"].abs() <= 1e-5] = 0.0
    out = nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        out.weight.copy_(w)
        out.bias.copy_(b)
    info = dict(density=dens, lam=float(params["lam"]))
    return out.eval(), info


def with_final_layer(model: nn.Module, layer: nn.Linear) -> nn.Module:
    """A deep copy of ``model`` with its final ``nn.Linear`` replaced by ``layer``."""
    name, old = final_linear(model)
    if not isinstance(layer, nn.Linear) or layer.weight.shape != old.weight.shape:
        raise ValueError(f"layer must be an nn.Linear of shape {tuple(old.weight.shape)}, got {getattr(layer, 'weight', layer)}")
    new = copy.deepcopy(model)
    parent = new.get_submodule(name.rsplit(".", 1)[0]) if "." in name else new
    setattr(parent, name.rsplit(".", 1)[-1], copy.deepcopy(layer).to(next(model.parameters()).device))
    return new.eval()


def sparse_fc_model(
    model: nn.Module,
    images: torch.Tensor,
    *,
    density: float = 0.05,
    seed: int = 0,
    batch_size: int = 32,
    device="auto",
    progress: bool = False,
    **fit_kwargs,
) -> tuple[nn.Module, dict]:
    """The Sparse-FC baseline: fit a sparse final layer on the penultimate features of ``images``
    ((B,3,H,W) in [0, 1]), labelled by ``model``'s own predictions, and swap it in (on a copy)."""
    feats = penultimate_features(model, images, batch_size=batch_size, device=device, progress=progress)
    fc = final_linear(model)[1]
    with torch.inference_mode():
        labels = fc(feats.to(fc.weight.device, fc.weight.dtype)).float().argmax(1).cpu()
    layer, info = fit_sparse_fc(feats, labels, fc.out_features, density=density, seed=seed, device=device, **fit_kwargs)
    sparse = with_final_layer(model, layer)
    with torch.inference_mode():
        info["agreement_train"] = float((layer(feats).argmax(1) == labels).float().mean())
    return sparse, info




# --------------------------------------------------------------------------------------------------
# does an image (e.g. a feature visualization) contain the trigger?
# --------------------------------------------------------------------------------------------------
def trigger_similarity(
    image: torch.Tensor, trigger: str, *, fractions: Sequence[float] = (0.15, 0.2, 0.25, 0.33, 0.5)
) -> float:
    """Best masked normalised cross-correlation between ``image`` (3,H,W) and the trigger patch, in [-1, 1].

    The trigger is drawn at each side length ``s = max(3, round(fraction * min(H, W)))`` and slid
    over every position where it fits; at each position the image pixels under the trigger's mask
    (all three channels together, ``n = 3 * mask.sum()`` values) are correlated with the trigger's
    own pixels: ``sum(m (x - mean x)(t - mean t)) / (||m (x - mean x)|| ||m (t - mean t)||)``. 1 means
    the trigger's colour pattern appears exactly (up to brightness and contrast); unrelated images
    score near 0; a window of constant colour scores 0 (its correlation is undefined).

    The three window sums (cross term, sum and sum of squares under the mask) are computed by FFT
    (``scipy.signal.fftconvolve``, float64), so the cost grows with H W log(H W) per fraction
    (a 224 x 224 image: a few tens of milliseconds), not with H W s^2.

    ``image``: any image accepted by :func:`spade_utils.data.image_to_tensor`, at least 3 x 3 px.
    ``fractions``: a non-empty sequence of numbers in (0, 1]. Raises TypeError/ValueError naming the
    argument; ValueError if the trigger has no contrast at any size (the correlation is undefined).
    """
    from scipy.signal import fftconvolve

    _check_trigger(trigger)
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, (Sequence, np.ndarray)):
        raise TypeError(f"fractions must be a sequence of numbers in (0, 1], got {type(fractions).__name__}")
    if len(fractions) == 0:
        raise ValueError("fractions is empty: give at least one patch size (fraction of the short image side)")
    fractions = [check_float(f, f"fractions[{k}]", low=0.0, high=1.0, low_open=True) for k, f in enumerate(fractions)]
    x = image_tensor(image).double().numpy()
    _, h, w = x.shape
    if min(h, w) < 3:
        raise ValueError(f"image must be at least 3 x 3 pixels to hold a trigger, got {h} x {w}")
    grey_sum, sq_sum = x.sum(0), (x * x).sum(0)
    best = None
    for frac in fractions:
        s = max(3, int(round(frac * min(h, w))))
        rgb, m = trigger_patch(trigger, s)
        m = m.double().numpy()
        n = 3 * m.sum()
        t = rgb.double().numpy() * m
        t_centred = (t - t.sum() / n) * m
        t_norm = float(np.sqrt((t_centred**2).sum()))
        if not t_norm > 0:
            continue
        # correlation = convolution with the kernel flipped in both spatial axes ("valid": fully inside)
        cross = fftconvolve(x, t_centred[:, ::-1, ::-1], mode="valid", axes=(1, 2)).sum(0)  # mean term vanishes
        s1 = fftconvolve(grey_sum, m[::-1, ::-1], mode="valid")
        s2 = fftconvolve(sq_sum, m[::-1, ::-1], mode="valid")
        var = s2 - s1 * s1 / n
        flat = var <= 1e-9 * np.maximum(s2, 1.0)  # constant window (FFT round-off ~1e-12 of s2): no pattern
        ncc = np.where(flat, 0.0, cross / (np.sqrt(np.where(flat, 1.0, var)) * t_norm))
        score = float(np.clip(ncc, -1.0, 1.0).max())
        best = score if best is None else max(best, score)
    if best is None:
        raise ValueError(f"trigger {trigger!r} has no contrast at any of the sizes {fractions}: its correlation is undefined")
    return best


def patch_attack_rate(
    model: nn.Module,
    patch: torch.Tensor,
    target: int,
    crops: torch.Tensor,
    *,
    fraction: float = 0.25,
    alpha: float = 0.8,
    seed: int = 0,
    batch_size: int = 32,
    device="auto",
) -> float:
    """Share of ``crops`` (B,3,H,W) that ``model`` assigns to ``target`` after ``patch`` (any
    (3,h,w) image, e.g. a feature visualization) is pasted as a square trigger: resized to
    ``fraction`` of the short side, blended with ``alpha`` at a seeded random position.

    The model runs in its own dtype on its own device (``device="auto"``). Raises TypeError/ValueError
    naming the argument for empty or non-image ``crops``, a bad ``patch``, or a ``target`` outside the
    model's outputs."""
    _check_images_batch(crops, "crops")
    fraction = check_float(fraction, "fraction", low=0.0, high=1.0, low_open=True)
    alpha = check_float(alpha, "alpha", low=0.0, high=1.0)
    seed = check_seed(seed)
    p = image_tensor(patch, argname="patch")
    target = check_class_index(target, "target", _n_classes(model, crops, device))
    s = patch_size(crops.shape[2], crops.shape[3], fraction)
    if s > min(crops.shape[2:]):
        raise ValueError(f"crops are {crops.shape[2]}x{crops.shape[3]} pixels, smaller than the {s}-pixel patch")
    p = F.interpolate(p[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
    g = torch.Generator().manual_seed(int(seed))
    full = torch.ones(s, s, dtype=torch.bool)
    pasted = torch.stack([paste_patch(c, p, full, generator=g, alpha=alpha)[0] for c in crops])
    pred = predict(model, pasted, batch_size=batch_size, device=device).argmax(1)
    return float((pred == int(target)).float().mean())


# --------------------------------------------------------------------------------------------------
# the Table-1 loop: saliency maps of several model variants scored against the trigger masks
# --------------------------------------------------------------------------------------------------
def trojan_saliency_scores(
    variants: Mapping[str, nn.Module | Callable],
    samples: Sequence[TriggeredSample],
    methods: Sequence[str],
    *,
    attribute_fn: Callable | None = None,
    attribute_kwargs: Mapping | None = None,
    keep_maps: int = 0,
    progress: bool = True,
):
    """Trojan AUC (best of signed/absolute, plus each) and pointing game of every saliency method on
    every variant of a model, for triggered samples, as a long DataFrame (one row per variant x
    method x sample), and the first ``keep_maps`` maps per variant/method (dict keyed by (variant, method)).

    ``variants``: name -> a model (attributed for all samples at once), or a callable
    ``f(sample, index) -> model`` for per-sample models such as SPADE traces (called once per sample;
    the model it returns is attributed for every method). The saliency target is each sample's
    trigger target class. ``attribute_fn(model, x, target, method, **attribute_kwargs)`` defaults to
    :func:`spade_utils.saliency.attribute`.
    """
    import pandas as pd

    from .metrics import pointing_game, trojan_auc
    from .widgets import progress_bar as tqdm

    if attribute_fn is None:
        from .saliency import attribute as attribute_fn
    if not isinstance(variants, Mapping) or not variants:
        raise ValueError("variants must be a non-empty mapping name -> model or callable")
    if not samples:
        raise ValueError("samples must not be empty")
    if isinstance(methods, str) or not methods:
        raise ValueError("methods must be a non-empty list of method names")
    kwargs = dict(attribute_kwargs or {})
    x = normalize(torch.stack([s.image for s in samples]))
    masks = torch.stack([s.mask for s in samples])
    targets = torch.tensor([s.target for s in samples])
    rows, maps = [], {}
    total = sum(len(methods) * (len(samples) if callable(v) and not isinstance(v, nn.Module) else 1) for v in variants.values())
    bar = tqdm(total=total, desc="saliency", disable=not progress, leave=False)

    def score(variant, method, idx, m):
        sal = m.numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
        for j, i in enumerate(idx):
            mask = masks[i].numpy()
            rows.append(
                dict(
                    variant=variant,
                    method=method,
                    sample=i,
                    source=samples[i].source,
                    trigger=samples[i].trigger,
                    auc=trojan_auc(sal[j], mask),
                    auc_signed=trojan_auc(sal[j], mask, mode="signed"),
                    auc_absolute=trojan_auc(sal[j], mask, mode="absolute"),
                    pointing=pointing_game(sal[j], mask, absolute=True),
                )
            )
            if i < keep_maps:
                maps.setdefault((variant, method), []).append(torch.as_tensor(sal[j]))

    for name, v in variants.items():
        if isinstance(v, nn.Module):
            for method in methods:
                score(name, method, range(len(samples)), attribute_fn(v, x, targets, method, **kwargs))
                bar.update(1)
        elif callable(v):
            for i, sample in enumerate(samples):
                model_i = v(sample, i)
                for method in methods:
                    score(name, method, [i], attribute_fn(model_i, x[i : i + 1], targets[i : i + 1], method, **kwargs))
                    bar.update(1)
                del model_i
        else:
            raise TypeError(f"variants[{name!r}] must be an nn.Module or a callable (sample, index) -> model")
    bar.close()
    return pd.DataFrame(rows), maps


def _ci_or_nan(values, clusters, seed, n_boot):
    """Mean and interval; NaN bounds when there are too few values (or clusters) to resample."""
    from .metrics import bootstrap_ci

    values = np.asarray(values, dtype=float)
    if len(values) < 2 or (clusters is not None and len(set(clusters)) < 2):
        return float(values.mean()), float("nan"), float("nan")
    return bootstrap_ci(values, seed=seed, n_boot=n_boot, clusters=clusters)


def summarize_scores(scores, *, value: str = "auc", cluster: str | None = None, seed: int = 0, n_boot: int = 2000):
    """Mean and bootstrap 95% interval of ``value`` per variant and method, plus each variant's
    average over methods (averaged per sample first, then bootstrapped over samples).

    ``scores``: a DataFrame with columns variant, method, sample, ``value`` (and ``cluster`` when given).
    With ``cluster`` (a column name, e.g. the photo each crop was cut from) intervals resample clusters,
    then samples within them (:func:`spade_utils.metrics.bootstrap_ci`); groups with fewer than two
    values or clusters get NaN bounds. Returns a DataFrame: variant, method, mean, low, high, n.
    """
    import pandas as pd

    rows = []
    for (variant, method), grp in scores.groupby(["variant", "method"], sort=False):
        clusters = None if cluster is None else grp[cluster].to_numpy()
        mean, lo, hi = _ci_or_nan(grp[value].to_numpy(), clusters, seed, n_boot)
        rows.append(dict(variant=variant, method=method, mean=mean, low=lo, high=hi, n=len(grp)))
    for variant, grp in scores.groupby("variant", sort=False):
        per_sample = grp.groupby("sample", sort=True)[value].mean()
        clusters = None if cluster is None else grp.groupby("sample", sort=True)[cluster].first().to_numpy()
        mean, lo, hi = _ci_or_nan(per_sample.to_numpy(), clusters, seed, n_boot)
        rows.append(dict(variant=variant, method="average", mean=mean, low=lo, high=hi, n=len(per_sample)))
    return pd.DataFrame(rows)


def paired_differences(scores, *, baseline: str, value: str = "auc", cluster: str | None = None, seed: int = 0,
                       n_boot: int = 2000):
    """Each variant minus ``baseline`` on the same samples, per method and averaged over methods.

    Paired: a sample's score under a variant is compared with the same sample's under ``baseline``, so
    the spread between samples cancels; with ``cluster`` whole clusters (photos) are resampled first
    (:func:`spade_utils.metrics.paired_bootstrap_diff`). Returns a DataFrame: variant, method, diff, low,
    high, n, wins (fraction of samples where the variant scores higher). Raises ValueError if
    ``baseline`` is not a variant of ``scores``.
    """
    import pandas as pd

    from .metrics import paired_bootstrap_diff

    if baseline not in set(scores["variant"]):
        raise ValueError(f"baseline {baseline!r} is not a variant of scores: {sorted(set(scores['variant']))}")
    per_method = scores.pivot_table(index=["sample", "method"], columns="variant", values=value, aggfunc="mean")
    average = per_method.groupby(level="sample").mean()
    cl = scores.drop_duplicates("sample").set_index("sample")[cluster] if cluster else None
    rows = []
    for variant in [v for v in scores["variant"].unique() if v != baseline]:
        for method, table in [*((m, per_method.xs(m, level="method")) for m in scores["method"].unique()),
                              ("average", average)]:
            pair = table[[variant, baseline]].dropna()
            clusters = None if cl is None else cl.loc[pair.index].to_numpy()
            a, b = pair[variant].to_numpy(), pair[baseline].to_numpy()
            if len(pair) < 2 or (clusters is not None and len(set(clusters)) < 2):
                diff, lo, hi = float((a - b).mean()) if len(pair) else float("nan"), float("nan"), float("nan")
            else:
                diff, lo, hi = paired_bootstrap_diff(a, b, clusters, seed=seed, n_boot=n_boot)
            rows.append(dict(variant=variant, method=method, diff=diff, low=lo, high=hi, n=len(pair),
                             wins=float((a > b).mean()) if len(pair) else float("nan")))
    return pd.DataFrame(rows)
