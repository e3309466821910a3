"""The 2-D polysemantic toy: two positive discs in [0, 9]^2, a small MLP, 2-D feature visualization.

Points ``x`` in the square ``[0, 9]^2`` are positive when they fall inside a large disc
(centre (4, 4), radius 2) or a small disc (centre (1, 1), radius 0.5). One output neuron has
to fire for both: it is polysemantic by construction. This module holds everything the
notebook needs that is longer than a few lines: data, model, training, the 2-D analogue of
feature visualization, and the augmentation SPADE uses for a 2-D sample (Gaussian jitter).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

BOX = (0.0, 9.0)
LARGE_CENTER = (4.0, 4.0)
LARGE_RADIUS = 2.0
SMALL_CENTER = (1.0, 1.0)
SMALL_RADIUS = 0.5
REGIONS = {
    "large": (LARGE_CENTER, LARGE_RADIUS),
    "small": (SMALL_CENTER, SMALL_RADIUS),
}


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _check_points(points, name: str = "points") -> torch.Tensor:
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (n, 2), got {type(points).__name__}")
    if points.dim() == 1 and points.shape[0] == 2:
        points = points.unsqueeze(0)
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"{name} must have shape (n, 2) or (2,), got {tuple(points.shape)}")
    return points


def _check_int(value, name: str, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_positive(value, name: str, allow_zero: bool = False) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return float(value)


def _generator(seed) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int or a torch.Generator, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# regions and data
# --------------------------------------------------------------------------------------------
def in_region(points: torch.Tensor, region: str) -> torch.Tensor:
    """Boolean mask: which of ``points`` (n, 2) lie inside ``region`` ('large' or 'small')."""
    points = _check_points(points)
    if region not in REGIONS:
        raise ValueError(f"region must be one of {tuple(REGIONS)}, got {region!r}")
    centre, radius = REGIONS[region]
    c = torch.tensor(centre, dtype=points.dtype, device=points.device)
    return (points - c).pow(2).sum(dim=1) <= radius**2


def labels(points: torch.Tensor) -> torch.Tensor:
    """Ground truth: 1.0 inside either disc, 0.0 elsewhere."""
    return (in_region(points, "large") | in_region(points, "small")).float()


def margin_score(points: torch.Tensor) -> torch.Tensor:
    """``max`` over the two discs of ``1 - distance_to_centre / radius``: positive exactly inside a disc.

    Each disc contributes a cone that peaks at 1 in its centre, is 0 on its rim and falls off in
    units of its own radius; the score is the higher of the two cones.
    """
    points = _check_points(points)
    cones = []
    for centre, radius in REGIONS.values():
        c = torch.tensor(centre, dtype=points.dtype, device=points.device)
        cones.append(1.0 - (points - c).norm(dim=1) / radius)
    return torch.stack(cones).amax(dim=0)


def share_in(points: torch.Tensor, region: str) -> float:
    """Fraction of ``points`` inside ``region``."""
    return float(in_region(points, region).float().mean())


def uniform_points(n: int, seed=0) -> torch.Tensor:
    """``n`` points uniform over the square ``[0, 9]^2``."""
    _check_int(n, "n")
    g = _generator(seed)
    lo, hi = BOX
    return lo + (hi - lo) * torch.rand(n, 2, generator=g)


def points_in_disc(n: int, region: str, seed=0, scale: float = 1.0) -> torch.Tensor:
    """``n`` points uniform over ``region``'s disc, its radius multiplied by ``scale``."""
    _check_int(n, "n")
    if region not in REGIONS:
        raise ValueError(f"region must be one of {tuple(REGIONS)}, got {region!r}")
    _check_positive(scale, "scale")
    g = _generator(seed)
    centre, radius = REGIONS[region]
    r = radius * scale * torch.rand(n, generator=g).sqrt()
    phi = 2 * torch.pi * torch.rand(n, generator=g)
    return torch.tensor(centre) + torch.stack([r * phi.cos(), r * phi.sin()], dim=1)


