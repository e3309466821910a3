"""Feature visualization with Lucent's pieces, wrapped so it is safe to call from a library.

Lucent's ``render_vis`` opens an image viewer by default, assumes input in [0, 1], keeps its
random state in the global NumPy generator, places tensors on ``cuda:0`` whenever CUDA exists,
and leaves one forward hook on every submodule after each call. :func:`visualize` instead runs its
own short optimisation loop built from Lucent's parts:

- the image is Lucent's parameterisation: a Fourier-space (FFT) image with a 1/f spectrum scale,
  colour-decorrelated with Lucent's colour-correlation matrix and squashed by a sigmoid into [0, 1];
- every step applies Lucent's ``standard_transforms`` (pad, jitter, random scale, random rotate,
  jitter), then the model's input normalisation and a bilinear resize to the model's input side: both
  taken from the arguments or from what the model states (:func:`spade_utils.inputs.resolve_input_spec`:
  ``model.spade_input_spec``, set by :func:`spade_utils.models.load_model`, or a timm config), refused
  when neither says; the image reaches the model in the model's own dtype;
- options that make the picture more faithful or more varied: ``init=`` starts from a given image (the
  parameterisation inverted exactly, so zero steps return it) and ``init_weight=`` keeps the result near it
  (image-seeded *feature accentuation*); ``diversity=`` adds Lucent's diversity penalty over a batch;
  ``transforms="multiscale"`` adds random crops at several scales (:func:`multiscale_crops`);
- the objective is a class logit (``int``; ``output=`` picks the logits out of a model that returns a tuple
  or dict), a channel ``"layer:channel"`` (a module name from ``model.named_modules()``, dots or Lucent's
  underscores), or any Lucent ``Objective``.

Hooks are registered only for the layers the objective reads (all submodules for a generic Lucent
objective) and always removed, also after an error (Lucent's own ``render_vis`` leaves one per submodule);
every submodule's own train/eval flag is put back as found and the parameters' ``.grad`` fields are never
touched. A call is reproducible from its ``seed``: the global NumPy and torch generators are restored afterwards.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .inputs import resolve_input_spec
from .runtime import eval_mode, model_device, model_dtype, resolve_device
from .validation import check_float, check_int, check_seed, numpy_seed
from .widgets import progress_bar as tqdm

__all__ = ["visualize", "image_distance", "count_hooks", "multiscale_crops", "contrast_channels"]


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
        raise ValueError(
            f"a and b must be (B, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be an int >= 1, got {pool!r}")
    a, b = a.float(), b.float()
    if pool > 1:
        a, b = torch.nn.functional.avg_pool2d(a, pool), torch.nn.functional.avg_pool2d(b, pool)
    return (a - b).pow(2).flatten(1).mean(1).sqrt()


_INIT_CLAMP = 1e-4  # init pixels are clamped to [eps, 1 - eps] before the sigmoid is inverted


def _fft_image(
    batch: int,
    size: int,
    generator: torch.Generator,
    device: torch.device,
    sd: float = 0.01,
    init: torch.Tensor | None = None,
    decorrelate: bool = True,
):
    """Lucent's FFT parameterisation (``lucent.optvis.param.spatial.fft_image``) with a seeded init, or, with
    ``init`` ((batch, 3, size, size) in [0, 1]), the spectrum whose image is ``init``: the sigmoid, the colour
    decorrelation, the 1/4 saturation constant, the inverse FFT and the 1/f scale are undone in turn."""
    from lucent.optvis.param.spatial import rfft2d_freqs

    freqs = rfft2d_freqs(size, size)
    scale = 1.0 / np.maximum(freqs, 1.0 / size)
    scale = torch.as_tensor(scale, dtype=torch.float32, device=device)[None, None, ..., None]
    if init is None:
        spectrum = torch.randn((batch, 3, *freqs.shape, 2), generator=generator) * sd
        spectrum = spectrum.to(device)
    else:
        x = torch.logit(init.to(device, torch.float64).clamp(_INIT_CLAMP, 1 - _INIT_CLAMP))
        if decorrelate:
            matrix = _colour_matrix(device).double()
            x = torch.einsum("bdhw,dc->bchw", x, torch.linalg.inv(matrix))
        spec = torch.fft.rfftn(4.0 * x, s=(size, size), dim=(-2, -1), norm="ortho")
        spectrum = (torch.view_as_real(spec) / scale.double()).float()
    spectrum = spectrum.contiguous().requires_grad_(True)

    def image() -> torch.Tensor:
        spec = torch.view_as_complex((scale * spectrum).contiguous())
        img = torch.fft.irfftn(spec, s=(size, size), norm="ortho")
        return img[:batch, :3, :size, :size] / 4.0  # Lucid's constant that controls saturation

    return spectrum, image


def _colour_matrix(device: torch.device) -> torch.Tensor:
    from lucent.optvis.param.color import color_correlation_normalized

    return torch.as_tensor(color_correlation_normalized.T, device=device)


def _to_rgb(image_f, decorrelate: bool, device: torch.device):
    matrix = _colour_matrix(device)

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
        raise TypeError(
            "objective must be an int (class), a 'layer:channel' str or a Lucent Objective, got bool"
        )
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


def _check_output(output):
    if output is None or callable(output) or isinstance(output, str):
        return output
    return check_int(output, "output")


def _logits(out, output):
    """The (B, classes) logits out of the model's return value, as ``output`` says."""
    if output is None:
        picked, how = out, "the model's return value"
    elif callable(output):
        picked, how = output(out), "output(model's return value)"
    else:
        try:
            picked = out[output]
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(
                f"output={output!r} does not select an entry of the model's return value "
                f"({type(out).__name__}): {err!r}"
            ) from err
        how = f"the model's return value[{output!r}]"
    if not isinstance(picked, torch.Tensor):
        hint = " (pass output= an index, a key or a callable that picks the logits)" if output is None else ""
        raise ValueError(
            f"a class objective needs the logits as a tensor, but {how} is a {type(picked).__name__}{hint}"
        )
    if picked.dim() != 2:
        raise ValueError(
            f"a class objective needs (batch, classes) logits, but {how} has shape {tuple(picked.shape)}"
        )
    return picked


