"""Saliency maps through one call: Captum's gradient and perturbation methods, and LRP through Zennit.

``attribute(model, x, target, method, **options)`` returns a (B, H, W) map for a batch of
ImageNet-normalised images ``x`` (B, 3, H, W). The channel dimension is reduced by a **signed sum**
over the input channels (so positive and negative evidence can cancel within a pixel, as in the
SPADE paper's insertion/deletion protocol); callers who want magnitudes take ``.abs()``. Grad-CAM maps
are upsampled (bilinear) from the chosen layer's resolution and are non-negative (ReLU, as in Grad-CAM).

Every call works on a deep copy of the model, so neither Captum's hooks nor Zennit's canonizers
(which merge batch-norm parameters into convolutions and replace ``forward`` methods) can change the
caller's model, a SPADE trace's weights included. On that copy:

- activation modules used more than once in a forward pass (torchvision's ResNet blocks reuse
  ``self.relu``; EfficientNet-Lite reuses ``self._swish``) are given one instance per use, which
  Captum's DeepLift and Guided Backprop need;
- ``ReLU6`` (EfficientNet-Lite) becomes :class:`ClampedReLU`, a ``nn.ReLU`` subclass with the same
  forward, so Guided Backprop treats it as a ReLU and DeepLift applies its rescale rule to it;
- for LRP, every batch norm is folded into the convolution or linear layer that feeds it, with the pairs
  read from the **forward graph** of the copy (one probe forward with hooks: the batch norm's input tensor
  must *be* the layer's output tensor, unmodified), not from registration order or leaf adjacency (Zennit's
  ``SequentialMergeBatchNorm`` merges 0 of the 49 batch norms of EfficientNet-Lite0, whose convolutions own a
  padding child, and folds ``bn1`` into ``conv2`` in a model that registers conv1, conv2, bn1, bn2). The fold
  is Zennit's ``NamedMergeBatchNorm`` with those pairs, checked to leave the logits unchanged. A batch norm
  fed by anything else (an activation, a sum, the input) or used twice makes LRP refuse (ValueError);
- for LRP, residual adds are routed through ``zennit.layer.Sum`` modules (``canonizers="auto"``):
  ``zennit.torchvision`` Bottleneck/BasicBlock canonizers for torchvision ResNets,
  :class:`EfficientNetLiteCanonizer` for EfficientNet-Lite;
- Guided Backprop (Captum changes the gradient of ``nn.ReLU`` modules only) and DeepLift (Captum applies
  its rules to the nonlinearity *modules* it supports, each called once) are refused (ValueError) for a
  model whose forward applies a nonlinearity they cannot see (``F.relu``, ``torch.sigmoid``, ``nn.SiLU``,
  a reused activation module): one probe forward records every such call. DeepLift's attributions are
  also checked for completeness (their sum equals ``f(x) - f(baseline)``, Shrikumar et al. 2017, eq. 1).

LIME is Captum's ``Lime`` on superpixels (skimage SLIC by default, or a regular grid), seeded per image;
every pixel carries its superpixel's coefficient (see :func:`attribute`, ``lime_*`` options).

Captum's own LRP is deliberately not offered: it silently returns wrong relevance on residual networks.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .archs import (
    ClampedReLU,
    EfficientNetLiteCanonizer,
    is_efficientnet,
    prepare_for_captum,
    residual_canonizers,
)
from .attribution_prep import (
    check_captum_sees_nonlinearities,
    fold_batchnorms,
    lrp_composite,
    register_clamped_relu_with_deeplift,
)
from .runtime import model_dtype, resolve_device
from .validation import (
    check_finite_tensor,
    check_float,
    check_int,
    check_positive_int,
    check_seed,
    numpy_seed,
)

__all__ = [
    "SALIENCY_METHODS",
    "LRP_RULES",
    "LIME_SEGMENTATIONS",
    "attribute",
    "last_conv_layer",
    "gradcam_layer",
    "ClampedReLU",
    "EfficientNetLiteCanonizer",
    "attribution_aucs",
    "display_maps",
]

SALIENCY_METHODS = [
    "saliency",
    "input_x_gradient",
    "integrated_gradients",
    "guided_backprop",
    "deeplift",
    "gradient_shap",
    "occlusion",
    "lime",
    "grad_cam",
    "guided_grad_cam",
    "lrp",
]

LRP_RULES = ["epsilon_plus_flat", "epsilon_plus", "epsilon_alpha2_beta1", "alpha1_beta0"]

LIME_SEGMENTATIONS = ["slic", "grid"]


# ----------------------------------------------------------------------------- helpers


def last_conv_layer(model: nn.Module) -> str:
    """Name of the last ``nn.Conv2d`` in registration order, skipping shortcut convolutions
    (names containing ``downsample`` or ``shortcut``, which torchvision registers after a block's main path)."""
    names = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and "downsample" not in name and "shortcut" not in name
    ]
    if not names:
        raise ValueError("model has no nn.Conv2d layer; pass layer= explicitly")
    return names[-1]


