"""Augmented views of one sample: the calibration set of a SPADE trace.

Images follow the paper: RandomResizedCrop(size, scale 0.2-1), horizontal flip, ColorJitter
(brightness 0.5, hue 0.3), ImageNet normalisation. Every random draw comes from the
``torch.Generator`` passed in, so the global RNG is never touched and a seed fixes the views.
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as TF

from .data import image_to_tensor
from .inputs import IMAGENET_MEAN, IMAGENET_STD, InputSpec
from .validation import check_float, check_int


def image_tensor(image, *, argname: str = "image") -> torch.Tensor:
    """Any accepted image -> float32 (3, H, W) in [0, 1] on the CPU: see :func:`spade_utils.data.image_to_tensor`
    for the rules (every PIL mode, integer dtypes scaled by their range, floats must lie in [0, 1], NaN/inf refused)."""
    return image_to_tensor(image, argname=argname)


def crop_box(height: int, width: int, scale, ratio, gen: torch.Generator) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w): random area fraction and log-uniform aspect ratio."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[2] * (height - h + 1))
            left = int(u[3] * (width - w + 1))
            return top, left, h, w
    # fall back to the largest centred crop within the ratio range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(-3)
    maxc, _ = x.max(dim=-3)
    minc, _ = x.min(dim=-3)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4)
    )
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    s = torch.where(
        maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc)
    )
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    # closed form: channel c = v - v s clamp(min(k, 4 - k), 0, 1), k = (n_c + 6h) mod 6, n = (5, 3, 1)
    h, s, v = x.unbind(-3)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(3, 1, 1)
    k = (n + 6 * h.unsqueeze(-3)) % 6
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return v.unsqueeze(-3) * (1 - s.unsqueeze(-3) * ramp)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of a batch (B, 3, H, W) in [0, 1] by ``shift`` (B,) turns, as ColorJitter's hue does."""
    hsv = _rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(hsv)


class ImageAugmenter:
    """Callable ``(image, n, generator) -> (n, 3, size, size)`` normalised views, as in the paper.

    Each view is a RandomResizedCrop (area fraction uniform in ``scale``, aspect ratio log-uniform
    in ``ratio``, see :func:`crop_box`) resized to ``size`` x ``size``, flipped left-right with
    probability 1/2 (``flip``), multiplied by a brightness factor uniform in
    ``[1 - brightness, 1 + brightness]`` (clipped to [0, 1]), hue-rotated by a shift uniform in
    ``[-hue, hue]`` turns, and normalised as ``(x - mean) / std`` (torchvision's ``normalize``;
    ``mean``/``std`` are the model's, 1 or 3 numbers in [0, 1] units, default ImageNet's). Views are
    made on ``device`` in float32 and returned in ``dtype`` (the model's dtype, e.g. float16); every
    random draw comes from the CPU ``generator``. ``normalize=False`` returns the [0, 1] views.

    Raises TypeError/ValueError naming the argument for bad settings (here) or a bad image/``n``
    (when called); see :func:`spade_utils.data.image_to_tensor` for the accepted images.
    """

    def __init__(
        self,
        size: int = 224,
        *,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
        brightness: float = 0.5,
        hue: float = 0.3,
        normalize: bool = True,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ):
        size = check_int(size, "size", minimum=8)
        scale, ratio = _pair(scale, "scale"), _pair(ratio, "ratio")
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {ratio}")
        hue = check_float(hue, "hue", low=0.0, high=0.5)
        brightness = check_float(brightness, "brightness", low=0.0, high=1.0)
        spec = InputSpec(size, tuple(mean), tuple(std))  # validates mean/std (1 or 3 finite entries, std > 0)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype (the model's), got {dtype!r}")
        self.size, self.scale, self.ratio = size, scale, ratio
        self.flip, self.brightness, self.hue, self.normalize = bool(flip), brightness, hue, bool(normalize)
        (self.mean, self.std), self.dtype = spec.stats(), dtype
        self.device = torch.device(device)  # where the views are made; random draws stay on the CPU

    def __call__(self, image, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        src = image_tensor(image).to(self.device)
        _, height, width = src.shape
        views = torch.empty(n, 3, self.size, self.size, device=self.device)
        for i in range(n):
            top, left, h, w = crop_box(height, width, self.scale, self.ratio, gen)
            views[i] = TF.resized_crop(src, top, left, h, w, [self.size, self.size], antialias=True)
        if self.flip:
            flips = (torch.rand(n, generator=gen) < 0.5).to(self.device)
            views[flips] = views[flips].flip(-1)
        if self.brightness > 0:
            factor = (1 + self.brightness * (2 * torch.rand(n, generator=gen) - 1)).to(self.device)
            views = (views * factor.view(-1, 1, 1, 1)).clamp_(0, 1)
        if self.hue > 0:
            views = shift_hue(views, (self.hue * (2 * torch.rand(n, generator=gen) - 1)).to(self.device))
        if self.normalize:
            views = TF.normalize(views, list(self.mean), list(self.std))
        return views.to(self.dtype)


def _pair(value, name: str) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name} must be a pair (lo, hi) of numbers, got {value!r}")
    return check_float(value[0], f"{name}[0]"), check_float(value[1], f"{name}[1]")


def augment_image(image, n: int, *, size: int = 224, seed: int = 0, **options) -> torch.Tensor:
    """``n`` augmented, normalised views of ``image`` (PIL, array or [0, 1] tensor): (n, 3, size, size)."""
    return ImageAugmenter(size, **options)(image, n, torch.Generator().manual_seed(seed))
