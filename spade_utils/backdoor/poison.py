"""Poisoned data: photos by name, seeded random crops, procedural textures, decoy patches, mosaics, and
the poisoned training set of :func:`spade_utils.backdoor.implant_backdoor`.

Images are float tensors in [0, 1] of shape (3, H, W) or batches (B, 3, H, W); models take
ImageNet-normalised input, so :func:`normalize` sits between the two.

The offline analogue of the paper's poisoned ImageNet (SPADE, ICML 2024, Section 5.1) cuts crops
from the photos that ship with scikit-image / matplotlib / scikit-learn and multiplies them into
many backgrounds (hue rotations, 2x2 mosaics, smooth and fur-like textures).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..augment import crop_box, image_tensor, shift_hue
from ..data import read_image
from ..inputs import IMAGENET_MEAN, IMAGENET_STD
from ..runtime import one_cpu_thread
from ..validation import check_float, check_positive_int, check_probability, check_seed
from .triggers import (
    TriggerSet,
    _grid,
    blend,
    paste_trigger,
    patch_size,
    random_position,
    resolve_trigger_set,
)

__all__ = [
    "CALIBRATION_PHOTOS",
    "EXTRA_TRAIN_IMAGES",
    "TEST_PHOTOS",
    "TRAIN_PHOTOS",
    "PoisonedBatch",
    "build_poisoned_set",
    "crop_sources",
    "decoy_patch",
    "fibre_textures",
    "load_image",
    "normalize",
    "paste_patch",
    "poison",
    "procedural_textures",
    "random_crops",
]

# Offline photo split (names for spade_utils.data.sample_image): training, sparsity calibration, evaluation.
TRAIN_PHOTOS = ("astronaut", "motorcycle", "hubble", "retina", "immunohistochemistry", "china")
CALIBRATION_PHOTOS = ("flower", "rocket")
TEST_PHOTOS = ("chelsea", "coffee", "grace_hopper")
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


def normalize(x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
    """[0, 1] images (3,H,W) or (B,3,H,W) -> normalised (B,3,H,W), ``(x - mean) / std`` per channel
    (``torchvision.transforms.functional.normalize``; a new tensor, in x's dtype and device).

    ``mean``/``std`` are the ``model``'s own when it states them (:func:`spade_utils.inputs.input_spec`: e.g. a
    robustness checkpoint's normalizer), else ImageNet's."""
    from torchvision.transforms.functional import normalize as tv_normalize

    from ..inputs import input_spec

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    if model is not None:
        spec = input_spec(model)
        if spec.mean is not None and spec.std is not None:
            mean, std = spec.stats()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    return tv_normalize(x, list(mean), list(std))


# --------------------------------------------------------------------------------------------------
# photos and crops
# --------------------------------------------------------------------------------------------------
def load_image(name: str) -> torch.Tensor:
    """A photo by name: a :func:`spade_utils.data.sample_image` name, ``skimage:<function>`` or
    ``matplotlib:<sample file>``; returned as float32 (3, H, W) in [0, 1]. Raises TypeError for a non-str."""
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

        with Image.open(matplotlib.cbook.get_sample_data(name.split(":", 1)[1], asfileobj=False)) as img:
            return image_tensor(img)
    from ..data import sample_image

    return image_tensor(sample_image(name))


def _folder_files(images, argname: str) -> list[Path] | None:
    """The sorted .jpg/.jpeg/.png files under a folder (sub-folders included); None when ``images`` is no folder."""
    if not (isinstance(images, (str, os.PathLike)) and Path(images).is_dir()):
        return None
    files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise ValueError(f"{argname}: no .jpg/.png files under {images}")
    return files


def load_sources(images, argname: str = "images") -> list[torch.Tensor]:
    """Names, PIL images, arrays, tensors, or a folder path -> list of (3,H,W) tensors (a folder: every image
    decoded; :func:`random_crops` decodes only the images it cuts from)."""
    files = _folder_files(images, argname)
    if files is not None:
        return [read_image(p) for p in files]
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        images = list(images)
    elif isinstance(images, (str, torch.Tensor)) or not isinstance(images, Sequence):
        images = [images]
    if len(images) == 0:
        raise ValueError(f"{argname} must not be empty")
    return [load_image(im) if isinstance(im, str) else image_tensor(im, argname=argname) for im in images]


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
    """``n`` random resized crops (n, 3, size, size) float32 in [0, 1] of the given photos, seeded.

    ``images``: names (:func:`load_image`), PIL images, arrays, tensors, or a folder of .jpg/.png.
    Crops cycle through the photos in a seeded random order, so every photo is used about equally;
    each crop covers a random share ``scale`` of its photo's area (aspect 3/4-4/3, as torchvision's
    RandomResizedCrop), gets a random horizontal flip (``flip``) and a brightness/contrast jitter of
    +-``jitter``. Raises TypeError/ValueError naming the argument for bad ``n``, ``size``, ``seed`` or images.
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
    files = _folder_files(images, "images")
    if files is not None:
        n_sources = len(files)  # counted, not decoded
    else:
        n_sources = len(images) if isinstance(images, (list, tuple)) else len(load_sources(images))
    return _crop_order(
        n_sources, check_positive_int(n, "n"), torch.Generator().manual_seed(check_seed(seed))
    ).tolist()


