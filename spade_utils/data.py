"""Sample photos that ship inside installed packages, ImageNet preprocessing and class names."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .inputs import IMAGENET_MEAN, IMAGENET_STD, InputSpec  # one definition of the ImageNet statistics
from .validation import check_int, check_seed

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "available_images",
    "sample_image",
    "image_to_tensor",
    "to_pil",
    "preprocess",
    "denormalize",
    "imagenet_classes",
    "imagenet_folder_sample",
    "imagenet_scored_and_calibration",
    "load_rgb",
    "read_image",
]


def _skimage(name: str):
    def load() -> np.ndarray:
        import skimage.data

        img = getattr(skimage.data, name)()
        return img[0] if isinstance(img, tuple) else img

    return load


def _matplotlib(filename: str):
    def load() -> np.ndarray:
        import matplotlib.cbook

        with Image.open(matplotlib.cbook.get_sample_data(filename, asfileobj=False)) as img:
            return np.asarray(img.convert("RGB"))

    return load


def _sklearn(filename: str):
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


# photos (RGB, natural scenes) that need no download; name -> loader
SAMPLE_IMAGES = {
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "astronaut": _skimage("astronaut"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "hubble": _skimage("hubble_deep_field"),
    "retina": _skimage("retina"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "grace_hopper": _matplotlib("grace_hopper.jpg"),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
}


def available_images() -> list[str]:
    """Names accepted by :func:`sample_image`: photos shipped inside installed packages (skimage, matplotlib, sklearn)."""
    return list(SAMPLE_IMAGES)


def sample_image(name: str) -> Image.Image:
    """One of the photos shipped with scikit-image, matplotlib or scikit-learn, as an RGB PIL image."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in SAMPLE_IMAGES:
        raise ValueError(f"unknown image {name!r}; choose one of {available_images()}")
    return Image.fromarray(np.ascontiguousarray(SAMPLE_IMAGES[name]())).convert("RGB")


# --------------------------------------------------------------------------------------------------
# any image -> (3, H, W) in [0, 1]
# --------------------------------------------------------------------------------------------------
_IMAGE_RULES = """\
Accepted images and how their values are read:

- PIL images of every mode: 8-bit modes (1, L, P, RGB, CMYK, YCbCr, LAB, HSV, ...) are converted
  by PIL; modes with transparency (RGBA, LA, PA, RGBa, La, P or L with a transparent colour) are
  composited on a white background; ``I;16*`` (16-bit) is divided by 65535; ``I`` (32-bit int)
  and ``F`` (32-bit float) follow the integer and float rules below.
- numpy arrays (H, W) or (H, W, C), torch tensors (C, H, W) or (1, C, H, W), C in 1 (grey),
  2 (grey + alpha), 3 (RGB), 4 (RGBA); alpha is composited on white.
- bool: False = black, True = white. uint8: divided by 255. uint16: divided by 65535 (the
  dtype's range, as scikit-image and torchvision do).
- any other integer dtype (int8 ... int64, uint32, uint64): no standard range, so these are read
  as 8-bit data held in a wider type (``np.asarray(photo, dtype=int)`` or arithmetic on a uint8
  photo gives them) and must lie in 0..255; anything else is refused with a message saying how to
  convert (``x.astype(np.uint16)`` for 16-bit data, or a float array in [0, 1]).
- floating point (float16/32/64, bfloat16): must lie in [0, 1]; 0..255 data or normalised tensors
  are refused with a message saying how to convert.
- NaN or inf values and empty images are refused up front.
"""


def _refuse_nonfinite(arr, argname: str) -> None:
    if isinstance(arr, torch.Tensor):
        bad = not bool(torch.isfinite(arr).all())
    else:
        bad = not bool(np.isfinite(arr).all())
    if bad:
        raise ValueError(f"{argname} holds NaN or inf values; an image must hold finite values")


def _float_in_unit_range(arr, argname: str) -> None:
    """Refuse float pixel data outside [0, 1] (after refusing NaN/inf)."""
    if isinstance(arr, torch.Tensor):
        lo, hi = (
            float(v)
            for v in torch.aminmax(arr.float() if arr.dtype in (torch.float16, torch.bfloat16) else arr)
        )
    else:
        lo, hi = float(arr.min()), float(arr.max())  # NaN propagates through min/max: one pass, no copy
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{argname} holds NaN or inf values; an image must hold finite values")
    if lo < 0 or hi > 1:
        raise ValueError(
            f"{argname} is a float image with values in [{lo:.4g}, {hi:.4g}]; float images must lie in [0, 1]. "
            "Divide 0..255 data by 255 (or pass it as uint8), and undo a normalisation with "
            "spade_utils.data.denormalize(x, mean=..., std=...)"
        )


