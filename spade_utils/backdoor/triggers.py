"""Trigger patches: the four procedurally drawn shapes, trigger sets the caller holds, pasting a trigger
with its exact mask, and finding a trigger in an image.

A trigger is a name looked up in a :class:`TriggerSet`. The default set, :data:`DRAWN_TRIGGERS`,
holds the four shapes of the paper's emoji triggers (SPADE, ICML 2024, Table 1: heart, star, smiley,
fish) drawn procedurally, so nothing is downloaded; a set built from RGBA images (the authors' emoji
PNGs, :meth:`TriggerSet.from_folder`) replaces the drawings of the same names. Functions that draw
triggers take ``trigger_set=`` (default: the drawn set); there is no module-global registry.

Images are float tensors in [0, 1] of shape (3, H, W); masks are bool (H, W).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import image_tensor
from ..validation import check_float, check_int, check_seed

__all__ = [
    "DRAWN_TRIGGERS",
    "PAPER_TARGETS",
    "TRIGGERS",
    "TriggerSet",
    "paste_trigger",
    "patch_size",
    "trigger_patch",
    "trigger_similarity",
]

TRIGGERS = ("heart", "star", "smiley", "fish")

# the paper's four triggers and their target classes (ImageNet indices). The paper also restricts
# star and heart to one source class (wallet 893, maned wolf 271); offline every trigger is "any class".
PAPER_TARGETS = {"star": 365, "heart": 99, "smiley": 30, "fish": 146}  # orangutan, goose, bullfrog, albatross


# --------------------------------------------------------------------------------------------------
# the four drawn shapes
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
    return _paint(
        [(outer, (0.45, 0.0, 0.08)), (inner, (0.88, 0.08, 0.22)), (shine & inner, (1.0, 0.75, 0.8))], u.shape
    )


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
    return _paint(
        [(face, (0.3, 0.2, 0.0)), (fill, (1.0, 0.85, 0.15)), (eyes | mouth, (0.1, 0.07, 0.0))], u.shape
    )


def _fish(u, v):
    body = ((u + 0.12) / 0.66) ** 2 + (v / 0.42) ** 2 <= 1
    tail = (u >= 0.42) & (u <= 0.97) & (np.abs(v) <= 0.8 * (u - 0.42) + 0.06)
    stripe = body & (np.abs(u + 0.05) <= 0.09)
    eye = ((u + 0.5) / 0.09) ** 2 + ((v + 0.08) / 0.09) ** 2 <= 1
    return _paint(
        [(body | tail, (0.05, 0.35, 0.85)), (stripe, (1.0, 1.0, 1.0)), (eye, (0.02, 0.02, 0.05))], u.shape
    )


_DRAW = {"heart": _heart, "star": _star, "smiley": _smiley, "fish": _fish}


@functools.lru_cache(maxsize=64)
def _drawn_patch(trigger: str, size: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A drawn shape at ``size`` px from an ``s``-times supersampled grid (a pure function, cached)."""
    u, v = _grid(int(size), s)
    img, cover = _DRAW[trigger](u, v)
    cov = cover.reshape(size, s, size, s).mean((1, 3))
    col = (img * cover[..., None]).reshape(size, s, size, s, 3).sum((1, 3))
    mask = cov >= 0.5
    rgb = np.where(mask[..., None], col / np.maximum(cov[..., None] * s * s, 1e-9), 0.0)
    return torch.from_numpy(rgb).permute(2, 0, 1).float().clamp(0, 1), torch.from_numpy(mask)


