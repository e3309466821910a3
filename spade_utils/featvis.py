"""Feature visualization with Lucent's pieces, wrapped so it is safe to call from a library.

Lucent's ``render_vis`` opens an image viewer by default, assumes input in [0, 1], keeps its
random state in the global NumPy generator, places tensors on ``cuda:0`` whenever CUDA exists,
and leaves one forward hook on every submodule after each call. :func:`visualize` instead runs its
own short optimisation loop built from Lucent's parts:

- the image is Lucent's parameterisation: a Fourier-space (FFT) image with a 1/f spectrum scale,
  colour-decorrelated with Lucent's colour-correlation matrix and squashed by a sigmoid into [0, 1];
- every step applies Lucent's ``standard_transforms`` (pad, jitter, random scale, random rotate,
  jitter), then the model's input normalisation (ImageNet mean/std by default, since every model in
  this project takes normalised input) and a bilinear resize to ``input_size``;
- the objective is a class logit (``int``), a channel ``"layer:channel"`` (a module name from
  ``model.named_modules()``, dots or Lucent's underscores), or any Lucent ``Objective``.

Hooks are registered only for the layers the objective reads (all submodules for a generic Lucent
objective) and always removed; the caller's model is put back in its previous train/eval mode and its
parameter ``.grad`` fields are never touched. A call is reproducible from its ``seed``: the global
NumPy and torch generators are restored afterwards.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import IMAGENET_MEAN, IMAGENET_STD
from .models import resolve_device

__all__ = ["visualize", "image_distance", "count_hooks"]


def count_hooks(model: nn.Module) -> int:
    """Number of forward, forward-pre and backward hooks registered on ``model`` and its submodules."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def image_distance(a: torch.Tensor, b: torch.Tensor, *, pool: int = 1) -> torch.Tensor:
    """Root-mean-square pixel difference between two image batches in [0, 1]: one value per image (B,).

    ``pool > 1`` first averages ``pool x pool`` pixel blocks, so only the coarse layout and colour are compared
    (feature visualizations of one neuron from different random starts differ mostly in fine texture).
    """
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise TypeError("a and b must be torch tensors")
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"a and b must be (B, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be an int >= 1, got {pool!r}")
    a, b = a.float(), b.float()
    if pool > 1:
        a, b = torch.nn.functional.avg_pool2d(a, pool), torch.nn.functional.avg_pool2d(b, pool)
    return (a - b).pow(2).flatten(1).mean(1).sqrt()


def _fft_image(batch: int, size: int, generator: torch.Generator, device: torch.device, sd: float = 0.01):
    """Lucent's FFT parameterisation (``lucent.optvis.param.spatial.fft_image``) with a seeded init."""
    from lucent.optvis.param.spatial import rfft2d_freqs

    freqs = rfft2d_freqs(size, size)
    spectrum = torch.randn((batch, 3, *freqs.shape, 2), generator=generator) * sd
    spectrum = spectrum.to(device).requires_grad_(True)
    scale = 1.0 / np.maximum(freqs, 1.0 / size)
    scale = torch.as_tensor(scale, dtype=torch.float32, device=device)[None, None, ..., None]

    def image() -> torch.Tensor:
        spec = torch.view_as_complex((scale * spectrum).contiguous())
        img = torch.fft.irfftn(spec, s=(size, size), norm="ortho")
        return img[:batch, :3, :size, :size] / 4.0  # Lucid's constant that controls saturation

    return spectrum, image


def _to_rgb(image_f, decorrelate: bool, device: torch.device):
    from lucent.optvis.param.color import color_correlation_normalized

    matrix = torch.as_tensor(color_correlation_normalized.T, device=device)

    def rgb() -> torch.Tensor:
        x = image_f()
        if decorrelate:
            x = torch.einsum("bchw,cd->bdhw", x, matrix)
        return torch.sigmoid(x)

    return rgb


def _resolve_layer(model: nn.Module, layer: str) -> tuple[str, nn.Module]:
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return layer, modules[layer]
    by_underscore = {name.replace(".", "_"): name for name in modules if name}
    if layer in by_underscore:
        return by_underscore[layer], modules[by_underscore[layer]]
    raise ValueError(f"layer {layer!r} is not a submodule of the model (see model.named_modules())")