def _integer_data(arr: np.ndarray, argname: str, what: str = "") -> np.ndarray:
    """Integer / bool pixel data (numpy) by the rules above: float32 in [0, 1] (bool, uint16), or uint8
    (8-bit data held in a wider integer type, then converted exactly as a uint8 image)."""
    kind = what or f"a {arr.dtype} image"
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint16 or arr.dtype == np.dtype(">u2"):
        return arr.astype(np.float32) / np.float32(65535)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > 255:
        raise ValueError(
            f"{argname} is {kind} with values in [{lo}, {hi}]; integer images other than uint8 (/255) and "
            "uint16 (/65535) are read as 8-bit data and must lie in 0..255. Convert explicitly: "
            "x.astype(np.uint16) for 16-bit data, or a float array in [0, 1] such as (x / x.max()).astype(np.float32)"
        )
    return arr.astype(np.uint8)


def _composite_float(chw: torch.Tensor) -> torch.Tensor:
    """(C, H, W) float in [0, 1], C in 1..4 -> (3, H, W); alpha (C = 2 or 4) composited on white."""
    c = chw.shape[0]
    if c in (2, 4):
        colour, alpha = chw[:-1], chw[-1:]
        chw = colour * alpha + (1 - alpha)
    return chw.expand(3, -1, -1).contiguous() if chw.shape[0] == 1 else chw


def _from_pil(image: Image.Image, argname: str) -> torch.Tensor:
    if 0 in image.size:
        raise ValueError(f"{argname} is empty (size {image.size})")
    mode = image.mode
    if mode.startswith("I;16"):
        return _composite_float(torch.from_numpy(_integer_data(np.asarray(image), argname))[None])
    if mode == "I":
        arr = _integer_data(np.asarray(image), argname, "a PIL 'I' (32-bit integer) image")  # 0..255 -> uint8
        return torch.from_numpy(arr)[None].expand(3, -1, -1).contiguous()
    if mode == "F":
        arr = np.asarray(image)
        try:
            _float_in_unit_range(arr, argname)
        except ValueError as err:
            raise ValueError(f"{err} (a PIL 'F' image)") from None
        return _composite_float(torch.from_numpy(arr.astype(np.float32))[None])
    if mode == "La":  # premultiplied grey + alpha: composite on white directly
        arr = np.asarray(image).astype(np.float32) / np.float32(255)
        grey = arr[..., 0] + (1 - arr[..., 1])
        return torch.from_numpy(np.clip(grey, 0, 1))[None].expand(3, -1, -1).contiguous()
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    arr = np.asarray(image.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _from_array(arr: np.ndarray, argname: str) -> torch.Tensor:
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        raise ValueError(
            f"{argname} as an array must be HxW or HxWxC with C in (1, 2, 3, 4), got shape {arr.shape}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{argname} is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim == 3 and arr.shape[2] == 3:  # RGB: nothing to convert, no copy (callers only read it)
            arr = np.ascontiguousarray(arr)
            return torch.from_numpy(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1)
        mode = (
            {2: "L", 3: "RGB"}[arr.ndim]
            if arr.ndim == 2 or arr.shape[2] == 3
            else {2: "LA", 4: "RGBA"}[arr.shape[2]]
        )
        return _from_pil(Image.fromarray(np.ascontiguousarray(arr), mode), argname)
    if np.issubdtype(arr.dtype, np.floating):
        _float_in_unit_range(arr, argname)
        data = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        data = _integer_data(arr, argname)
        if data.dtype == np.uint8:
            return _from_array(data, argname)
    else:
        raise TypeError(f"{argname} must hold real numbers (bool, integer or float), got dtype {arr.dtype}")
    data = np.ascontiguousarray(data)
    chw = torch.from_numpy(data if data.flags.writeable else data.copy())
    chw = chw[None] if chw.dim() == 2 else chw.permute(2, 0, 1)
    return _composite_float(chw)


def _from_tensor(x: torch.Tensor, argname: str) -> torch.Tensor:
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 2, 3, 4):
        raise ValueError(
            f"{argname} as a tensor must be a CxHxW (or 1xCxHxW) image with C in (1, 2, 3, 4), got shape {tuple(x.shape)}"
        )
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f"{argname} is empty (shape {tuple(x.shape)})")
    x = x.detach()
    if x.is_complex():
        raise TypeError(f"{argname} must hold real numbers, got a {x.dtype} tensor")
    if x.is_floating_point():
        _float_in_unit_range(x, argname)
        return _composite_float(x.float().cpu())
    # integer / bool tensors: the same rules as arrays (uint8 -> /255, uint16 -> /65535, ...)
    arr = x.cpu().permute(1, 2, 0).numpy()
    return _from_array(arr[..., 0] if arr.shape[2] == 1 else arr, argname)