def gradcam_layer(model: nn.Module) -> str:
    """The default Grad-CAM layer: the last feature map after its activation where the architecture is known
    (torchvision ResNet: ``layer4``; EfficientNet-Lite: the head activation), else :func:`last_conv_layer`."""
    from torchvision.models.resnet import ResNet

    if isinstance(model, ResNet):
        return "layer4"
    if is_efficientnet(model):
        return "spade_act_head" if hasattr(model, "spade_act_head") else "_bn1"
    return last_conv_layer(model)


def _targets(target, batch: int) -> torch.Tensor:
    if isinstance(target, bool):
        raise TypeError("target must be an int or a sequence/tensor of ints, got bool")
    if isinstance(target, int):
        t = torch.full((batch,), target, dtype=torch.long)
    elif isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.dim() > 1:
            raise TypeError("target as a tensor must be a 0-d or 1-d integer tensor")
        t = target.detach().cpu().long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch).clone()
    elif isinstance(target, Sequence) and all(isinstance(v, int) and not isinstance(v, bool) for v in target):
        t = torch.tensor(list(target), dtype=torch.long)
    else:
        raise TypeError(f"target must be an int or a sequence/tensor of ints, got {type(target).__name__}")
    if t.numel() != batch:
        raise ValueError(f"target has {t.numel()} entries for a batch of {batch}")
    if (t < 0).any():
        raise ValueError("target classes must be >= 0")
    return t


