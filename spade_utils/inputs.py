"""What input a model expects: side length and normalisation, stated once and found in one place.

Every function that *builds* model inputs from a picture (the trace's augmented views, feature
visualization, saliency baselines, preprocessing) takes an :class:`InputSpec` or its fields, and
infers it with :func:`input_spec` where the model states it:

1. ``model.spade_input_spec`` (set by :func:`spade_utils.models.load_model` and the checkpoint loaders);
2. timm's ``pretrained_cfg`` / ``default_cfg`` (``input_size``, ``mean``, ``std``);
3. torchvision's ``VisionTransformer.image_size`` (size only).

Anything not stated is ``None``: callers then refuse with a message that says which argument to pass,
instead of silently feeding 224-px ImageNet-normalised views to a 32-px CIFAR network.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .validation import check_float, check_int

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """Square input side in pixels and per-channel mean/std (values in [0, 1] units); None = unknown."""

    size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.size is not None:
            object.__setattr__(self, "size", check_int(self.size, "size", minimum=1))
        for field in ("mean", "std"):
            v = getattr(self, field)
            if v is None:
                continue
            v = tuple(check_float(c, f"{field}[{i}]") for i, c in enumerate(v))
            if len(v) not in (1, 3):
                raise ValueError(f"{field} must have 1 or 3 entries (one per channel), got {len(v)}")
            if field == "std" and any(c <= 0 for c in v):
                raise ValueError(f"std entries must be > 0, got {v}")
            object.__setattr__(self, field, v)

    def merged(self, other: InputSpec) -> InputSpec:
        """Fields of ``self`` where set, else ``other``'s."""
        return InputSpec(
            self.size if self.size is not None else other.size,
            self.mean if self.mean is not None else other.mean,
            self.std if self.std is not None else other.std,
        )

    def side(self) -> int:
        """``size``, known; ValueError when it is None."""
        if self.size is None:
            raise ValueError(f"this input spec has no size: {self}")
        return self.size

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(mean, std)``, both known; ValueError when either is None."""
        if self.mean is None or self.std is None:
            raise ValueError(f"this input spec has no {'mean' if self.mean is None else 'std'}: {self}")
        return self.mean, self.std


IMAGENET_224 = InputSpec(224, IMAGENET_MEAN, IMAGENET_STD)


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside torch.compile / DataParallel / DDP wrappers."""
    seen = 0
    while seen < 8:
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            wrapped = getattr(model, "module", None)
            inner = (
                wrapped
                if isinstance(wrapped, nn.Module)
                and type(model).__name__ in ("DataParallel", "DistributedDataParallel")
                else None
            )
        if inner is None:
            return model
        model, seen = inner, seen + 1
    return model


def input_spec(model: nn.Module) -> InputSpec:
    """What the model states about its input (see the module docstring); unknown fields are None."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for m in (model, _unwrap(model)):
        spec = getattr(m, "spade_input_spec", None)
        if isinstance(spec, InputSpec):
            return spec
        for attr in ("pretrained_cfg", "default_cfg"):  # timm
            cfg = getattr(m, attr, None)
            if isinstance(cfg, dict) and "input_size" in cfg:
                size = cfg["input_size"][-1]
                return InputSpec(
                    size,
                    tuple(cfg["mean"]) if "mean" in cfg else None,
                    tuple(cfg["std"]) if "std" in cfg else None,
                )
        size = getattr(m, "image_size", None)  # torchvision VisionTransformer
        if isinstance(size, int):
            return InputSpec(size)
    return InputSpec()


def resolve_input_spec(
    model: nn.Module, *, size=None, mean=None, std=None, fn_name: str = "this function"
) -> InputSpec:
    """Explicit arguments first, then what the model states; refuse (ValueError naming the argument) if unknown."""
    spec = InputSpec(size, None if mean is None else tuple(mean), None if std is None else tuple(std)).merged(
        input_spec(model)
    )
    missing = [n for n in ("size", "mean", "std") if getattr(spec, n) is None]
    if missing:
        hint = {"size": "input_size=224", "mean": "mean=IMAGENET_MEAN", "std": "std=IMAGENET_STD"}
        raise ValueError(
            f"{fn_name}: the model does not state its input {' and '.join(missing)}; pass "
            + ", ".join(hint[n] for n in missing)
            + " (ImageNet values shown; from spade_utils.inputs import IMAGENET_MEAN, IMAGENET_STD), "
            "or set model.spade_input_spec = InputSpec(size, mean, std)"
        )
    return spec