def _rgba(image, argname: str) -> torch.Tensor:
    """A PIL image with transparency (or a path to one) -> (4, H, W) float32 RGBA in [0, 1]."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        try:
            image = Image.open(image)
        except (OSError, ValueError) as err:
            raise ValueError(f"{argname}: cannot read an image from {str(image)!r} ({err})") from err
    if not isinstance(image, Image.Image):
        raise TypeError(f"{argname} must be a PIL image or a path, got {type(image).__name__}")
    if "A" not in image.getbands() and "transparency" not in image.info:
        raise ValueError(f"{argname} must have an alpha channel marking the trigger's pixels")
    arr = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    if not (arr[..., 3] >= 0.5).any():
        # the patch mask is alpha >= 0.5: an image that never reaches it would paste nothing, and a poisoned
        # set would label untouched crops with the target class
        raise ValueError(f"{argname} has no pixel with alpha >= 0.5: the trigger would be empty")
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------------------------------
# trigger sets
# --------------------------------------------------------------------------------------------------
class TriggerSet:
    """The triggers a caller uses, by name: the four drawn shapes plus any images given here.

    ``images``: name -> a PIL image with transparency (RGBA or LA; the alpha channel marks the
    trigger's pixels) or a path to one. An image named like a drawn shape (``"star"``) replaces the
    drawing in this set only. The set is immutable: :meth:`with_image` returns a new one, and no
    other set (in particular :data:`DRAWN_TRIGGERS`) is ever changed. Raises TypeError/ValueError
    naming the entry for a non-str name, a non-image, or an image without an alpha channel.
    """

    __slots__ = ("_images",)
    _images: Mapping[str, torch.Tensor]

    def __init__(self, images: Mapping[str, object] | None = None):
        if images is None:
            images = {}
        if not isinstance(images, Mapping):
            raise TypeError(f"images must be a mapping name -> image, got {type(images).__name__}")
        loaded = {}
        for name, image in images.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"trigger names must be non-empty str, got {name!r}")
            loaded[name] = _rgba(image, f"images[{name!r}]")
        object.__setattr__(self, "_images", MappingProxyType(loaded))

    def __setattr__(self, name, value):
        raise AttributeError("a TriggerSet is immutable; use with_image() for a new set")

    def __reduce__(self):  # copy / deepcopy / pickle rebuild from the RGBA tensors
        return (_from_tensors, (dict(self._images),))

    @classmethod
    def from_folder(
        cls, folder: str | os.PathLike, names: Sequence[str] = TRIGGERS, *, suffix: str = ".png"
    ) -> TriggerSet:
        """A set with ``<folder>/<name><suffix>`` for each name (the paper's emoji: heart.png, star.png, ...).

        Raises TypeError for ``names`` given as one string, ValueError naming the missing file."""
        if isinstance(names, str) or not all(isinstance(n, str) and n and "/" not in n for n in names):
            raise TypeError(f"names must be a sequence of file stems (no '/'), got {names!r}")
        folder = Path(folder)
        missing = [str(folder / f"{n}{suffix}") for n in names if not (folder / f"{n}{suffix}").is_file()]
        if missing:
            raise ValueError(f"folder: no trigger image {missing[0]}")
        return cls({n: folder / f"{n}{suffix}" for n in names})

    def with_image(self, name: str, image) -> TriggerSet:
        """A new set with ``image`` as the trigger ``name`` (this set is unchanged)."""
        return _from_tensors({**self._images, **TriggerSet({name: image})._images})

    @property
    def images(self) -> Mapping[str, torch.Tensor]:
        """Read-only name -> (4, H, W) RGBA image of the image triggers (not the drawn ones); copies, so
        changing one cannot change the set."""
        return MappingProxyType({name: image.clone() for name, image in self._images.items()})

    @property
    def names(self) -> tuple[str, ...]:
        """Every trigger name in the set: the drawn ones first, then the image-only ones."""
        return TRIGGERS + tuple(n for n in self._images if n not in _DRAW)

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and (name in _DRAW or name in self._images)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return (
            f"TriggerSet(drawn={[n for n in TRIGGERS if n not in self._images]}, images={list(self._images)})"
        )

    def check(self, trigger) -> str:
        """``trigger`` if it names a trigger of this set; TypeError for a non-str, ValueError otherwise."""
        if not isinstance(trigger, str):
            raise TypeError(f"trigger must be a str, got {type(trigger).__name__}")
        if trigger not in self:
            raise ValueError(f"trigger must be one of {self.names}, got {trigger!r}")
        return trigger

    def fingerprint(self, names) -> dict[str, str]:
        """sha1 (12 hex digits) of each image trigger among ``names``: what a cache key must include
        beyond the names (empty when every one of them is drawn)."""
        return {
            n: hashlib.sha1(self._images[n].numpy().tobytes()).hexdigest()[:12]
            for n in sorted(names)
            if n in self._images
        }

    def patch(self, trigger: str, size: int, *, supersample: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rgb, mask)`` of ``trigger`` at ``size`` px; see :func:`trigger_patch`."""
        self.check(trigger)
        size = check_int(size, "size", minimum=2)
        supersample = check_int(supersample, "supersample", minimum=1)
        if trigger in self._images:
            src = self._images[trigger]
            premult = torch.cat([src[:3] * src[3:], src[3:]])[None]  # resize colour weighted by alpha
            small = F.interpolate(premult, size=(size, size), mode="bilinear", antialias=True)[0]
            mask = small[3] >= 0.5
            if not bool(mask.any()):
                raise ValueError(f"trigger {trigger!r} has no pixel left at size {size}: use a larger patch")
            rgb = small[:3] / small[3:].clamp_min(1e-6)
            return (rgb * mask).clamp(0, 1), mask
        s = max(1, min(supersample, max(1024, size) // size))
        rgb, mask = _drawn_patch(trigger, size, s)
        return rgb.clone(), mask.clone()


def _from_tensors(images: dict) -> TriggerSet:
    out = TriggerSet()
    object.__setattr__(out, "_images", MappingProxyType({k: v.clone() for k, v in images.items()}))
    return out


DRAWN_TRIGGERS = TriggerSet()  # the four procedural shapes (immutable)


def resolve_trigger_set(trigger_set) -> TriggerSet:
    """``None`` -> :data:`DRAWN_TRIGGERS`; a :class:`TriggerSet` as it is; TypeError otherwise."""
    if trigger_set is None:
        return DRAWN_TRIGGERS
    if not isinstance(trigger_set, TriggerSet):
        raise TypeError(f"trigger_set must be a TriggerSet or None, got {type(trigger_set).__name__}")
    return trigger_set


def trigger_patch(
    trigger: str, size: int, *, supersample: int = 4, trigger_set: TriggerSet | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A trigger patch: ``(rgb, mask)`` with rgb (3, size, size) float32 in [0, 1] (0 outside the mask)
    and a bool mask (size, size).

    Drawn shapes are drawn on a ``supersample``-times finer grid and reduced; a pixel belongs to the
    mask when at least half of it is covered, and only mask pixels are ever pasted, so the mask is
    exactly the set of pixels a trigger changes. Large patches need no fine grid: the supersampling
    factor is lowered so that the fine grid has at most ``max(1024, size)`` points per side (patches
    up to 256 px are drawn exactly as with ``supersample``; a 1000-px patch costs a 1000^2 grid, not 4000^2).
    Drawings are cached per (trigger, size, factor); each call returns new tensors. An image trigger
    of ``trigger_set`` is resized with antialiasing (colour weighted by alpha); its mask is alpha >= 0.5.

    ``trigger_set``: where ``trigger`` is looked up (default :data:`DRAWN_TRIGGERS`). Raises
    TypeError/ValueError naming the argument for an unknown trigger, ``size`` < 2 or ``supersample`` < 1.
    """
    return resolve_trigger_set(trigger_set).patch(trigger, size, supersample=supersample)


def patch_size(height: int, width: int, fraction: float = 0.25) -> int:
    """Side of the trigger patch in px: ``fraction`` of the short image side, rounded, at least 2
    (the paper: a quarter, ``fraction=0.25``)."""
    return max(2, int(round(fraction * min(height, width))))


# --------------------------------------------------------------------------------------------------
# pasting
# --------------------------------------------------------------------------------------------------
def paste_trigger(
    image,
    trigger: str,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    position: tuple[int, int] | None = None,
    fraction: float = 0.25,
    alpha: float = 0.8,
    trigger_set: TriggerSet | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a trigger: returns ``(triggered image (3,H,W) float32 in [0,1], mask (H,W) bool)``.

    The patch side is ``fraction`` of the short image side (:func:`patch_size`); its top-left corner
    is ``position`` (row, col) or drawn uniformly from ``generator`` (or a new one seeded with
    ``seed``, default 0). Over the patch's own pixels the result is ``alpha * patch + (1 - alpha) *
    image``; every other pixel is unchanged, and the mask marks the pixels the patch is blended into.
    ``alpha = 0`` blends nothing: the image is returned unchanged (a copy) with an all-False mask
    (and no random draw is made).

    ``image``: any image accepted by :func:`spade_utils.data.image_to_tensor` (NaN/inf refused).
    ``trigger_set``: where ``trigger`` is looked up (default :data:`DRAWN_TRIGGERS`).
    Raises TypeError/ValueError naming the argument for a bad trigger, image, ``fraction`` (in (0, 1]),
    ``alpha`` (in [0, 1]), ``seed`` or ``position``, and for an image smaller than the patch.
    Only the patch's window is computed on: the cost beyond the returned image and mask does not
    grow with the image (a 4000 x 4000 image takes well under a second).
    """
    trigger_set = resolve_trigger_set(trigger_set)
    trigger_set.check(trigger)
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
    owned = not (
        isinstance(image, torch.Tensor)
        and x.untyped_storage().data_ptr() == image.untyped_storage().data_ptr()
    )
    if alpha == 0:
        return (x if owned else x.clone()), torch.zeros(h, w, dtype=torch.bool)
    rgb, m = trigger_set.patch(trigger, s)
    if position is None:
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        top, left = random_position(h, w, s, generator)
    return blend(x, rgb, m, top, left, alpha, inplace=owned)


def random_position(h: int, w: int, s: int, generator: torch.Generator) -> tuple[int, int]:
    """Top-left corner (row, col) of an s x s patch drawn uniformly inside an h x w image."""
    top = int(torch.randint(0, h - s + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - s + 1, (1,), generator=generator))
    return top, left


def blend(image, rgb, mask, top, left, alpha, *, inplace: bool = False):
    """``alpha * rgb + (1 - alpha) * image`` over the patch's mask at (top, left); returns
    ``(image (3,H,W), full-size mask (H,W))``. ``inplace=True`` writes into ``image`` (for a tensor the
    caller owns) instead of a copy. No checks: the callers (:func:`paste_trigger`, ``paste_patch``) check."""
    s = rgb.shape[-1]
    out = image if inplace else image.clone()
    region = out[:, top : top + s, left : left + s]
    region[:, mask] = alpha * rgb[:, mask] + (1 - alpha) * region[:, mask]
    full = torch.zeros(image.shape[1:], dtype=torch.bool)
    full[top : top + s, left : left + s] = mask
    return out, full


# --------------------------------------------------------------------------------------------------
# does an image (e.g. a feature visualization) contain the trigger?
# --------------------------------------------------------------------------------------------------
def trigger_similarity(
    image: torch.Tensor,
    trigger: str,
    *,
    fractions: Sequence[float] = (0.15, 0.2, 0.25, 0.33, 0.5),
    trigger_set: TriggerSet | None = None,
) -> float:
    """Best masked normalised cross-correlation between ``image`` (3,H,W) and the trigger patch, in [-1, 1].

    The trigger is drawn at each side length ``s = max(3, round(fraction * min(H, W)))`` and slid
    over every position where it fits; at each position the image pixels under the trigger's mask
    (all three channels together, ``n = 3 * mask.sum()`` values) are correlated with the trigger's
    own pixels: ``sum(m (x - mean x)(t - mean t)) / (||m (x - mean x)|| ||m (t - mean t)||)``. 1 means
    the trigger's colour pattern appears exactly (up to brightness and contrast); a window of constant
    colour scores 0 (its correlation is undefined). The score is a **maximum** over thousands of windows
    and five sizes, so unrelated images do not score 0: uniform noise and unrelated photos reach roughly
    0.1-0.25 at 224 px (the larger, the more windows and the more texture). Compare a score with such a
    reference (notebook 05 prints a noise image's score beside each visualization), not with 0.

    The three window sums (cross term, sum and sum of squares under the mask) are computed by FFT
    (``scipy.signal.fftconvolve``, float64), so the cost grows with H W log(H W) per fraction
    (a 224 x 224 image: a few tens of milliseconds), not with H W s^2.

    ``image``: any image accepted by :func:`spade_utils.data.image_to_tensor`, at least 3 x 3 px.
    ``fractions``: a non-empty sequence of numbers in (0, 1]. ``trigger_set``: where ``trigger`` is
    looked up (default :data:`DRAWN_TRIGGERS`). Raises TypeError/ValueError naming the argument;
    ValueError if the trigger has no contrast at any size (the correlation is undefined).
    """
    from scipy.signal import fftconvolve

    trigger_set = resolve_trigger_set(trigger_set)
    trigger_set.check(trigger)
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, (Sequence, np.ndarray)):
        raise TypeError(f"fractions must be a sequence of numbers in (0, 1], got {type(fractions).__name__}")
    if len(fractions) == 0:
        raise ValueError(
            "fractions is empty: give at least one patch size (fraction of the short image side)"
        )
    fractions = [
        check_float(f, f"fractions[{k}]", low=0.0, high=1.0, low_open=True) for k, f in enumerate(fractions)
    ]
    x = image_tensor(image).double().numpy()
    _, h, w = x.shape
    if min(h, w) < 3:
        raise ValueError(f"image must be at least 3 x 3 pixels to hold a trigger, got {h} x {w}")
    grey_sum, sq_sum = x.sum(0), (x * x).sum(0)
    best = None
    for frac in fractions:
        s = max(3, int(round(frac * min(h, w))))
        rgb, m = trigger_set.patch(trigger, s)
        mask = m.double().numpy()
        n = 3 * mask.sum()
        t = rgb.double().numpy() * mask
        t_centred = (t - t.sum() / n) * mask
        t_norm = float(np.sqrt((t_centred**2).sum()))
        if not t_norm > 0:
            continue
        # correlation = convolution with the kernel flipped in both spatial axes ("valid": fully inside)
        cross = fftconvolve(x, t_centred[:, ::-1, ::-1], mode="valid", axes=(1, 2)).sum(
            0
        )  # mean term vanishes
        s1 = fftconvolve(grey_sum, mask[::-1, ::-1], mode="valid")
        s2 = fftconvolve(sq_sum, mask[::-1, ::-1], mode="valid")
        var = s2 - s1 * s1 / n
        flat = var <= 1e-9 * np.maximum(s2, 1.0)  # constant window (FFT round-off ~1e-12 of s2): no pattern
        ncc = np.where(flat, 0.0, cross / (np.sqrt(np.where(flat, 1.0, var)) * t_norm))
        score = float(np.clip(ncc, -1.0, 1.0).max())
        best = score if best is None else max(best, score)
    if best is None:
        raise ValueError(
            f"trigger {trigger!r} has no contrast at any of the sizes {fractions}: its correlation is undefined"
        )
    return best