def _import_lucent_quietly() -> None:
    """Import Lucent (and kornia 0.4.1, which it needs) without kornia's import-time ``torch.jit.script``
    deprecation notice: it says nothing about the user's run and shows as a warning block in notebooks."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        import lucent.optvis.param.color  # noqa: F401
        import lucent.optvis.param.spatial  # noqa: F401
        import lucent.optvis.transform  # noqa: F401


def visualize(
    model: nn.Module,
    objective,
    *,
    steps: int = 256,
    size: int = 128,
    input_size: int | None = None,
    batch: int = 1,
    seed: int = 0,
    lr: float = 0.05,
    transforms: str | Sequence | None = "standard",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    output=None,
    decorrelate: bool = True,
    init: torch.Tensor | None = None,
    init_weight: float = 0.0,
    diversity: float = 0.0,
    diversity_layer: str | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> torch.Tensor:
    """Optimise an input image that maximises ``objective``; returns (batch, 3, size, size) float32 in [0, 1] on CPU.

    Feature visualization by optimisation (Olah et al., "Feature Visualization", Distill 2017) with Lucent's
    image parameterisation and transforms; see the module docstring.

    Parameters
    ----------
    model: a classifier taking (B, 3, H, W) input normalised with ``mean``/``std``; left as found (weights,
        per-module train/eval flags, hooks, ``.grad``); copied, not moved, if it lives on another device.
    objective: ``int`` -> that output logit (the model's return value, or the entry ``output`` picks);
        ``"layer:channel"`` -> mean activation of one channel of a named module's output;
        a Lucent ``Objective`` -> used as is (it sees Lucent's underscore names, ``"input"`` and ``"labels"``).
        The image maximises the objective (Lucent objectives are losses and are minimised as Lucent does).
    steps: optimisation steps (Adam, learning rate ``lr`` > 0); 0 returns the starting image. size: side of the optimised image in pixels (>= 8).
    input_size: side in pixels the transformed image is resized to before the model; default (None): the side
        the model states (``model.spade_input_spec``, timm config, torchvision ViT), else ValueError. Pass
        ``input_size=size`` for no resize.
    batch: independent images, each from its own random start, optimised together.
    seed: an int in [0, 2**63); seeds the image initialisation and Lucent's random transforms; the same seed gives
        the same image.
    transforms: ``"standard"`` (Lucent's ``standard_transforms``), ``"multiscale"`` (the standard ones, then
        :func:`multiscale_crops` with its defaults: every step sees a random crop of 30-100% of the side, resized
        back, so the picture must work at several scales), ``None`` or a list of callables.
    mean, std: per-channel input normalisation in [0, 1] units, applied after the transforms; default (None): what
        the model states, else ValueError. For a model taking [0, 1] input pass ``mean=(0, 0, 0), std=(1, 1, 1)``.
    output: for a model whose forward returns a tuple, list or dict: an index or key, or a callable mapping the
        return value to the (B, classes) logits (class and Lucent ``"labels"`` objectives read it).
    decorrelate: use Lucent's colour decorrelation.
    init: start from this image instead of random noise: (3, H, W) or (batch, 3, H, W), float in [0, 1] (bilinear
        resize to ``size``; pixels clamped to [1e-4, 1 - 1e-4] so the sigmoid can be inverted). The spectrum is
        set so that the parameterised image equals ``init``: with ``steps=0`` the result is ``init``.
    init_weight: >= 0; adds ``init_weight * mean((image - init)^2)`` (per image, pixels in [0, 1]) to the loss,
        which keeps the result near ``init``. With ``init`` this is image-seeded *feature accentuation*
        (Hamblin et al. 2024, "Feature Accentuation: Revealing 'What' Features Respond to in Natural Images",
        arXiv 2402.10039): the picture shows what in *this* image drives the objective. Needs ``init``.
    diversity: >= 0; subtracts ``diversity`` times Lucent's ``objectives.diversity(diversity_layer)`` from the
        loss: the mean (over images) summed cosine similarity of each image's channel Gram matrix at
        ``diversity_layer`` with the other images' (Olah et al. 2017, "Diversity"), so a batch shows several
        ways to drive the objective. Needs ``batch >= 2`` and ``diversity_layer`` (a module name, as for a
        channel objective, whose output is (B, C, H, W)).
    device: ``"auto"`` -> CUDA when present.
    progress: show a tqdm bar.

    Raises
    ------
    TypeError / ValueError naming the argument, before any optimisation step: bad numbers, unknown layer, input
    size or normalisation neither given nor stated by the model, ``init`` of the wrong shape or outside [0, 1],
    ``init_weight`` without ``init``, ``diversity`` without ``diversity_layer`` or with ``batch < 2``. ValueError at the first forward pass: a class
    or channel index out of range, a layer the forward never calls, logits that are not a (B, classes) tensor.
    """
    _import_lucent_quietly()
    steps, size, batch, seed, lr, output, (kind, payload), spec = _check_visualize_arguments(
        model, objective, steps, size, input_size, batch, seed, lr, transforms, mean, std, output
    )
    init, init_weight, diversity, diversity_name = _check_extras(
        model, init, init_weight, diversity, diversity_layer, batch, size
    )
    dev = resolve_device(device)
    dtype = model_dtype(model)

    import lucent.optvis.transform as lucent_transform

    net = model if model_device(model) == dev else copy.deepcopy(model).to(dev)
    if kind == "channel":  # find the hooked module in the (possibly copied) network
        payload = (payload[0], dict(net.named_modules())[payload[0]], payload[2])
    extras: dict[str, Any] = dict(
        init=None if init is None else init.to(dev),
        init_weight=init_weight,
        diversity=diversity,
        diversity_module=None if diversity_name is None else dict(net.named_modules())[diversity_name],
    )
    old_lucent_device = lucent_transform.device
    np_state = np.random.get_state()
    handles: list = []
    features: dict[str, torch.Tensor] = {}
    try:
        with eval_mode(net):  # every submodule's own flag is restored on exit, also after an error
            lucent_transform.device = dev  # Lucent's jitter/rotate read this module global at call time
            # Lucent's random transforms draw from NumPy's global generator (restored)
            np.random.seed(numpy_seed(seed))
            gen = torch.Generator().manual_seed(seed)
            spectrum, raw = _fft_image(batch, size, gen, dev, init=extras["init"], decorrelate=decorrelate)
            image_f = _to_rgb(raw, decorrelate, dev)
            chain = _transform_chain(transforms, spec, dev)
            result = _optimise(
                net,
                kind,
                payload,
                output,
                image_f,
                spectrum,
                chain,
                steps,
                lr,
                dtype,
                handles,
                features,
                progress,
                extras,
            )
    finally:
        for handle in handles:
            handle.remove()
        features.clear()
        lucent_transform.device = old_lucent_device
        np.random.set_state(np_state)
    return result


def _check_visualize_arguments(
    model, objective, steps, size, input_size, batch, seed, lr, transforms, mean, std, output
):
    """:func:`visualize`'s arguments, checked in this order before any work (TypeError/ValueError naming the
    argument): (steps, size, batch, seed, lr, output, (objective kind, payload), the model's InputSpec)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    steps = check_int(steps, "steps", minimum=0)
    size = check_int(size, "size", minimum=8)
    batch = check_int(batch, "batch", minimum=1)
    seed = check_seed(seed)
    if input_size is not None:
        input_size = check_int(input_size, "input_size", minimum=8)
    lr = check_float(lr, "lr", low=0.0, low_open=True)
    if isinstance(transforms, str):
        if transforms not in ("standard", "multiscale"):
            raise ValueError(
                f"transforms must be 'standard', 'multiscale', None or a list of callables, got {transforms!r}"
            )
    elif transforms is not None and not all(callable(t) for t in transforms):
        raise TypeError("transforms must be 'standard', 'multiscale', None or a list of callables")
    output = _check_output(output)
    objective = _parse_objective(model, objective)
    spec = resolve_input_spec(model, size=input_size, mean=mean, std=std, fn_name="visualize")
    return steps, size, batch, seed, lr, output, objective, spec


def _check_extras(model, init, init_weight, diversity, diversity_layer, batch, size):
    """:func:`visualize`'s seeding and diversity arguments -> (init (batch, 3, size, size) float32 or None,
    init_weight, diversity, the diversity module's name or None); TypeError/ValueError naming the argument."""
    init_weight = check_float(init_weight, "init_weight", low=0.0)
    diversity = check_float(diversity, "diversity", low=0.0)
    if init is not None:
        if not isinstance(init, torch.Tensor):
            raise TypeError(
                f"init must be a torch tensor (3, H, W) or (batch, 3, H, W), got {type(init).__name__}"
            )
        x = init.detach().float().cpu()
        x = x[None] if x.dim() == 3 else x
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[0] not in (1, batch):
            raise ValueError(f"init must be (3, H, W) or ({batch}, 3, H, W), got {tuple(init.shape)}")
        if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise ValueError("init must hold finite values in [0, 1]")
        if x.shape[-2:] != (size, size):
            x = nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        init = x.clamp(0, 1).expand(batch, -1, -1, -1).contiguous()
    elif init_weight > 0:
        raise ValueError("init_weight > 0 needs init (the image the result is kept near)")
    name = None
    if diversity > 0:
        if batch < 2:
            raise ValueError(
                f"diversity > 0 needs batch >= 2 (it compares the images of a batch), got batch={batch}"
            )
        if diversity_layer is None:
            raise ValueError(
                "diversity > 0 needs diversity_layer (the module whose Gram matrices are compared)"
            )
        name, _ = _resolve_layer(model, diversity_layer)
    elif diversity_layer is not None:
        _resolve_layer(model, diversity_layer)
    return init, init_weight, diversity, name


def multiscale_crops(min_scale: float = 0.3, max_scale: float = 1.0):
    """A transform for :func:`visualize`'s ``transforms`` list: each image of the (B, C, H, W) batch is cut to a
    random square of side ``s * min(H, W)`` (``s`` uniform in [``min_scale``, ``max_scale``], position uniform)
    and resized back to (H, W), bilinearly. The picture must then drive the objective at several scales, which
    favours a compact, object-like feature over a texture spread over the whole canvas (the random crops of
    Fel et al. 2023, "Unlocking Feature Visualization for Deeper Networks with MAgnitude Constrained
    Optimization"). Draws from NumPy's global generator, as Lucent's own transforms do (:func:`visualize`
    seeds and restores it). Raises ValueError unless 0 < min_scale <= max_scale <= 1."""
    min_scale = check_float(min_scale, "min_scale", low=0.0, high=1.0, low_open=True)
    max_scale = check_float(max_scale, "max_scale", low=0.0, high=1.0, low_open=True)
    if min_scale > max_scale:
        raise ValueError(f"min_scale must be <= max_scale, got {min_scale} > {max_scale}")

    def crop(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = []
        for image in x:
            side = max(1, int(round(np.random.uniform(min_scale, max_scale) * min(h, w))))
            top = np.random.randint(0, h - side + 1)
            left = np.random.randint(0, w - side + 1)
            window = image[None, :, top : top + side, left : left + side]
            out.append(nn.functional.interpolate(window, size=(h, w), mode="bilinear", align_corners=False))
        return torch.cat(out)

    return crop


def contrast_channels(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    reference: torch.Tensor,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Mean activation of each channel of ``layer`` on ``images`` minus on ``reference``: (C,) float32 on CPU.

    Picks a channel objective for :func:`visualize` that is specific to what ``images`` have and ``reference``
    lacks (e.g. triggered vs clean versions of the same crops): ``contrast_channels(...).argmax()``. The mean is
    over images and spatial positions of the module's output. ``images``, ``reference``: (B, 3, H, W) in [0, 1],
    normalised with ``mean``/``std`` (default: what the model states, else ValueError) and fed at their own size
    in the model's dtype, on the model's device. The model is left as found (flags, hooks, ``.grad``).
    Raises TypeError/ValueError naming the argument."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    name, module = _resolve_layer(model, layer)
    for arg, x in (("images", images), ("reference", reference)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or len(x) == 0:
            raise ValueError(f"{arg} must be a non-empty (B, 3, H, W) tensor")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    spec = resolve_input_spec(model, size=1, mean=mean, std=std, fn_name="contrast_channels")
    dev, dtype = model_device(model), model_dtype(model)
    m = torch.tensor(spec.mean, device=dev).view(1, -1, 1, 1)
    s = torch.tensor(spec.std, device=dev).view(1, -1, 1, 1)
    features: dict[str, torch.Tensor] = {}
    handle = module.register_forward_hook(_keep_output(features, name))

    def channel_means(x: torch.Tensor) -> torch.Tensor:
        total = None
        for chunk in x.split(batch_size):
            model(((chunk.to(dev).float() - m) / s).to(dtype))
            act = features.get(name)
            if not isinstance(act, torch.Tensor) or act.dim() < 2:
                raise ValueError(f"layer {name!r} did not return a (batch, channels, ...) tensor")
            part = act.float().flatten(2).mean(2).sum(0) if act.dim() > 2 else act.float().sum(0)
            total = part if total is None else total + part
        assert total is not None
        return total / len(x)

    try:
        with eval_mode(model), torch.no_grad():
            return (channel_means(images) - channel_means(reference)).cpu()
    finally:
        handle.remove()
        features.clear()


def _transform_chain(transforms, spec, dev: torch.device) -> list:
    """The callables applied to the [0, 1] image at every step: ``transforms`` (``"standard"``: Lucent's
    ``standard_transforms``), then the model's normalisation and a bilinear resize to its input side."""
    import lucent.optvis.transform as lucent_transform

    if transforms == "standard":
        chain = list(lucent_transform.standard_transforms)
    elif transforms == "multiscale":
        chain = [*lucent_transform.standard_transforms, multiscale_crops()]
    else:
        chain = list(transforms or [])
    m = torch.tensor(spec.mean, device=dev).view(1, -1, 1, 1)
    s = torch.tensor(spec.std, device=dev).view(1, -1, 1, 1)
    chain.append(lambda x: (x - m) / s)
    chain.append(
        lambda x: nn.functional.interpolate(
            x, size=(spec.side(), spec.side()), mode="bilinear", align_corners=True
        )
    )
    return chain


def _keep_output(features: dict, name: str):
    """A forward hook that stores its module's output in ``features[name]``."""

    def hook(module, inputs, out):
        features[name] = out

    return hook


def _optimise(
    net,
    kind,
    payload,
    output,
    image_f,
    spectrum,
    chain,
    steps,
    lr,
    dtype,
    handles,
    features,
    progress,
    extras,
) -> torch.Tensor:
    from lucent.optvis.objectives import diversity as lucent_diversity

    if extras["diversity_module"] is not None:
        handles.append(
            extras["diversity_module"].register_forward_hook(_keep_output(features, "__diversity__"))
        )
        diversity_objective = lucent_diversity("__diversity__")
    if kind == "channel":
        name, module, channel = payload
        handles.append(module.register_forward_hook(_keep_output(features, name)))
    elif kind == "lucent":
        for name, module in net.named_modules():
            if name:
                handles.append(module.register_forward_hook(_keep_output(features, name.replace(".", "_"))))

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
        out = net(x.to(dtype))  # the image is optimised in float32 and fed in the model's own dtype
        if kind == "class":
            logits = _logits(out, output)
            if payload >= logits.shape[1]:
                raise ValueError(
                    f"objective class {payload} is out of range for a model with {logits.shape[1]} outputs"
                )
            loss = -logits[:, payload].float().sum()
        elif kind == "channel":
            name, _, channel = payload
            act = features.get(name)
            if act is None:
                raise ValueError(
                    f"objective layer {name!r} never ran in the model's forward pass, so it has no "
                    "activation to maximise; pick a module the forward calls"
                )
            if not isinstance(act, torch.Tensor) or act.dim() < 2:
                raise ValueError(
                    f"objective layer {name!r} returns "
                    f"{tuple(act.shape) if isinstance(act, torch.Tensor) else type(act).__name__}, "
                    "not a (batch, channels, ...) tensor"
                )
            if channel >= act.shape[1]:
                raise ValueError(
                    f"objective channel {channel} is out of range for layer {name!r} ({act.shape[1]} channels)"
                )
            act = act[:, channel].float()
            loss = -act.mean(tuple(range(1, act.dim()))).sum() if act.dim() > 1 else -act.sum()
        else:
            features["__output__"] = _logits(out, output) if output is not None else out
            loss = payload(lucent_lookup)
        if extras["init_weight"] > 0:
            loss = loss + extras["init_weight"] * (image_f() - extras["init"]).pow(2).flatten(1).mean(1).sum()
        if extras["diversity"] > 0:
            div = features["__diversity__"]
            if not isinstance(div, torch.Tensor) or div.dim() != 4:
                raise ValueError("diversity_layer must return a (batch, channels, height, width) tensor")
            # Lucent's diversity objective is minus the similarity; subtracting it penalises similarity
            loss = loss - extras["diversity"] * diversity_objective(lambda name: features[name].float())
        (grad,) = torch.autograd.grad(loss, [spectrum])  # never touches the model's .grad fields
        spectrum.grad = grad
        optimizer.step()
    with torch.no_grad():
        return image_f().detach().float().cpu()