def _parse_objective(model: nn.Module, objective):
    """-> (kind, payload): ("class", int) | ("channel", (name, module, int)) | ("lucent", Objective)."""
    from lucent.optvis.objectives import Objective

    if isinstance(objective, bool):
        raise TypeError("objective must be an int (class), a 'layer:channel' str or a Lucent Objective, got bool")
    if isinstance(objective, (int, np.integer)):
        if objective < 0:
            raise ValueError(f"objective as a class index must be >= 0, got {objective}")
        return "class", int(objective)
    if isinstance(objective, str):
        match = re.fullmatch(r"(.+):(\d+)", objective)
        if match is None:
            raise ValueError(f"objective as a str must look like 'layer:channel', got {objective!r}")
        name, module = _resolve_layer(model, match.group(1))
        return "channel", (name, module, int(match.group(2)))
    if isinstance(objective, Objective):
        return "lucent", objective
    raise TypeError(
        f"objective must be an int (class), a 'layer:channel' str or a Lucent Objective, got {type(objective).__name__}"
    )


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def visualize(
    model: nn.Module,
    objective,
    *,
    steps: int = 256,
    size: int = 128,
    input_size: int | None = 224,
    batch: int = 1,
    seed: int = 0,
    lr: float = 0.05,
    transforms: str | Sequence | None = "standard",
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    decorrelate: bool = True,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> torch.Tensor:
    """Optimise an input image that maximises ``objective``; returns (batch, 3, size, size) in [0, 1] on CPU.

    Parameters
    ----------
    model: a classifier taking (B, 3, H, W) input normalised with ``mean``/``std``.
    objective: ``int`` -> that output logit (the model's return value, not a hooked module);
        ``"layer:channel"`` -> mean activation of one channel of a named module's output;
        a Lucent ``Objective`` -> used as is (it sees Lucent's underscore names and ``"input"``).
        The image maximises the objective (Lucent objectives are losses and are minimised as Lucent does).
    steps: optimisation steps (Adam, learning rate ``lr``). size: side of the optimised image.
    input_size: side the transformed image is resized to before the model (``None``: no resize).
    batch: independent images, each from its own random start, optimised together.
    seed: seeds the image initialisation and Lucent's random transforms; the same seed gives the same image.
    transforms: ``"standard"`` (Lucent's ``standard_transforms``), ``None`` or a list of callables.
    mean, std: input normalisation applied after the transforms (``None`` for models taking [0, 1] input).
    device: ``"auto"`` -> CUDA when present. If the model lives elsewhere it is copied there, not moved.
    progress: show a tqdm bar.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    steps = _check_int(steps, "steps", 1)
    size = _check_int(size, "size", 8)
    batch = _check_int(batch, "batch", 1)
    seed = _check_int(seed, "seed", 0)
    if input_size is not None:
        input_size = _check_int(input_size, "input_size", 8)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if (mean is None) != (std is None):
        raise ValueError("mean and std must both be given or both be None")
    if mean is not None and (len(mean) != 3 or len(std) != 3 or min(std) <= 0):
        raise ValueError(f"mean and std must be 3 numbers each with std > 0, got {mean!r}, {std!r}")
    if isinstance(transforms, str):
        if transforms != "standard":
            raise ValueError(f"transforms must be 'standard', None or a list of callables, got {transforms!r}")
    elif transforms is not None and not all(callable(t) for t in transforms):
        raise TypeError("transforms must be 'standard', None or a list of callables")
    kind, payload = _parse_objective(model, objective)
    dev = resolve_device(device)

    import lucent.optvis.transform as lucent_transform

    params = list(model.parameters())
    net = model
    if params and params[0].device != dev:
        net = copy.deepcopy(model).to(dev)
    if kind == "channel":  # find the hooked module in the (possibly copied) network
        payload = (payload[0], dict(net.named_modules())[payload[0]], payload[2])
    was_training = net.training
    old_lucent_device = lucent_transform.device
    np_state = np.random.get_state()
    handles: list = []
    features: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs, output):
            features[name] = output

        return hook

    try:
        net.eval()
        lucent_transform.device = dev  # Lucent's jitter/rotate read this module global at call time
        np.random.seed(seed)  # Lucent's random transforms draw from the global NumPy generator (restored below)
        gen = torch.Generator().manual_seed(seed)
        spectrum, raw = _fft_image(batch, size, gen, dev)
        image_f = _to_rgb(raw, decorrelate, dev)

        chain = list(lucent_transform.standard_transforms) if transforms == "standard" else list(transforms or [])
        if mean is not None:
            m = torch.tensor(mean, device=dev).view(1, 3, 1, 1)
            s = torch.tensor(std, device=dev).view(1, 3, 1, 1)
            chain.append(lambda x: (x - m) / s)
        if input_size is not None:
            chain.append(lambda x: nn.functional.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=True))

        if kind == "channel":
            name, module, channel = payload
            handles.append(module.register_forward_hook(keep(name)))
        elif kind == "lucent":
            for name, module in net.named_modules():
                if name:
                    handles.append(module.register_forward_hook(keep(name.replace(".", "_"))))

        def lucent_lookup(layer: str):
            if layer == "input":
                return image_f()
            if layer == "labels":
                return features["__output__"]
            if layer not in features:
                raise ValueError(f"the Lucent objective asks for layer {layer!r}, which the model does not have")
            return features[layer]

        optimizer = torch.optim.Adam([spectrum], lr=lr)
        for _ in tqdm(range(steps), disable=not progress, desc="feature visualization", leave=False):
            optimizer.zero_grad(set_to_none=True)
            x = image_f()
            for t in chain:
                x = t(x)
            out = net(x)
            if kind == "class":
                if payload >= out.shape[1]:
                    raise ValueError(f"objective class {payload} is out of range for a model with {out.shape[1]} outputs")
                loss = -out[:, payload].sum()
            elif kind == "channel":
                act = features[payload[0]]
                if payload[2] >= act.shape[1]:
                    raise ValueError(f"objective channel {payload[2]} is out of range for layer {payload[0]!r} ({act.shape[1]} channels)")
                loss = -act[:, payload[2]].mean(tuple(range(1, act.dim() - 1))).sum() if act.dim() > 2 else -act[:, payload[2]].sum()
            else:
                features["__output__"] = out
                loss = payload(lucent_lookup)
            (grad,) = torch.autograd.grad(loss, [spectrum])  # never touches the model's .grad fields
            spectrum.grad = grad
            optimizer.step()
        with torch.no_grad():
            result = image_f().detach().float().cpu()
    finally:
        for handle in handles:
            handle.remove()
        features.clear()
        lucent_transform.device = old_lucent_device
        np.random.set_state(np_state)
        net.train(was_training)
    return result