def _image_chw(image, argname: str) -> torch.Tensor:
    """Any accepted image -> (3, H, W): uint8 for 8-bit sources (exactly as PIL converts them), else
    float32 in [0, 1]. Raises TypeError/ValueError naming ``argname``."""
    if isinstance(image, Image.Image):
        out = _from_pil(image, argname)
    elif isinstance(image, torch.Tensor):
        out = _from_tensor(image, argname)
    elif isinstance(image, np.ndarray):
        out = _from_array(image, argname)
    else:
        raise TypeError(
            f"{argname} must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}"
        )
    return out


def image_to_tensor(image, *, argname: str = "image") -> torch.Tensor:
    """Any accepted image -> float32 tensor (3, H, W) with values in [0, 1], on the CPU.

    A float32 (3, H, W) CPU tensor in [0, 1] is returned as it is (no copy: do not modify the
    result in place); everything else is converted into a new tensor. 8-bit data becomes
    ``value * (1 / 255)`` exactly as torchvision's ``to_dtype(..., scale=True)``.

    """
    from torchvision.transforms.v2 import functional as F

    out = _image_chw(image, argname)
    return F.to_dtype(out, torch.float32, scale=True) if out.dtype == torch.uint8 else out  # x * (1 / 255)


image_to_tensor.__doc__ = (
    (image_to_tensor.__doc__ or "")
    + _IMAGE_RULES
    + "\nRaises TypeError for a value that is not an image, ValueError for a bad image.\n"
)


def to_pil(image, *, argname: str = "image") -> Image.Image:
    """Any accepted image -> RGB PIL image (8 bits per channel; 16-bit and float data are rounded to 8 bits)."""
    out = _image_chw(image, argname)
    if out.dtype != torch.uint8:
        out = (out * 255).round_().to(torch.uint8)
    return Image.fromarray(out.permute(1, 2, 0).numpy())


to_pil.__doc__ = (
    (to_pil.__doc__ or "")
    + _IMAGE_RULES
    + "\nRaises TypeError for a value that is not an image, ValueError for a bad image.\n"
)