def make_dataset(n_uniform: int = 20000, n_small: int = 2000, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Training points and labels: ``n_uniform`` over the square plus ``n_small`` around the small disc.

    The extra points are uniform over a disc of three times the small radius around the small
    disc, half inside it and half in the ring around it: the small region covers 1% of the
    square, so without them a network can ignore it and still reach 99% accuracy.
    """
    _check_int(n_uniform, "n_uniform")
    _check_int(n_small, "n_small", minimum=0)
    g = _generator(seed)
    parts = [uniform_points(n_uniform, g)]
    if n_small:
        parts.append(points_in_disc(n_small, "small", g, scale=3.0))
    X = torch.cat(parts)
    return X, labels(X)


def jitter(sample: torch.Tensor, n: int, generator: torch.Generator | None = None, *, std: float = 0.5):
    """``n`` copies of a 2-D ``sample`` with isotropic Gaussian noise of ``std``: the toy's augmentation."""
    sample = _check_points(sample, "sample")
    if sample.shape[0] != 1:
        raise ValueError(f"sample must be one point, got {sample.shape[0]}")
    _check_int(n, "n")
    _check_positive(std, "std", allow_zero=True)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    noise = torch.randn(n, 2, generator=generator, dtype=sample.dtype)
    return sample.to(noise.device) + std * noise


def make_jitter(std: float = 0.5):
    """The augmentation callable ``(sample, n, generator) -> (n, 2) batch`` with a fixed ``std``."""
    _check_positive(std, "std", allow_zero=True)

    def augment(sample, n, generator=None):
        return jitter(sample, n, generator, std=std)

    return augment


# --------------------------------------------------------------------------------------------
# model and training
# --------------------------------------------------------------------------------------------
class Rescale(nn.Module):
    """Maps the square ``[0, 9]^2`` onto ``[-1, 1]^2`` (a fixed input normalisation, nothing to prune)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = BOX
        return (x - (lo + hi) / 2) * (2 / (hi - lo))


def make_mlp(hidden: Sequence[int] = (64, 64), seed: int = 0, out_bias: bool = True) -> nn.Sequential:
    """``2 -> hidden... -> 1`` ReLU MLP with Linear layers named ``fc1``, ``fc2``, ..., ``out``.

    ``out_bias=False`` drops the output neuron's bias, so a positive logit needs an active unit.
    """
    if not isinstance(hidden, Sequence) or not hidden:
        raise ValueError(f"hidden must be a non-empty sequence of widths, got {hidden!r}")
    for h in hidden:
        _check_int(h, "hidden width")
    torch_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        layers: list[tuple[str, nn.Module]] = [("rescale", Rescale())]
        width = 2
        for i, h in enumerate(hidden, start=1):
            layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU())]
            width = h
        layers.append(("out", nn.Linear(width, 1, bias=out_bias)))
        model = nn.Sequential(OrderedDict(layers))
    finally:
        torch.random.set_rng_state(torch_state)
    return model


def logit(model: nn.Module, points: torch.Tensor) -> torch.Tensor:
    """The output neuron's logit for each point, shape (n,)."""
    return model(points).squeeze(-1)


def train_mlp(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    activation_l1: float = 0.0,
    loss: str = "bce",
    score_scale: float = 4.0,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Adam on binary cross-entropy with a cosine learning-rate decay; returns the loss per epoch."""
    X = _check_points(X, "X")
    if not isinstance(y, torch.Tensor) or y.shape != (X.shape[0],):
        raise ValueError(f"y must be a tensor of shape ({X.shape[0]},)")
    _check_int(epochs, "epochs")
    _check_int(batch_size, "batch_size")
    g = _generator(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = X.shape[0]
    steps = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    history = []
    from tqdm.auto import trange

    model.train()
    for _ in trange(epochs, disable=not progress, desc="train"):
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            h = X[idx]
            penalty = h.new_zeros(())
            for mod in model.children():
                h = mod(h)
                if activation_l1 and isinstance(mod, nn.ReLU):
                    penalty = penalty + h.mean()
            if loss == "bce":
                value = loss_fn(h.squeeze(-1), y[idx])
            else:
                value = (h.squeeze(-1) - score_scale * margin_score(X[idx])).pow(2).mean()
            value = value + activation_l1 * penalty
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            total += float(value.detach()) * len(idx)
        history.append(total / n)
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, n_test: int = 20000, seed: int = 12345) -> dict:
    """Held-out accuracy over the square and recall inside each disc."""
    X = uniform_points(n_test, seed)
    pred = logit(model, X) > 0
    acc = float((pred == labels(X).bool()).float().mean())
    out = {"accuracy": acc}
    for region in REGIONS:
        P = points_in_disc(n_test // 10, region, seed + 1)
        out[f"recall_{region}"] = float((logit(model, P) > 0).float().mean())
    return out


# --------------------------------------------------------------------------------------------
# 2-D feature visualization
# --------------------------------------------------------------------------------------------
def feature_visualization(
    model: nn.Module,
    n_points: int = 200,
    *,
    steps: int = 200,
    lr: float = 0.05,
    noise_std: float | tuple[float, float] = 0.5,
    n_noise: int = 16,
    seed: int = 0,
    starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient ascent on the output logit from ``n_points`` starts spread over the square.

    The objective at ``x`` is the logit averaged over ``n_noise`` Gaussian perturbations
    ``x + noise_std * eps``: the 2-D analogue of the transformation robustness (random jitter)
    that image feature visualization uses. Steps are normalised gradient steps whose length decays
    linearly from ``lr`` to ``lr / 20`` (flat regions are crossed as fast as steep ones, and the
    points settle at the end); points are clamped to the square.
    """
    _check_int(n_points, "n_points")
    _check_int(steps, "steps", minimum=0)
    _check_int(n_noise, "n_noise")
    _check_positive(lr, "lr")
    if isinstance(noise_std, (tuple, list)):
        if len(noise_std) != 2:
            raise ValueError(f"noise_std must be a number or a (start, end) pair, got {noise_std!r}")
        sigma0, sigma1 = (_check_positive(v, "noise_std") for v in noise_std)
    else:
        sigma0 = sigma1 = _check_positive(noise_std, "noise_std", allow_zero=True)
    g = _generator(seed)
    lo, hi = BOX
    x = uniform_points(n_points, g) if starts is None else _check_points(starts, "starts").clone()
    for t in range(steps):
        frac = t / max(1, steps - 1)
        size = lr * (1.0 - 0.95 * frac)  # linear decay to 5% of lr
        sigma = sigma0 * (sigma1 / sigma0) ** frac if sigma0 > 0 else 0.0  # geometric annealing
        x.requires_grad_(True)
        eps = torch.randn(n_noise, *x.shape, generator=g) * sigma
        val = logit(model, (x.unsqueeze(0) + eps).reshape(-1, 2)).reshape(n_noise, -1).mean(0).sum()
        (grad,) = torch.autograd.grad(val, x)
        with torch.no_grad():
            step = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            x = (x + size * step).clamp(lo, hi)
    return x.detach()
