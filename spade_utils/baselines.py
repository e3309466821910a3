"""Baselines that SPADE is compared with: the Sparse-FC explainer (Wong, Santurkar & Madry, "Leveraging
Sparse Linear Layers for Debuggable Deep Networks", ICML 2021), as in the paper's Table 1.

Sparse FC replaces a classifier's final linear layer by an elastic-net sparse one, fitted with
glm-saga on the penultimate features and labelled by the model's own predictions; saliency methods
are then run on the model with the sparse layer.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .runtime import resolve_device, state_hash

__all__ = ["final_linear", "fit_sparse_fc", "penultimate_features", "sparse_fc_model", "with_final_layer"]


def final_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """``(name, module)`` of the last ``nn.Linear`` in ``model`` (the classifier), in registration order.

    Raises ValueError if the model has no ``nn.Linear``."""
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = (name, mod)
    if last is None:
        raise ValueError(f"model has no nn.Linear final layer ({type(model).__name__})")
    return last


def penultimate_features(
    model: nn.Module, x: torch.Tensor, *, batch_size: int = 32, device="auto", progress=False
) -> torch.Tensor:
    """Inputs of the model's final ``nn.Linear`` for [0, 1] images x (B,3,H,W), batched: (B, D) float32 on the CPU.

    The model runs as in :func:`spade_utils.backdoor.predict` (input normalised with the model's own statistics,
    ImageNet's unless it states others; its own dtype and device, left as found); a forward hook on the final layer records its input and is removed afterwards."""
    from .backdoor.evaluate import predict

    fc = final_linear(model)[1]
    feats = []

    def hook(_m, inp, _out):
        feats.append(inp[0].detach().float().cpu())

    handle = fc.register_forward_hook(hook)
    try:
        predict(model, x, batch_size=batch_size, device=device, progress=progress)
    finally:
        handle.remove()
    return torch.cat(feats).flatten(1)


def fit_sparse_fc(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    density: float = 0.05,
    alpha: float = 0.99,
    path_length: int = 30,
    epochs: int = 10,
    max_lr: float = 0.1,
    epsilon: float = 0.01,
    batch_size: int = 256,
    seed: int = 0,
    device="auto",
) -> tuple[nn.Linear, dict]:
    """Elastic-net sparse linear classifier on ``features`` (N, D) with ``labels`` (N,) (Wong et al. 2021),
    fitted with glm-saga.

    Features are standardised (as glm-saga assumes) and the standardisation is folded back into the
    returned ``nn.Linear`` (D -> n_classes, on the CPU) so it takes raw features. ``alpha`` is the
    elastic-net mix (1 = lasso); along glm-saga's regularisation path of ``path_length`` lambdas (from
    the all-zero solution down to ``epsilon`` times the largest) the densest solution with at most
    ``density`` non-zero weights is kept. Returns the layer and a dict with its density and lambda.
    Raises ValueError for features/labels of the wrong shape, labels of a single class, or ``density``
    outside (0, 1].
    """
    from glm_saga.elasticnet import glm_saga

    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(
            f"features must be a (N, D) tensor, got {getattr(features, 'shape', type(features))}"
        )
    if not isinstance(labels, torch.Tensor) or labels.shape != (len(features),):
        raise ValueError(
            f"labels must be a (N,) tensor matching features, got {getattr(labels, 'shape', type(labels))}"
        )
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    if labels.unique().numel() < 2:  # glm-saga's path would start at lambda 0 and fail on log10(0)
        raise ValueError(
            f"labels must hold at least two classes to fit a classifier, got only {labels.unique().tolist()}"
        )
    device = resolve_device(device)
    gen = torch.Generator().manual_seed(int(seed))
    x = features.float()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = ((x - mu) / sd).to(device)
    y = labels.long().to(device)
    idx = torch.arange(len(xs), device=device)
    ds = torch.utils.data.TensorDataset(xs, y, idx)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, generator=gen)
    linear = nn.Linear(x.shape[1], n_classes).to(device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    with (
        contextlib.redirect_stdout(io.StringIO()),
        torch.random.fork_rng(devices=[]),
        warnings.catch_warnings(),
    ):
        # glm-saga calls softmax without dim (a deprecation notice from torch; the result is the same)
        warnings.filterwarnings(
            "ignore", message="Implicit dimension choice for softmax", category=UserWarning
        )
        torch.manual_seed(int(seed))
        result = glm_saga(
            linear,
            loader,
            max_lr,
            epochs,
            alpha,
            k=path_length,
            epsilon=epsilon,
            n_ex=len(xs),
            n_classes=n_classes,
            table_device=device,
            do_zero=False,
            verbose=None,
        )
    return _densest_within(result["path"], density, mu, sd, x.shape[1], n_classes)


def _densest_within(path, density, mu, sd, n_features, n_classes) -> tuple[nn.Linear, dict]:
    """The densest solution of glm-saga's path with at most ``density`` non-zeros (the sparsest one if none
    is), un-standardised into an ``nn.Linear`` on raw features."""
    best = None
    for params in path:
        dens = float((params["weight"].abs() > 1e-5).float().mean())
        if dens <= density and (best is None or dens >= best[0]):
            best = (dens, params)
    if best is None:
        best = (float((path[0]["weight"].abs() > 1e-5).float().mean()), path[0])
    dens, params = best
    weight = params["weight"].float().cpu()
    w = weight / sd
    b = params["bias"].float().cpu() - (weight * (mu / sd)).sum(1)
    w[weight.abs() <= 1e-5] = 0.0
    out = nn.Linear(n_features, n_classes)
    with torch.no_grad():
        out.weight.copy_(w)
        out.bias.copy_(b)
    return out.eval(), dict(density=dens, lam=float(params["lam"]))


def with_final_layer(model: nn.Module, layer: nn.Linear) -> nn.Module:
    """A deep copy of ``model`` (eval mode) with its final ``nn.Linear`` replaced by a copy of ``layer``,
    moved to the model's device. Raises ValueError if ``layer`` is not an ``nn.Linear`` of the same shape."""
    name, old = final_linear(model)
    if not isinstance(layer, nn.Linear) or layer.weight.shape != old.weight.shape:
        raise ValueError(
            f"layer must be an nn.Linear of shape {tuple(old.weight.shape)}, got {getattr(layer, 'weight', layer)}"
        )
    new = copy.deepcopy(model)
    parent = new.get_submodule(name.rsplit(".", 1)[0]) if "." in name else new
    setattr(parent, name.rsplit(".", 1)[-1], copy.deepcopy(layer).to(next(model.parameters()).device))
    return new.eval()


def sparse_fc_model(
    model: nn.Module,
    images: torch.Tensor,
    *,
    density: float = 0.05,
    seed: int = 0,
    batch_size: int = 32,
    device="auto",
    progress: bool = False,
    cache: bool | str | os.PathLike = False,
    **fit_kwargs,
) -> tuple[nn.Module, dict]:
    """The Sparse-FC baseline: fit a sparse final layer on the penultimate features of ``images``
    ((B,3,H,W) in [0, 1]), labelled by ``model``'s own predictions, and swap it in (on a copy).

    ``fit_kwargs`` go to :func:`fit_sparse_fc`. Returns ``(model copy, info)``; info as
    :func:`fit_sparse_fc`'s plus ``agreement_train``, the share of ``images`` on which the sparse layer
    predicts what the dense one does (and ``cached=True`` when it was loaded). ``cache``: True (the project's cache folder,
    :func:`spade_utils.paths.cache_dir`) or a folder keeps the fitted layer under a key of the model's weights,
    the images, the device type and every fit setting, so a second process (another shard, a rerun) loads the
    same layer instead of refitting (a glm-saga path takes minutes to half an hour on a CPU)."""
    if not isinstance(cache, (bool, str, os.PathLike)):
        raise TypeError(f"cache must be a bool or a folder, got {type(cache).__name__}")
    fc = final_linear(model)[1]
    path = None
    if cache is not False:
        from .paths import cache_dir

        settings = dict(density=density, seed=seed, batch_size=batch_size, device=resolve_device(device).type,
                        fit=sorted(fit_kwargs.items()))  # fmt: skip
        h = hashlib.sha256(repr(settings).encode() + state_hash(model).encode())
        h.update(images.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        folder = cache_dir() if cache is True else Path(cache)
        path = folder / f"sparse_fc_{type(model).__name__}_{h.hexdigest()[:16]}.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            layer = nn.Linear(fc.in_features, fc.out_features, bias=fc.bias is not None)
            layer.load_state_dict(saved["layer"])
            return with_final_layer(model, layer), dict(saved["info"], cached=True)
    feats = penultimate_features(model, images, batch_size=batch_size, device=device, progress=progress)
    with torch.inference_mode():
        labels = fc(feats.to(fc.weight.device, fc.weight.dtype)).float().argmax(1).cpu()
    layer, info = fit_sparse_fc(
        feats, labels, fc.out_features, density=density, seed=seed, device=device, **fit_kwargs
    )
    sparse = with_final_layer(model, layer)
    with torch.inference_mode():
        info["agreement_train"] = float((layer(feats).argmax(1) == labels).float().mean())
    if path is not None:  # written whole, then renamed: a shard never reads half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        state = {k: v.detach().cpu() for k, v in layer.state_dict().items()}
        torch.save(
            {"layer": state, "info": {k: v for k, v in info.items() if isinstance(v, (int, float, str))}}, tmp
        )
        os.replace(tmp, path)
    return sparse, info