def _check_stats(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validated ``(mean, std)`` (1 or 3 finite entries each, std > 0)."""
    for name, v in (("mean", mean), ("std", std)):
        if isinstance(v, (str, bytes)) or not isinstance(v, (Sequence, np.ndarray, torch.Tensor)):
            raise TypeError(
                f"{name} must be a sequence of 1 or 3 numbers (one per channel), got {type(v).__name__}"
            )
    return InputSpec(
        None,
        tuple(float(m) if isinstance(m, torch.Tensor) else m for m in mean),
        tuple(float(s) if isinstance(s, torch.Tensor) else s for s in std),
    ).stats()


def _resize_center_crop(img: torch.Tensor, size: int, resize: int) -> torch.Tensor:
    """torchvision's Resize(resize) + CenterCrop(size) on a (C, H, W) tensor, resizing only what the crop keeps.

    Ordinary aspect ratios (resized long side <= 16 x ``resize``) go through torchvision exactly.
    For elongated images the long axis is first cut to the span the centre crop needs (plus the
    filter's support) and that span is resized with the same scale; when the cut can start on a
    source pixel whose resized position is a whole pixel (always for an integer scale such as a
    1-pixel-high strip) the result equals the full resize-then-crop; otherwise the crop's placement
    may differ from it by less than one output pixel.
    """
    from torchvision.transforms.v2 import functional as F

    h, w = img.shape[-2:]
    short, long_ = min(h, w), max(h, w)
    n_long = int(resize * long_ / short)  # torchvision's rule for the long side
    if n_long <= 16 * resize:
        return F.center_crop(F.resize(img, [resize], antialias=True), [size, size])
    axis = 2 if w >= h else 1  # the long axis of (C, H, W)
    ratio = long_ / n_long  # source pixels per output pixel along the long axis
    c0 = int(round((n_long - size) / 2.0))  # torchvision's centre-crop offsets
    top = int(round((resize - size) / 2.0))
    reach = max(1.0, ratio) + 2  # the filter's support plus a margin, in source pixels
    a = max(0, math.floor((c0 + 0.5) * ratio - 0.5 - reach))
    b = min(long_, math.ceil((c0 + size - 0.5) * ratio - 0.5 + reach) + 1)
    aligned = a - a % (long_ // math.gcd(n_long, long_))  # a cut whose resized position is a whole pixel
    if a - aligned <= 4 * (b - a) + 64:
        a = aligned
    sf_long, sf_short = n_long / long_, resize / short
    while math.floor(short * sf_short) < resize:  # interpolate floors in * scale: never lose the last row
        sf_short = math.nextafter(sf_short, math.inf)
    piece = img.narrow(axis, a, b - a)[None]
    piece = piece if piece.dtype == torch.uint8 else piece.float()
    resized = torch.nn.functional.interpolate(
        piece,
        scale_factor=(sf_short, sf_long) if axis == 2 else (sf_long, sf_short),
        mode="bilinear",
        antialias=True,
        align_corners=False,
        recompute_scale_factor=False,
    )[0]
    start = c0 - int(round(a * n_long / long_))
    if axis == 2:
        return resized[:, top : top + size, start : start + size]
    return resized[:, start : start + size, top : top + size]


def preprocess(
    image,
    *,
    size: int = 224,
    resize: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """A model input from any image: resize, centre-crop, normalise -> float32 (1, 3, size, size).

    The short side is resized to ``resize`` pixels (default ``round(size * 256 / 224)``, the
    ImageNet evaluation protocol: Resize(256) + CenterCrop(224)), the centre ``size`` x ``size``
    square is kept, values are scaled to [0, 1] and normalised per channel with torchvision's
    ``normalize``: ``(x - mean) / std`` (``mean``/``std``: 1 or 3 numbers in [0, 1] units, default
    ImageNet's, :data:`spade_utils.inputs.IMAGENET_MEAN` / ``IMAGENET_STD``; pass the model's own,
    e.g. ``spade_utils.inputs.input_spec(model)``). 8-bit images are resized in 8 bits as torchvision
    does; 16-bit and float images at full precision. Only the part of the image the crop keeps is
    resized (an elongated strip does not make a huge intermediate image).

    Raises TypeError/ValueError (naming the argument) for a bad ``size``/``resize``/``mean``/``std``
    (``resize`` must be >= ``size``) or a bad image; see :func:`image_to_tensor` for the image rules.
    """
    from torchvision.transforms.v2 import functional as F

    size = check_int(size, "size", minimum=1)
    resize = int(round(size * 256 / 224)) if resize is None else check_int(resize, "resize", minimum=size)
    mean, std = _check_stats(mean, std)
    img = _image_chw(image, "image")
    x = _resize_center_crop(img, size, resize)
    x = F.to_dtype(x, torch.float32, scale=True) if x.dtype == torch.uint8 else x.float()
    return F.normalize(x, list(mean), list(std)).unsqueeze(0)


def denormalize(
    x: torch.Tensor, *, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo the normalisation ``(x - mean) / std``: ``x * std + mean`` clipped to [0, 1], same shape and dtype.

    ``x``: a float tensor (C, H, W) or (B, C, H, W) with C = ``len(mean)`` (or any C when mean/std
    have one entry); ``mean``/``std`` default to ImageNet's (:data:`spade_utils.inputs.IMAGENET_MEAN`).
    Computed with torchvision's ``normalize`` (mean ``-mean/std``, std ``1/std``). Raises TypeError
    for a non-float tensor, ValueError for another shape or NaN/inf values.
    """
    from torchvision.transforms.v2 import functional as F

    mean, std = _check_stats(mean, std)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a float tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    c = len(mean)
    if x.dim() not in (3, 4) or (c == 3 and x.shape[-3] != 3) or len(std) not in (1, c):
        raise ValueError(
            f"x must be (C, H, W) or (B, C, H, W) with C = {c} (one channel per mean/std entry), got shape {tuple(x.shape)}"
        )
    _refuse_nonfinite(x, "x")
    inv_mean = [-m / s for m, s in zip(mean, std * (c // len(std)), strict=True)]
    inv_std = [1 / s for s in std]
    return F.normalize(x, inv_mean, inv_std).clamp(0, 1)


@lru_cache(maxsize=1)
def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, index order (from torchvision's metadata; offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


_WNID = re.compile(r"n\d{8}")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def imagenet_folder_sample(root: str | os.PathLike, n: int, *, seed: int = 0) -> list[tuple[Path, int]]:
    """``n`` labelled images drawn at random from an ImageNet split in synset layout.

    ``root/<wnid>/<file>`` with one sub-folder per class named by its WordNet id (``n01440764`` ...), as
    torchvision's ``ImageFolder`` and the usual ``valprep.sh`` lay the validation set out. A class's index
    is the position of its wnid among the 1000 sorted wnids: the index order of torchvision's ImageNet
    weights and of :func:`imagenet_classes`. Files are ``.jpg``/``.jpeg``/``.png`` (any case); hidden entries
    (names starting with ".", such as ``.ipynb_checkpoints`` or ``._x.jpg``) and empty files are not images and are
    skipped. The draw is without replacement, reproducible from ``seed``, and returned sorted by path.

    Returns a list of ``(path, class index)``. Raises TypeError for a non-int ``n``/``seed``; ValueError
    when ``n < 1``, when ``root`` is not a folder, when it does not hold exactly 1000 wnid sub-folders
    (the labels would be wrong: other folders in it are named), or when it holds fewer than ``n`` images.
    """
    n = check_int(n, "n", minimum=1)
    seed = check_int(seed, "seed")
    if not isinstance(root, (str, os.PathLike)) or not Path(root).is_dir():
        raise ValueError(f"root must be an ImageNet folder with one sub-folder per synset, got {root!r}")
    subdirs = sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
    wnids = [p for p in subdirs if _WNID.fullmatch(p.name)]
    if len(wnids) != 1000 or len(wnids) != len(subdirs):
        other = [p.name for p in subdirs if not _WNID.fullmatch(p.name)][:5]
        raise ValueError(
            f"root: {root} holds {len(wnids)} synset folders (n + 8 digits), expected the 1000 of ImageNet-1k"
            + (f"; other folders: {other}" if other else "")
            + " (class indices come from the sorted synset names)"
        )
    files = [
        (f, label)
        for label, d in enumerate(wnids)
        for f in sorted(d.iterdir())
        if f.is_file()
        and f.suffix.lower() in IMAGE_SUFFIXES
        and not f.name.startswith(".")
        and f.stat().st_size > 0
    ]
    if len(files) < n:
        raise ValueError(f"n: asked for {n} images, {root} holds {len(files)}")
    pick = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:n]
    return sorted(files[int(i)] for i in pick)


def imagenet_scored_and_calibration(
    root: str | os.PathLike, n_scored: int, n_calibration: int, *, seed: int = 0
) -> tuple[tuple[dict, dict], tuple[dict, dict]]:
    """Two disjoint labelled draws from an ImageNet split in synset layout: images to score and images to
    calibrate on (e.g. FastSPADE*'s sparsity), never the same file.

    ``n_scored + n_calibration`` images are drawn by :func:`imagenet_folder_sample` (``seed``) and shuffled by a
    second generator seeded with ``seed``; the first ``n_scored`` are scored, the rest calibrate. Returns
    ``((images, labels), (calibration_images, calibration_labels))``, each a dict keyed by file stem, sorted by
    path: RGB PIL images and class indices. Raises what :func:`imagenet_folder_sample` raises; ValueError for
    ``n_calibration < 0`` or two drawn files with the same stem (keys would collide)."""
    n_scored = check_int(n_scored, "n_scored", minimum=1)
    n_calibration = check_int(n_calibration, "n_calibration", minimum=0)
    seed = check_seed(seed)
    drawn = imagenet_folder_sample(root, n_scored + n_calibration, seed=seed)
    stems = [path.stem for path, _ in drawn]
    if len(set(stems)) != len(stems):
        twice = sorted({s for s in stems if stems.count(s) > 1})
        raise ValueError(f"root: drawn images of {root} share the file names {twice}; keys would collide")
    order = torch.randperm(len(drawn), generator=torch.Generator().manual_seed(seed)).tolist()
    scored, calibration = (
        sorted(drawn[i] for i in order[:n_scored]),
        sorted(drawn[i] for i in order[n_scored:]),
    )

    def images_and_labels(part: list[tuple[Path, int]]) -> tuple[dict, dict]:
        return {path.stem: load_rgb(path) for path, _ in part}, {path.stem: label for path, label in part}

    return images_and_labels(scored), images_and_labels(calibration)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as float32 (3, H, W) in [0, 1], by the rules of :func:`image_to_tensor` (greyscale, CMYK and
    palette files converted, transparency composited on white; ImageNet holds the first three).

    Raises FileNotFoundError for a missing file and ValueError naming the file when it is not a readable image."""
    with _open_image(path) as img:
        return image_to_tensor(img, argname=str(path))


def _open_image(path: str | os.PathLike) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise
    except (
        OSError,
        SyntaxError,
        ValueError,
    ) as err:  # PIL.UnidentifiedImageError is an OSError; truncated files
        raise ValueError(f"{path} is not a readable image file: {err}") from err
    return img


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """An image file as an RGB PIL image, by the same rules as :func:`read_image` (same errors)."""
    with _open_image(path) as img:
        return to_pil(img, argname=str(path))