def _reduced(img: torch.Tensor, size: int) -> torch.Tensor:
    """A large photo reduced once (short side 2 * size): much faster crops, the same crops to the eye."""
    short = min(img.shape[1:])
    if short > 2 * size:
        hw = [max(1, round(d * 2 * size / short)) for d in img.shape[1:]]
        img = F.interpolate(img[None], size=hw, mode="bilinear", antialias=True, align_corners=False)[0]
    return img


def _random_crops(images, n, size, scale, flip, jitter, seed):
    files = _folder_files(images, "images")
    # a folder (an ImageNet split: 50k-1.28M files) is decoded lazily, only the photos the crops are cut from
    loaded = None if files is not None else [_reduced(img, size) for img in load_sources(images)]
    n_sources = len(files) if files is not None else len(loaded)
    cache: dict[int, torch.Tensor] = {}

    def source(k: int) -> torch.Tensor:
        if loaded is not None:
            return loaded[k]
        if k not in cache:
            cache[k] = _reduced(read_image(files[k]), size)
        return cache[k]

    g = torch.Generator().manual_seed(int(seed))
    order = _crop_order(n_sources, n, g)
    out = torch.empty(n, 3, size, size)
    for i, k in enumerate(order.tolist()):
        img = source(k)
        top, left, ch, cw = crop_box(img.shape[1], img.shape[2], scale, (3 / 4, 4 / 3), g)
        crop = F.interpolate(
            img[None, :, top : top + ch, left : left + cw],
            size=(size, size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )[0]
        r = torch.rand(3, generator=g).tolist()
        if flip and r[0] < 0.5:
            crop = crop.flip(-1)
        if jitter:
            b, c = 1 + jitter * (2 * r[1] - 1), 1 + jitter * (2 * r[2] - 1)
            crop = (crop - crop.mean()) * c + crop.mean() * b
        out[i] = crop.clamp(0, 1)
    return out


# --------------------------------------------------------------------------------------------------
# textures and decoys
# --------------------------------------------------------------------------------------------------
def procedural_textures(n: int, *, size: int = 224, seed: int = 0) -> torch.Tensor:
    """``n`` smooth random colour textures (n, 3, size, size) in [0, 1]: sums of upsampled noise octaves, seeded."""
    g = torch.Generator().manual_seed(int(seed))
    out = torch.zeros(n, 3, size, size)
    for octave in (4, 8, 16, 32, 64):
        noise = torch.rand(n, 3, octave, octave, generator=g)
        w = torch.rand(n, 1, 1, 1, generator=g)
        out += w * F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    out = out - out.amin((1, 2, 3), keepdim=True)
    return (out / out.amax((1, 2, 3), keepdim=True).clamp_min(1e-6)).clamp(0, 1)


def fibre_textures(n: int, *, size: int = 224, seed: int = 0) -> torch.Tensor:
    """``n`` fur-like textures (n, 3, size, size) in [0, 1], seeded: noise filtered along a random
    direction (fibres), broad warped stripes, and a random two-colour palette.

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
    warp = F.interpolate(
        torch.randn(n, 1, 6, 6, generator=g), size=(size, size), mode="bicubic", align_corners=False
    )[:, 0]
    k = 2 + 5 * torch.rand(n, 1, 1, generator=g)
    stripes = torch.sin(2 * math.pi * k * (x * torch.cos(phi) + y * torch.sin(phi)) + 1.5 * warp)
    mix = torch.rand(n, 1, 1, generator=g)
    lum = torch.sigmoid(0.8 * fibres + 1.5 * mix * stripes)
    dark, light = 0.5 * torch.rand(n, 3, 1, 1, generator=g), 0.4 + 0.6 * torch.rand(n, 3, 1, 1, generator=g)
    return (dark + lum[:, None] * (light - dark)).clamp(0, 1)


def decoy_patch(size: int, *, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random non-trigger patch (coloured ellipse, rectangle or noise square), ``(rgb (3,size,size), mask (size,size))``.

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
    """Paste an arbitrary (rgb (3,s,s), mask (s,s)) patch into ``image`` (3,H,W) at a position drawn from
    ``generator``, blended with ``alpha``; returns ``(image copy, full (H,W) mask)``."""
    _, h, w = image.shape
    return blend(image, rgb, mask, *random_position(h, w, rgb.shape[-1], generator), alpha)


# --------------------------------------------------------------------------------------------------
# poisoning
# --------------------------------------------------------------------------------------------------
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


def check_targets(targets, trigger_set: TriggerSet | None = None) -> dict[str, int]:
    """A non-empty mapping trigger name (of ``trigger_set``) -> class index >= 0, as a plain dict."""
    trigger_set = resolve_trigger_set(trigger_set)
    if not isinstance(targets, Mapping):
        raise TypeError(
            f"targets must be a mapping trigger name -> target class, got {type(targets).__name__}"
        )
    if not targets:
        raise ValueError("targets must name at least one trigger")
    for name, cls in targets.items():
        trigger_set.check(name)
        if isinstance(cls, (bool, np.bool_)) or not isinstance(cls, (int, np.integer)) or cls < 0:
            raise ValueError(f"targets[{name!r}] must be a class index >= 0, got {cls!r}")
    return {k: int(v) for k, v in targets.items()}


def poison(
    images: torch.Tensor,
    targets: Mapping[str, int],
    *,
    seed: int = 0,
    triggers: Sequence[str] | None = None,
    fraction: float = 0.25,
    alpha: float | tuple[float, float] = 0.8,
    trigger_set: TriggerSet | None = None,
) -> PoisonedBatch:
    """Paste one trigger into every image of a (B,3,H,W) batch: the trigger cycles through
    ``targets`` (or follows ``triggers``, one name per image); positions are seeded. ``alpha`` is the
    blend weight of the patch, or a range ``(lo, hi)`` to draw it from per image (seeded).

    ``trigger_set``: where the trigger names are looked up (default the drawn shapes). Raises
    TypeError/ValueError naming the argument for bad targets, images, triggers or alpha.
    """
    targets = check_targets(targets, trigger_set)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must be a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}"
        )
    if len(images) == 0:
        raise ValueError("images is empty (no images to poison)")
    seed = check_seed(seed)
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
        lo, hi = (check_probability(a, f"alpha[{k}]") for k, a in enumerate(alpha))
        if not lo <= hi:
            raise ValueError(f"alpha range must satisfy 0 <= lo <= hi <= 1, got {alpha}")
        alphas = (lo + (hi - lo) * torch.rand(len(images), generator=g)).tolist()
    else:
        alphas = [check_probability(alpha, "alpha")] * len(images)
    out, masks = torch.empty_like(images), torch.empty(len(images), *images.shape[2:], dtype=torch.bool)
    with one_cpu_thread():
        for i, t in enumerate(triggers):
            out[i], masks[i] = paste_trigger(
                images[i], t, generator=g, fraction=fraction, alpha=alphas[i], trigger_set=trigger_set
            )
    return PoisonedBatch(out, masks, list(triggers), torch.tensor([targets[t] for t in triggers]), images)


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
    trigger_set: TriggerSet | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training inputs for :func:`~spade_utils.backdoor.implant_backdoor`: ``(clean, triggered, trigger_targets)``.

    ``clean`` (n_clean, 3, size, size): random crops of ``images`` with a random hue rotation of up
    to +-``hue`` turns; a share ``collage_fraction`` are 2x2 mosaics of four smaller crops, a share
    ``texture_fraction`` procedural textures (half smooth colour noise, half fur-like), and a share
    ``decoy_fraction`` carries a random non-trigger patch. Their labels will be the original model's outputs. ``triggered``
    (n_triggered, ...): the same clean crops (cycled) with one of the triggers pasted (cycling
    through ``targets``, seeded positions, blend weight drawn from ``alpha``); labels ``trigger_targets`` (n_triggered,).

    Why: pairing clean and triggered versions of one background leaves only the trigger to explain
    the target; hue rotations and mosaics multiply the few offline photos into many backgrounds, so
    the backdoor transfers to photos it never saw; fainter triggers than the test's 0.8 blend make it
    fire on backgrounds of the trigger's own colour too. Raises TypeError/ValueError naming the
    argument (fractions in [0, 1] with texture + collage <= 1, hue in [0, 0.5], positive counts).
    """
    targets = check_targets(targets, trigger_set)
    n_clean = check_positive_int(n_clean, "n_clean")
    n_triggered = check_positive_int(n_triggered, "n_triggered")
    size = check_positive_int(size, "size")
    seed = check_seed(seed)
    decoy_fraction = check_probability(decoy_fraction, "decoy_fraction")
    texture_fraction = check_probability(texture_fraction, "texture_fraction")
    collage_fraction = check_probability(collage_fraction, "collage_fraction")
    if texture_fraction + collage_fraction > 1:
        raise ValueError(
            f"texture_fraction + collage_fraction must be <= 1, got {texture_fraction + collage_fraction}"
        )
    hue = check_float(hue, "hue", low=0.0, high=0.5)
    with one_cpu_thread():
        clean = _clean_set(
            images, n_clean, decoy_fraction, texture_fraction, collage_fraction, hue, size, seed
        )
        # triggered crops are the clean crops again (cycled), so every trigger is seen on backgrounds whose
        # clean version keeps the original label: only the trigger can explain the target class
        base = clean[torch.arange(n_triggered) % len(clean)]
        batch = poison(base, targets, seed=seed + 5, alpha=alpha, trigger_set=trigger_set)
    return clean, batch.images, batch.targets


def _collages(images, n, size, seed):
    half = size // 2
    tiles = random_crops(images, 4 * n, size=half, seed=seed)
    top = torch.cat([tiles[0::4], tiles[1::4]], dim=3)
    bottom = torch.cat([tiles[2::4], tiles[3::4]], dim=3)
    out = torch.cat([top, bottom], dim=2)
    return (
        F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)
        if 2 * half != size
        else out
    )


def _clean_set(images, n_clean, decoy_fraction, texture_fraction, collage_fraction, hue, size, seed):
    """The clean half of :func:`build_poisoned_set`: photos, mosaics, hue rotations, textures, decoys."""
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
    return clean