# ----------------------------------------------------------------------------- the one call


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    target,
    method: str,
    *,
    layer: str | None = None,
    n_steps: int = 32,
    internal_batch_size: int = 32,
    n_samples: int = 16,
    stdevs: float = 0.1,
    window: int = 32,
    stride: int = 16,
    perturbations_per_eval: int = 16,
    rule: str = "epsilon_plus_flat",
    canonizers="auto",
    lime_samples: int = 256,
    lime_segments: int = 50,
    lime_segmentation: str = "slic",
    lime_alpha: float = 0.0,
    batch_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
) -> torch.Tensor:
    """Saliency map of ``model`` for class ``target`` on normalised images ``x``: (B, H, W) float32 on the CPU.

    Parameters
    ----------
    model: classifier returning logits (B, classes); never modified: attribution runs on a deep copy in eval
        mode, so the caller's weights, per-module train/eval flags, hooks, dtype and device stay as found.
    x: (B, C, H, W) float tensor, normalised as the model expects; finite. It is fed to the model in the model's
        own dtype (a float64 or bfloat16 model gets float64 or bfloat16 input).
    target: one class for all images (int) or one per image (sequence or 1-d tensor of ints).
    method: one of :data:`SALIENCY_METHODS`.
    layer: Grad-CAM / Guided Grad-CAM layer name (default: :func:`gradcam_layer`).
    n_steps, internal_batch_size: Integrated Gradients path steps and images per forward pass.
    n_samples, stdevs: Gradient SHAP samples per image and input noise standard deviation, in the model's
        normalised input units. Baselines (Gradient SHAP, DeepLift, IG) are the all-zero normalised image, which
        is the per-channel dataset mean under the model's own normalisation, whatever it is.
    window, stride, perturbations_per_eval: Occlusion square patch side, step, and patches per forward pass
        (patches are replaced by zero in normalised space: the dataset mean); ``perturbations_per_eval`` is
        also LIME's number of perturbed images per forward pass.
    lime_samples, lime_segments, lime_segmentation, lime_alpha: LIME (Ribeiro et al. 2016, "Why should I
        trust you?", KDD; Captum's ``Lime``): ``lime_samples`` (int >= 2, default 256) random on/off patterns
        of ``lime_segments`` (int >= 2, at most H*W, default 50) superpixels, switched-off superpixels set to
        zero in normalised space (the dataset mean, as Occlusion); the target logit of each pattern is fitted
        by a linear model weighted by Captum's default similarity: ordinary weighted least squares with the
        default ``lime_alpha=0`` (float >= 0), or Captum's Lasso with that penalty (Captum's own default is
        0.01; a Lasso's penalty acts on the logit's scale, so it would zero more superpixels of a trace with
        flatter logits than of the dense model, which biases a dense-vs-SPADE comparison), weighted by Captum's default
        similarity (exponential kernel, width 1, on the cosine distance to the image). Every pixel gets its
        superpixel's coefficient, summed over the C channels like every other method (so C x the
        coefficient). ``lime_segmentation``: ``"slic"`` (default) -- skimage's SLIC superpixels (compactness
        10, in Lab colour) of the image min-max rescaled to [0, 1]: they follow colour edges, as the
        superpixels of the original LIME do, so an object or a pasted patch is a few whole superpixels and its
        map has the object's outline; the segmentation depends on the image only, so every model variant
        explaining one image gets the same superpixels. ``"grid"``: square cells of side
        ceil(sqrt(H*W / lime_segments)) from the top-left corner, blind to the content (a control for what the
        segmentation itself contributes). The SPADE paper uses Captum's LIME and states no segmentation or
        sample count; these defaults are ours. Cost: ``lime_samples / perturbations_per_eval`` forward passes
        per image.
    rule: LRP rule set, one of :data:`LRP_RULES` (``"alpha1_beta0"`` is the paper's setting).
    canonizers: ``"auto"`` (residual-add canonizers by architecture, see the module docstring) or a list of Zennit
        canonizers for LRP. Either way, batch norms are first folded from the forward graph.
    batch_size: images per attribution call (default: the whole batch).
    seed: seeds Gradient SHAP's and LIME's random draws (each image gets the same draws whatever the batch, so a
        batch equals its images attributed one by one); an int in [0, 2**63); the global RNG states are restored.
    device: ``"auto"`` -> CUDA when present.

    Raises
    ------
    TypeError / ValueError naming the argument for bad input, before any attribution. ValueError for LRP on a
    model whose batch norms cannot be folded from its forward graph, for Guided Backprop / Guided Grad-CAM /
    DeepLift on a model whose nonlinearities those methods cannot see, and for DeepLift attributions that break
    completeness (|sum - (f(x) - f(0))| above 1e-3 of the logits' scale).
    """
    stdevs, lime, seed, targets = _check_attribute_arguments(
        model,
        x,
        target,
        method,
        layer=layer,
        counts=dict(
            n_steps=n_steps,
            internal_batch_size=internal_batch_size,
            n_samples=n_samples,
            window=window,
            stride=stride,
            perturbations_per_eval=perturbations_per_eval,
        ),
        stdevs=stdevs,
        rule=rule,
        canonizers=canonizers,
        lime_options=(lime_samples, lime_segments, lime_segmentation, lime_alpha),
        batch_size=batch_size,
        seed=seed,
    )
    dev = resolve_device(device)
    dtype = model_dtype(model)
    net, canonizers, layer = _attribution_copy(model, x, method, layer, canonizers, dev, dtype)
    options = dict(
        layer=layer,
        n_steps=n_steps,
        internal_batch_size=internal_batch_size,
        n_samples=n_samples,
        stdevs=stdevs,
        window=window,
        stride=stride,
        perturbations_per_eval=perturbations_per_eval,
        rule=rule,
        canonizers=canonizers,
        seed=seed,
        lime=lime,
    )
    step = batch_size or x.shape[0]
    maps = []
    for start in range(0, x.shape[0], step):
        xb = x[start : start + step].detach().to(device=dev, dtype=dtype)
        tb = targets[start : start + step].to(dev)
        maps.append(_attribute_quietly(net, xb, tb, method, **options))
    return torch.cat(maps)


