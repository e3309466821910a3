"""Sample photos that ship inside installed packages, ImageNet preprocessing and class names."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _skimage(name: str):
    def load() -> np.ndarray:
        import skimage.data

        img = getattr(skimage.data, name)()
        return img[0] if isinstance(img, tuple) else img

    return load


def _matplotlib(filename: str):
    def load() -> np.ndarray:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data(filename) as f:
            return np.asarray(Image.open(f).convert("RGB"))

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
    """Names accepted by :func:`sample_image`."""
    return list(SAMPLE_IMAGES)


def sample_image(name: str) -> Image.Image:
    """One of the photos shipped with scikit-image, matplotlib or scikit-learn, as an RGB PIL image."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in SAMPLE_IMAGES:
        raise ValueError(f"unknown image {name!r}; choose one of {available_images()}")
    return Image.fromarray(np.ascontiguousarray(SAMPLE_IMAGES[name]())).convert("RGB")


def to_pil(image, *, argname: str = "image") -> Image.Image:
    """Accept a PIL image of any mode, an HxW / HxWxC array, or a CxHxW tensor in [0, 1]; return RGB PIL."""
    if isinstance(image, Image.Image):
        if image.mode == "RGBA" or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3) or not image.is_floating_point():
            raise ValueError(f"{argname} as a tensor must be a float CxHxW image with C in (1, 3), got {tuple(image.shape)}")
        arr = (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        return Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"{argname} as an array must be HxW or HxWxC with C in (1, 3, 4), got {image.shape}")
        arr = image
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        return to_pil(Image.fromarray(arr))
    raise TypeError(f"{argname} must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}")


def preprocess(image, *, size: int = 224, resize: int | None = None) -> torch.Tensor:
    """Resize (short side to ``resize``, default size*256/224), centre-crop, normalise: (1, 3, size, size)."""
    from torchvision.transforms.v2 import functional as F

    img = F.to_image(to_pil(image))
    img = F.resize(img, [resize or int(round(size * 256 / 224))], antialias=True)
    img = F.center_crop(img, [size, size])
    x = F.to_dtype(img, torch.float32, scale=True)
    return F.normalize(x, IMAGENET_MEAN, IMAGENET_STD).unsqueeze(0)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation: values back in [0, 1] (clipped), same shape."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1)


@lru_cache(maxsize=1)
def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names, index order (from torchvision's metadata; offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def cache_dir():
    """``$SPADE_CACHE_DIR`` if set, else ``data/cache`` in the repository (git-ignored); created on use."""
    import os
    from pathlib import Path

    path = Path(os.environ.get("SPADE_CACHE_DIR", Path(__file__).resolve().parent.parent / "data" / "cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path