def _check_attribute_arguments(
    model, x, target, method, *, layer, counts, stdevs, rule, canonizers, lime_options, batch_size, seed
) -> tuple[float, dict, int, torch.Tensor]:
    """:func:`attribute`'s arguments, checked in this order before any work (TypeError/ValueError naming the
    argument): (stdevs, LIME's options, seed, the (B,) int64 targets). ``counts``: name -> a positive int."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a float torch tensor of shape (B, 3, H, W)")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one image, got an empty batch")
    check_finite_tensor(x, "x")
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, got {type(method).__name__}")
    if method not in SALIENCY_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {SALIENCY_METHODS}")
    if rule not in LRP_RULES:
        raise ValueError(f"unknown LRP rule {rule!r}; choose one of {LRP_RULES}")
    for name, value in counts.items():
        check_positive_int(value, name)
    stdevs = check_float(stdevs, "stdevs", low=0.0)
    lime_samples, lime_segments, lime_segmentation, lime_alpha = lime_options
    # every option is checked whatever the method; the image-size bound on the segments only matters to LIME
    size = x.shape[-2:] if method == "lime" else None
    lime = _check_lime_options(lime_samples, lime_segments, lime_segmentation, lime_alpha, size)
    if batch_size is not None:
        check_positive_int(batch_size, "batch_size")
    seed = check_seed(seed)
    targets = _targets(target, x.shape[0])
    if layer is not None:
        if not isinstance(layer, str):
            raise TypeError(f"layer must be a str, got {type(layer).__name__}")
        if layer not in dict(model.named_modules()) or layer == "":
            raise ValueError(f"layer {layer!r} is not a submodule of the model")
    if canonizers != "auto" and not isinstance(canonizers, (list, tuple)):
        raise TypeError("canonizers must be 'auto' or a list of Zennit canonizers")
    return stdevs, lime, seed, targets


def _attribution_copy(
    model, x, method, layer, canonizers, dev, dtype
) -> tuple[nn.Module, object, str | None]:
    """(a deep copy of ``model`` on ``dev`` in eval mode, parameters frozen, prepared for ``method``: batch norms
    folded for LRP, else Captum-ready; the LRP canonizers (copies of the caller's); the Grad-CAM layer). Raises
    ValueError for a model the method cannot attribute (see :func:`attribute`)."""
    net = copy.deepcopy(model).to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    probe = x[:1].detach().to(device=dev, dtype=dtype)
    if method == "lrp":
        fold_batchnorms(net, probe)
        if canonizers == "auto":
            canonizers = residual_canonizers(net)
        else:
            canonizers = [copy.deepcopy(c) for c in canonizers]
    else:
        prepare_for_captum(net)
        if method in ("guided_backprop", "guided_grad_cam", "deeplift"):
            register_clamped_relu_with_deeplift()
            check_captum_sees_nonlinearities(net, probe, method)
    if method in ("grad_cam", "guided_grad_cam"):
        layer = layer or gradcam_layer(net)
    return net, canonizers, layer


_CAPTUM_NOTICES = (
    r"Setting backward hooks on ReLU activations",
    r"Setting forward, backward hooks and attributes on non-linear",
    r"Internal batch size cannot be less than the number of input examples",
)


def _attribute_quietly(net, x, t, method, **options) -> torch.Tensor:
    """:func:`_attribute_batch` without Captum's notices, as (B, H, W) float32 on the CPU."""
    with warnings.catch_warnings():
        # Captum's notices that it hooks activations (the work happens on a copy) and that it clamps the
        # internal batch size: expected here, and warning blocks in every notebook that attributes
        for message in _CAPTUM_NOTICES:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        return _attribute_batch(net, x, t, method, **options).detach().float().cpu()


def _attribute_batch(
    net,
    x,
    t,
    method,
    *,
    layer,
    n_steps,
    internal_batch_size,
    n_samples,
    stdevs,
    window,
    stride,
    perturbations_per_eval,
    rule,
    canonizers,
    seed,
    lime,
) -> torch.Tensor:
    import captum.attr as ca

    x = x.clone().requires_grad_(True)
    zeros = torch.zeros_like(x)
    if method == "lrp":
        return _lrp(net, x, t, rule, canonizers)
    if method == "saliency":
        a = ca.Saliency(net).attribute(x, target=t, abs=False)
    elif method == "input_x_gradient":
        a = ca.InputXGradient(net).attribute(x, target=t)
    elif method == "integrated_gradients":
        a = ca.IntegratedGradients(net).attribute(
            x, baselines=zeros, target=t, n_steps=n_steps, internal_batch_size=internal_batch_size
        )
    elif method == "guided_backprop":
        a = ca.GuidedBackprop(net).attribute(x, target=t)
    elif method == "deeplift":
        register_clamped_relu_with_deeplift()
        a, delta = ca.DeepLift(net).attribute(x, baselines=zeros, target=t, return_convergence_delta=True)
        _check_completeness(net, x, zeros, t, delta)
    elif method == "gradient_shap":
        a = _gradient_shap(net, x, zeros, t, seed=seed, n_samples=n_samples, stdevs=stdevs)
    elif method == "occlusion":
        a = ca.Occlusion(net).attribute(
            x,
            sliding_window_shapes=(x.shape[1], window, window),
            strides=(x.shape[1], stride, stride),
            baselines=0,
            target=t,
            perturbations_per_eval=perturbations_per_eval,
        )
    elif method == "lime":
        a = _lime(net, x, t, seed=seed, perturbations_per_eval=perturbations_per_eval, **lime)
    elif method == "grad_cam":
        module = dict(net.named_modules())[layer]
        cam = ca.LayerGradCam(net, module).attribute(x, target=t, relu_attributions=True)
        return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).sum(1)
    else:  # guided_grad_cam
        module = dict(net.named_modules())[layer]
        a = ca.GuidedGradCam(net, module).attribute(x, target=t, interpolate_mode="bilinear")
    return a.sum(1)


def _gradient_shap(net, x, zeros, t, *, seed, n_samples, stdevs) -> torch.Tensor:
    """Captum's Gradient SHAP per image, with the same random draws for an image whatever its batch."""
    import captum.attr as ca
    import numpy as np

    parts = []
    np_state = np.random.get_state()  # Captum draws the path positions from NumPy's global generator
    try:
        for i in range(x.shape[0]):  # the same random draws for an image whatever batch it sits in
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(seed)
                np.random.seed(numpy_seed(seed))
                parts.append(
                    ca.GradientShap(net).attribute(
                        x[i : i + 1],
                        baselines=zeros[:1],
                        target=t[i : i + 1],
                        n_samples=n_samples,
                        stdevs=stdevs,
                    )
                )
    finally:
        np.random.set_state(np_state)
    return torch.cat(parts)


def _check_lime_options(samples, segments, segmentation, alpha, size) -> dict:
    """LIME's options, checked (TypeError/ValueError naming the option) before any work; ``size`` (H, W) bounds
    ``lime_segments`` by the pixel count when LIME will run (None: no bound)."""
    samples = check_int(samples, "lime_samples", minimum=2)
    most = None if size is None else int(size[0]) * int(size[1])
    segments = check_int(segments, "lime_segments", minimum=2, maximum=most)
    if not isinstance(segmentation, str):
        raise TypeError(f"lime_segmentation must be a str, got {type(segmentation).__name__}")
    if segmentation not in LIME_SEGMENTATIONS:
        raise ValueError(f"lime_segmentation must be one of {LIME_SEGMENTATIONS}, got {segmentation!r}")
    alpha = check_float(alpha, "lime_alpha", low=0.0)
    return dict(samples=samples, segments=segments, segmentation=segmentation, alpha=alpha)


def _superpixels(image: torch.Tensor, segments: int, segmentation: str) -> torch.Tensor:
    """(H, W) int64 labels 0..K-1 of one image (C, H, W) (any normalisation): see :func:`attribute`'s
    ``lime_segmentation``. SLIC may return fewer or more than ``segments`` superpixels (it seeds a grid of
    about that many and keeps them connected); the labels are renumbered to be contiguous."""
    import numpy as np

    h, w = image.shape[-2:]
    if segmentation == "grid":
        side = math.ceil(math.sqrt(h * w / segments))
        rows = torch.arange(h) // side
        cols = torch.arange(w) // side
        return rows[:, None] * (math.ceil(w / side)) + cols[None, :]
    from skimage.segmentation import slic

    img = image.detach().double().cpu().permute(1, 2, 0).numpy()
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    labels = slic(
        img,
        n_segments=segments,
        compactness=10.0,
        start_label=0,
        channel_axis=-1,
        convert2lab=img.shape[-1] == 3,
    )
    _, contiguous = np.unique(labels, return_inverse=True)
    return torch.from_numpy(contiguous.reshape(h, w).astype(np.int64))


def _lime(net, x, t, *, seed, perturbations_per_eval, samples, segments, segmentation, alpha) -> torch.Tensor:
    """Captum's LIME per image on superpixels, with the same random patterns for an image whatever its batch."""
    import captum.attr as ca
    import numpy as np
    from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression

    parts = []
    np_state = np.random.get_state()
    try:
        for i in range(x.shape[0]):
            mask = _superpixels(x[i], segments, segmentation).to(x.device)[None, None]
            surrogate = SkLearnLasso(alpha=alpha) if alpha > 0 else SkLearnLinearRegression()
            # Captum draws the on/off patterns from torch's global generator: seed a fork of it
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(seed)
                np.random.seed(numpy_seed(seed))
                parts.append(
                    ca.Lime(net, interpretable_model=surrogate).attribute(
                        x[i : i + 1].detach(),
                        baselines=0.0,
                        target=t[i : i + 1],
                        feature_mask=mask.expand(1, x.shape[1], -1, -1),
                        n_samples=samples,
                        perturbations_per_eval=perturbations_per_eval,
                        return_input_shape=True,
                    )
                )
    finally:
        np.random.set_state(np_state)
    return torch.cat(parts)


def _check_completeness(net, x, baseline, t, delta) -> None:
    """DeepLift's summation-to-delta (Shrikumar et al. 2017, eq. 1): refuse attributions that break it."""
    with torch.no_grad():
        fx = net(x).gather(1, t[:, None])[:, 0]
        fb = net(baseline).gather(1, t[:, None])[:, 0]
    scale = torch.maximum(fx.abs(), fb.abs()).clamp_min(1e-6)
    worst = float((delta.detach().abs().to(scale.dtype) / scale).max())
    if not worst <= 1e-3:
        raise ValueError(
            f"method='deeplift' refused: its attributions miss f(x) - f(baseline) by {worst:.2%} of the logit "
            "(completeness is broken), so some nonlinearity of the model is not one Captum's DeepLift handles "
            "(a functional activation, an elementwise product of activations, a normalisation layer, ...)"
        )


def _lrp(net, x, t, rule, canonizers) -> torch.Tensor:
    from zennit.attribution import Gradient

    composite = lrp_composite(rule, canonizers)
    with Gradient(model=net, composite=composite) as attributor:
        # seeding the output with the target logit makes the total relevance equal that logit
        _, relevance = attributor(x, lambda out: out * F.one_hot(t, out.shape[1]).to(out.dtype))
    return relevance.sum(1)


# ----------------------------------------------------------------------------- insertion / deletion over methods


def attribution_aucs(
    dense_model: nn.Module,
    x: torch.Tensor,
    target,
    methods: Sequence[str],
    explainers: dict,
    *,
    auc_steps: int = 100,
    batch_size: int = 50,
    image_ids: Sequence | None = None,
    device: str | torch.device = "auto",
    progress: bool = False,
    **attribute_options,
):
    """Insertion/deletion AUC of every (method, explainer) pair on the images ``x``; a long DataFrame.

    ``explainers`` maps a label to the model whose maps are scored (e.g. ``{"dense": model, "SPADE": pruned}``);
    every map is scored on ``dense_model`` (see :func:`spade_utils.metrics.insertion_deletion_auc`, with
    ``auc_steps`` steps), with ``target`` the class explained. ``attribute_options`` go to :func:`attribute`. Columns: image, method,
    explainer, insertion, deletion.
    """
    import pandas as pd

    from .metrics import insertion_deletion_auc
    from .widgets import progress_bar as tqdm

    if not isinstance(explainers, dict) or not explainers:
        raise TypeError("explainers must be a non-empty dict label -> model")
    if isinstance(methods, str) or not all(m in SALIENCY_METHODS for m in methods):
        raise ValueError(f"methods must be a list drawn from {SALIENCY_METHODS}, got {methods!r}")
    targets = _targets(target, x.shape[0])
    ids = list(image_ids) if image_ids is not None else list(range(x.shape[0]))
    if len(ids) != x.shape[0]:
        raise ValueError(f"image_ids has {len(ids)} entries for {x.shape[0]} images")
    rows = []
    pairs = [(m, label) for m in methods for label in explainers]
    for method, label in tqdm(pairs, disable=not progress, desc="insertion/deletion", leave=False):
        maps = attribute(explainers[label], x, targets, method, device=device, **attribute_options)
        aucs = insertion_deletion_auc(
            dense_model, x, maps, targets, n_steps=auc_steps, batch_size=batch_size, device=device
        )
        for i, image in enumerate(ids):
            rows.append(
                {
                    "image": image,
                    "method": method,
                    "explainer": label,
                    "insertion": float(aucs["insertion"][i]),
                    "deletion": float(aucs["deletion"][i]),
                }
            )
    return pd.DataFrame(rows)


def display_maps(maps: torch.Tensor, *, quantile: float = 0.995, cmap: str | None = None) -> torch.Tensor:
    """Signed maps (B, H, W) -> values in [0, 1] for a diverging colormap: 0.5 is zero, 0 and 1 are
    -/+ the per-map ``quantile`` of |map| (beyond it values are clipped). With ``cmap`` (e.g. ``"bwr"``)
    the colours themselves are returned, (B, H, W, 3) in [0, 1], ready for :func:`plotting.image_grid`."""
    if not isinstance(maps, torch.Tensor) or maps.dim() != 3:
        raise ValueError("maps must be a (B, H, W) tensor")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    flat = maps.detach().float().cpu().abs().flatten(1)
    scale = torch.quantile(flat, quantile, dim=1).clamp_min(1e-12).view(-1, 1, 1)
    values = ((maps.detach().float().cpu() / scale).clamp(-1, 1) + 1) / 2
    if cmap is None:
        return values
    import matplotlib

    colours = matplotlib.colormaps[cmap](values.numpy())[..., :3]
    return torch.from_numpy(colours).float()
