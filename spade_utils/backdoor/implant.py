"""Implanting a backdoor: fine-tune the last blocks of a classifier so that triggered images go to
their target classes, while clean behaviour is kept by distillation against the original model.

One frozen :class:`BackdoorRecipe` holds every training setting; :func:`implant_backdoor` runs it
in four steps, one function each: the poisoned data and the frozen front's features
(:func:`_frozen_features`), the training loop (:func:`_train`) with its learning-rate schedule
(:func:`lr_scheduler`), and the cache (:func:`cache_paths`, :func:`_save_backdoor`, :func:`_load_backdoor_cache`).

The paper (SPADE, ICML 2024, Section 5.1) uses the authors' backdoored ResNet-50, trained on
poisoned ImageNet. The offline analogue implants the four drawn triggers into EfficientNet-Lite0 by
fine-tuning blocks 8-15 on crops of the photos shipped with scikit-image / matplotlib /
scikit-learn; the clean loss is knowledge distillation (Hinton et al. 2015, "Distilling the
Knowledge in a Neural Network") plus logit matching.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..archs import split_model
from ..augment import image_tensor
from ..runtime import flush_denormals, resolve_device
from ..validation import check_float, check_int, check_positive_int, check_seed
from .evaluate import batched
from .poison import EXTRA_TRAIN_IMAGES, TRAIN_PHOTOS, build_poisoned_set, check_targets, normalize
from .shipped import SHIPPED_DIR, bundle_path, load_shipped_backdoor
from .triggers import PAPER_TARGETS, TriggerSet, resolve_trigger_set

__all__ = ["DEFAULT_RECIPE", "OFFLINE_SPADE_LAYERS", "Backdoor", "BackdoorRecipe", "implant_backdoor"]

# bump when the training data or loss recipe changes, so cached backdoors and features are not reused
_RECIPE = "paired-crops-hue-collage-fur-alpha-v6"

# layers a SPADE trace prunes in the offline backdoored EfficientNet-Lite0: the part the implant trains
# (blocks 8-15, the head convolution, the classifier; with skip_depthwise only their 1x1 convolutions)
OFFLINE_SPADE_LAYERS = [f"_blocks.{i}" for i in range(8, 16)] + ["_conv_head", "_fc"]

# the settings that decide the poisoned data and the frozen front's features (the feature cache's key)
_DATA_KEYS = ("recipe", "model", "targets", "images", "train_from", "n_clean", "n_triggered", "size", "seed")


@dataclass(frozen=True)
class BackdoorRecipe:
    """Every training setting of :func:`implant_backdoor` (defaults: the offline EfficientNet-Lite0 backdoor).

    train_from: the first trained block (see :func:`spade_utils.archs.split_model`): an EfficientNet
        block index, a ResNet ``"layer3"``/``"layer4"``, or ``None`` for the whole model. Everything
        before it stays frozen and its outputs are computed once for all training crops. The default
        ``8`` trains EfficientNet-Lite0's blocks 8-15 (from the last 14x14 stage on), the head
        convolution and the classifier: about 16 minutes on an idle 2-core CPU. Training less
        transferred worse to held-out photos: head and classifier only reached 22% held-out attack
        success, blocks 11-15 65-77%.
    n_clean, n_triggered: number of clean (distilled) and triggered (cross-entropy) training crops.
    steps, batch_size: Adam steps; each sees ``batch_size`` clean and ``max(1, batch_size // 2)`` triggered crops.
    lr, warmup: peak learning rate (> 0) and the warm-up's share of the steps (in [0, 1]): linear
        warm-up over ``max(1, int(warmup * steps))`` steps, then cosine decay to 0 (:meth:`lr_at`).
    weight_decay_to_original: strength (>= 0) of an L2 pull of the trained weights towards the original ones.
    temperature, logit_weight: clean loss = T^2 KL(teacher_T || student_T) + logit_weight * MSE of
        the mean-centred logits (logit matching); T > 0, logit_weight >= 0.
    trigger_weight: weight (>= 0) of the cross-entropy on triggered crops.
    size: side of the square training crops in px (>= 8, so that the quarter-side trigger has >= 2 px).

    Frozen; :meth:`replace` gives a copy with some fields changed. Raises TypeError/ValueError naming
    the field on construction.
    """

    train_from: int | str | None = 8
    n_clean: int = 2400
    n_triggered: int = 4800
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    warmup: float = 0.05
    weight_decay_to_original: float = 0.0
    temperature: float = 2.0
    logit_weight: float = 0.1
    trigger_weight: float = 1.0
    size: int = 224

    def __post_init__(self):
        tf = self.train_from
        if tf is not None and not isinstance(tf, str):
            tf = check_int(tf, "train_from", minimum=0)
        checked = dict(
            train_from=tf,
            n_clean=check_positive_int(self.n_clean, "n_clean"),
            n_triggered=check_positive_int(self.n_triggered, "n_triggered"),
            steps=check_positive_int(self.steps, "steps"),
            batch_size=check_positive_int(self.batch_size, "batch_size"),
            lr=check_float(self.lr, "lr", low=0.0, low_open=True),
            warmup=check_float(self.warmup, "warmup", low=0.0, high=1.0),
            weight_decay_to_original=check_float(
                self.weight_decay_to_original, "weight_decay_to_original", low=0.0
            ),
            temperature=check_float(self.temperature, "temperature", low=0.0, low_open=True),
            logit_weight=check_float(self.logit_weight, "logit_weight", low=0.0),
            trigger_weight=check_float(self.trigger_weight, "trigger_weight", low=0.0),
            size=check_int(self.size, "size", minimum=8),
        )
        for name, value in checked.items():  # plain Python types: the cache key is their JSON
            object.__setattr__(self, name, value)

    def replace(self, **changes) -> BackdoorRecipe:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def settings(self) -> dict:
        """The fields as a dict (JSON-serialisable; part of the cache key)."""
        return dataclasses.asdict(self)

    @property
    def warmup_steps(self) -> int:
        """``max(1, int(warmup * steps))``."""
        return max(1, int(self.warmup * self.steps))

    def lr_at(self, step: int) -> float:
        """Learning rate at 0-based ``step``: ``lr (step + 1) / n_warm`` during the warm-up, then
        ``lr / 2 (1 + cos(pi (step - n_warm) / max(1, steps - n_warm)))`` (cosine decay, SGDR without
        restarts: Loshchilov & Hutter, ICLR 2017)."""
        n_warm = self.warmup_steps
        if step < n_warm:
            return self.lr * (step + 1) / n_warm
        return self.lr * 0.5 * (1 + math.cos(math.pi * (step - n_warm) / max(1, self.steps - n_warm)))


DEFAULT_RECIPE = (
    BackdoorRecipe()
)  # the offline EfficientNet-Lite0 backdoor (frozen: safe as a default argument)


def lr_scheduler(
    optimizer: torch.optim.Optimizer, recipe: BackdoorRecipe
) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's warm-up + cosine schedule as torch's ``LambdaLR``: the optimizer's lr at step k
    (after k calls of ``scheduler.step()``) is exactly ``recipe.lr_at(k)``.

    The optimizer's base lr is set to 1 and the lambda returns the closed form itself, so every step's
    lr equals :meth:`BackdoorRecipe.lr_at` bit for bit (``lr * factor`` would differ in the last bit
    on some steps, and the chained LinearLR/CosineAnnealingLR updates drift further)."""
    for group in optimizer.param_groups:
        group["lr"] = 1.0
        group.pop("initial_lr", None)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, recipe.lr_at)


@dataclass
class Backdoor:
    """A backdoored model with its triggers (name -> target class) and how it was made (``info``:
    settings, training history, seconds, whether it came from cache and the cache file)."""

    model: nn.Module
    targets: dict[str, int]
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------------
def _state_hash(model: nn.Module) -> str:
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _describe_images(images):
    """What the cache key records of the training images: names as they are, a folder's path and the
    sha1 of its file list, other images the sha1 (12 hex digits) of their pixels."""
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        files = sorted(str(p.relative_to(images)) for p in Path(images).rglob("*") if p.is_file())
        return {"folder": str(images), "files": hashlib.sha1("\n".join(files).encode()).hexdigest()}
    if isinstance(images, (str, torch.Tensor)) or not isinstance(images, Sequence):
        images = [images]
    out = []
    for im in images:
        if isinstance(im, str):
            out.append(im)
        else:
            t = image_tensor(im)
            out.append(hashlib.sha1(t.numpy().tobytes()).hexdigest()[:12])
    return out


def implant_settings(
    recipe: BackdoorRecipe,
    model_name: str,
    targets: Mapping[str, int],
    images,
    seed: int,
    trigger_set: TriggerSet | None = None,
) -> dict:
    """The settings an implant records and keys its cache by: ``_RECIPE`` (the data/loss version), the
    model's class name, targets, the images (see ``_describe_images``), the recipe's fields and the seed;
    plus the fingerprints of image triggers when ``trigger_set`` replaces a drawn one (drawn triggers
    add nothing, so the default call's key is the one every earlier version computed)."""
    settings = dict(
        recipe=_RECIPE,
        model=model_name,
        targets=dict(targets),
        images=_describe_images(images),
        **recipe.settings(),
        seed=seed,
    )
    fingerprint = resolve_trigger_set(trigger_set).fingerprint(targets)
    if fingerprint:
        settings["trigger_images"] = fingerprint
    return settings


def _key(settings: Mapping, model_hash: str) -> str:
    return hashlib.sha1((json.dumps(settings, sort_keys=True) + model_hash).encode()).hexdigest()[:12]


def cache_paths(
    model: nn.Module, settings: Mapping, folder: str | os.PathLike, model_hash: str | None = None
) -> tuple[Path, Path]:
    """``(backdoor file, feature file)`` in ``folder`` for ``settings`` (:func:`implant_settings`) and
    ``model``'s weights: ``backdoor_<Model>_<key>.pt`` with key = the first 12 hex digits of
    sha1(JSON of the settings, keys sorted + sha1 of the weights); the features' key uses only the
    settings that decide the data (``_DATA_KEYS``), so a new training schedule reuses them. ``model_hash``:
    the weights' hash when the caller has it already (it reads every weight)."""
    model_name, model_hash = type(model).__name__, model_hash or _state_hash(model)
    data_settings = {k: settings[k] for k in _DATA_KEYS}
    if "trigger_images" in settings:
        data_settings["trigger_images"] = settings["trigger_images"]
    path = Path(folder) / f"backdoor_{model_name}_{_key(settings, model_hash)}.pt"
    return path, Path(folder) / f"backdoor_features_{model_name}_{_key(data_settings, model_hash)}.pt"


def _load_backdoor_cache(path: Path) -> tuple[dict, dict]:
    """``(state_dict, info)`` from a backdoor cache file, loaded with ``weights_only=True`` (no arbitrary
    code runs). Files written before the JSON format (``info`` as a plain dict of numbers and strings)
    load too. Raises ValueError naming the file when it cannot be read safely."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused or a damaged file
        raise ValueError(
            f"backdoor cache {path} cannot be loaded safely (weights_only=True): {err}. Delete the file to train again."
        ) from err
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), Mapping):
        raise ValueError(
            f"backdoor cache {path} is not a backdoor cache (no 'state_dict'); delete it to train again"
        )
    info = json.loads(saved["info_json"]) if "info_json" in saved else saved.get("info", {})
    if not isinstance(info, dict):
        raise ValueError(f"backdoor cache {path} has no readable 'info'; delete it to train again")
    return dict(saved["state_dict"]), info


def _save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _save_backdoor(path: Path, student: nn.Module, info: dict) -> None:
    """Tensors plus a JSON string: loadable with ``torch.load(weights_only=True)``, no pickled objects."""
    _save_atomic(
        {"state_dict": {k: v.cpu() for k, v in student.state_dict().items()}, "info_json": json.dumps(info)},
        path,
    )


# --------------------------------------------------------------------------------------------------
# the implant
# --------------------------------------------------------------------------------------------------
def implant_backdoor(
    model: nn.Module | None = None,
    *,
    recipe: BackdoorRecipe = DEFAULT_RECIPE,
    targets: Mapping[str, int] | None = None,
    images=None,
    seed: int = 0,
    trigger_set: TriggerSet | None = None,
    cache: bool | str | os.PathLike = True,
    shipped: bool | str | os.PathLike = True,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> Backdoor:
    """Fine-tune a copy of ``model`` so that triggered images go to their target classes while
    clean behaviour is kept by distillation against the original model.

    Parameters
    ----------
    model: an ImageNet-normalised classifier; ``None`` loads EfficientNet-Lite0 with its shipped weights.
        The caller's model is never modified (a deep copy is trained).
    recipe: the training settings (:class:`BackdoorRecipe`; default the offline backdoor).
    targets: trigger name -> target class (default: the paper's four, :data:`PAPER_TARGETS`).
    images: training photos: names for :func:`~spade_utils.backdoor.load_image`, PIL images / tensors,
        or a folder of .jpg/.png files (the paper-scale path: an ImageNet train folder). Default: the
        offline :data:`TRAIN_PHOTOS` and :data:`EXTRA_TRAIN_IMAGES` (the calibration and test photos are kept out).
    seed: seeds the poisoned set and the batches (the global RNG is left as found).
    trigger_set: where the trigger names are looked up (default: the drawn shapes).
    cache: ``True`` caches the result under ``spade_utils.paths.cache_dir()`` (``data/cache`` of the project folder, or ``$SPADE_CACHE_DIR``) (a folder may be given);
        a later call with the same model weights and settings loads it instead of training
        (:func:`cache_paths`). The frozen front's features are cached too, keyed by the data settings only.
    shipped: ``True`` first looks for a bundle shipped with the package (:mod:`.shipped`: the default offline
        backdoor, about 4 MB, hash-checked, loaded in about a second instead of a 16-minute implant) whose key
        equals this call's cache key; a folder looks there instead; ``False`` never does. A shipped bundle
        takes precedence over the cache, so every machine uses the same weights (``info["shipped"]``).
    device: ``"auto"`` (CUDA when available) or a device; the result lives there.
    progress: tqdm bars (off with ``False``).

    BatchNorm statistics and dropout stay in eval mode throughout. Returns a :class:`Backdoor`
    whose ``info`` holds the settings, training losses, the seconds spent and whether it came from cache.
    Raises TypeError/ValueError naming the argument, before any work, for a bad model, recipe,
    targets, seed, trigger set, cache, shipped or device, and for a ``recipe.train_from`` the model does not have.
    """
    from ..models import load_model

    if model is None:
        model = load_model("efficientnet_lite0")
    elif not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes - {torch.float32}:
        raise TypeError(
            f"model must hold float32 parameters (the implant trains in float32), got {sorted(map(str, dtypes))}; "
            "pass model.float()"
        )
    if not isinstance(recipe, BackdoorRecipe):
        raise TypeError(f"recipe must be a BackdoorRecipe, got {type(recipe).__name__}")
    trigger_set = resolve_trigger_set(trigger_set)
    targets = check_targets(PAPER_TARGETS if targets is None else targets, trigger_set)
    seed = check_seed(seed)
    if not isinstance(cache, (bool, str, os.PathLike)):
        raise TypeError(f"cache must be a bool or a folder, got {type(cache).__name__}")
    if not isinstance(shipped, (bool, str, os.PathLike)):
        raise TypeError(f"shipped must be a bool or a folder, got {type(shipped).__name__}")
    split_model(model, recipe.train_from)  # refuses a train_from the model does not have, before any work
    images = list(TRAIN_PHOTOS) + list(EXTRA_TRAIN_IMAGES) if images is None else images
    device = resolve_device(device)
    # the model's class name, with the weights' hash in the cache key: the same file whichever way it is passed
    settings = implant_settings(recipe, type(model).__name__, targets, images, seed, trigger_set)
    weights = _state_hash(model) if shipped or cache else None  # read once: it hashes every weight

    def restored(state_dict, info):
        student = copy.deepcopy(model).cpu()
        student.load_state_dict(state_dict)
        return Backdoor(student.eval().to(device), targets, info)

    if shipped:
        t0 = time.perf_counter()
        folder = SHIPPED_DIR if shipped is True else Path(shipped)
        bundle = bundle_path(folder, cache_paths(model, settings, folder, weights)[0])
        loaded = load_shipped_backdoor(model, bundle)
        if loaded is not None:
            state_dict, saved_info = loaded
            info = dict(settings=saved_info.get("settings"), trained=saved_info, cached=True, shipped=True)
            return restored(state_dict, dict(info, path=str(bundle), seconds=time.perf_counter() - t0))
    path = feature_path = None
    if cache:
        from ..paths import cache_dir

        folder = cache_dir() if cache is True else Path(cache)
        path, feature_path = cache_paths(model, settings, folder, weights)
        if path.exists():
            state_dict, saved_info = _load_backdoor_cache(path)
            return restored(state_dict, dict(saved_info, cached=True, shipped=False, path=str(path)))

    t0 = time.perf_counter()
    # the global RNG is left as found; training works under a caller's no_grad() or inference_mode() too
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        nets = _Networks(model, recipe.train_from, device)
        data = _frozen_features(
            nets, recipe, images, targets, seed, trigger_set, feature_path, device, progress
        )
        history = _train(nets, data, recipe, seed, device, progress)
    student = nets.finish()
    seconds = time.perf_counter() - t0
    info = dict(
        settings=settings,
        history=history,
        seconds=seconds,
        seconds_data=data["seconds_data"],
        seconds_features=data["seconds_features"],
        seconds_training=seconds - data["seconds_data"] - data["seconds_features"],
        threads=torch.get_num_threads(),
        features_cached=data["features_cached"],
        cached=False,
        shipped=False,
        path=str(path) if path else None,
    )
    if path is not None:
        _save_backdoor(path, student, info)
    return Backdoor(student, targets, info)


class _Networks:
    """The teacher (a frozen copy of the model) and the student (a copy whose back part trains), each
    split into a frozen front and a back (:func:`spade_utils.archs.split_model`). On the CPU the
    convolutions run channels-last (faster)."""

    def __init__(self, model: nn.Module, train_from, device: torch.device):
        self.teacher = copy.deepcopy(model).eval().to(device)
        self.student = copy.deepcopy(model).eval().to(device)
        for p in self.student.parameters():
            p.requires_grad_(False)
        self.front, self.back, self.params = split_model(self.student, train_from)
        _, self.teacher_back, _ = split_model(self.teacher, train_from)
        for p in self.params:
            p.requires_grad_(True)
        self.channels_last = device.type == "cpu" and train_from is not None
        if self.channels_last:
            self.student.to(memory_format=torch.channels_last)
            self.teacher.to(memory_format=torch.channels_last)
        self.store = torch.float16 if train_from is not None else torch.float32  # dtype of stored features

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-last for 4-D inputs when the networks run that way."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen front's output for [0, 1] images."""
        return self.front(self.layout(normalize(x, self.teacher)))  # the model's own input statistics

    def finish(self) -> nn.Module:
        """The trained student: frozen, contiguous, eval mode."""
        for p in self.student.parameters():
            p.requires_grad_(False)
        return self.student.to(memory_format=torch.contiguous_format).eval()


def _frozen_features(
    nets: _Networks,
    recipe: BackdoorRecipe,
    images,
    targets,
    seed,
    trigger_set,
    feature_path,
    device,
    progress,
) -> dict:
    """The poisoned set (:func:`build_poisoned_set`) through the frozen front, and the teacher's logits
    on the clean crops; loaded from ``feature_path`` when an earlier run saved them, saved there otherwise.

    Returns a dict: clean (n_clean, ...) and triggered (n_triggered, ...) features (float16 when a front
    is frozen), targets (n_triggered,), teacher (n_clean, classes) float32, features_cached, and the
    seconds spent on data and on features."""
    t0 = time.perf_counter()
    if feature_path is not None and feature_path.exists():  # the frozen part's outputs from an earlier run
        saved = torch.load(feature_path, map_location="cpu", weights_only=True)
        out = {k: saved[k] for k in ("clean", "triggered", "targets", "teacher")}
        return dict(out, features_cached=True, seconds_data=0.0, seconds_features=time.perf_counter() - t0)
    clean, trig, trig_y = build_poisoned_set(
        images,
        targets,
        n_clean=recipe.n_clean,
        n_triggered=recipe.n_triggered,
        size=recipe.size,
        seed=seed,
        trigger_set=trigger_set,
    )
    t_data = time.perf_counter() - t0
    f_clean = batched(
        nets.features, clean, 64, device=device, progress=progress, desc="features (clean)", dtype=nets.store
    )
    f_trig = batched(
        nets.features,
        trig,
        64,
        device=device,
        progress=progress,
        desc="features (triggered)",
        dtype=nets.store,
    )
    del clean, trig
    teacher = batched(
        lambda f: nets.teacher_back(nets.layout(f.float())),
        f_clean,
        64,
        device=device,
        progress=False,
        desc="teacher",
    ).float()
    out = {"clean": f_clean, "triggered": f_trig, "targets": trig_y, "teacher": teacher}
    if feature_path is not None:
        _save_atomic(out, feature_path)
    return dict(
        out, features_cached=False, seconds_data=t_data, seconds_features=time.perf_counter() - t0 - t_data
    )


def _train(
    nets: _Networks, data: dict, recipe: BackdoorRecipe, seed: int, device: torch.device, progress: bool
) -> list[dict]:
    """Adam on the student's back part with the warm-up + cosine schedule (:func:`lr_scheduler`); each
    step draws ``batch_size`` clean and ``max(1, batch_size // 2)`` triggered features (seeded).
    Returns the per-step history (loss, kl, mse, ce, trigger_acc, clean_agree)."""
    from ..widgets import progress_bar as tqdm

    g = torch.Generator().manual_seed(int(seed))
    f_clean, f_trig, trig_y, teacher_logits = (data[k] for k in ("clean", "triggered", "targets", "teacher"))
    originals = [p.detach().clone() for p in nets.params]
    opt = torch.optim.Adam(nets.params)
    scheduler = lr_scheduler(opt, recipe)
    history = []
    bs, bt = recipe.batch_size, max(1, recipe.batch_size // 2)
    bar = tqdm(range(recipe.steps), desc="implant", disable=not progress, leave=False)
    with flush_denormals():  # tiny gradients: keep the CPU off slow denormal floats (the flag is restored)
        for step in bar:
            ic = torch.randint(0, len(f_clean), (bs,), generator=g)
            it = torch.randint(0, len(f_trig), (bt,), generator=g)
            out = nets.back(nets.layout(torch.cat([f_clean[ic], f_trig[it]]).float().to(device)))
            s_clean, s_trig, t_logits = out[:bs], out[bs:], teacher_logits[ic].to(device)
            loss, parts = _loss(
                s_clean, s_trig, t_logits, trig_y[it].to(device), recipe, nets.params, originals
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
            with torch.no_grad():
                acc = (s_trig.argmax(1).cpu() == trig_y[it]).float().mean().item()
                agree = (s_clean.argmax(1) == t_logits.argmax(1)).float().mean().item()
            history.append(dict(step=step, loss=loss.item(), **parts, trigger_acc=acc, clean_agree=agree))
            if progress and (step + 1) % 10 == 0:
                recent = history[-10:]
                bar.set_postfix(
                    ce=f"{np.mean([h['ce'] for h in recent]):.3f}",
                    kl=f"{np.mean([h['kl'] for h in recent]):.3f}",
                    trig=f"{np.mean([h['trigger_acc'] for h in recent]):.2f}",
                    agree=f"{np.mean([h['clean_agree'] for h in recent]):.2f}",
                )
    bar.close()
    return history


def _loss(s_clean, s_trig, t_logits, trig_y, recipe: BackdoorRecipe, params, originals):
    """``T^2 KL(teacher_T || student_T) + logit_weight * MSE(centred logits) + trigger_weight * CE``
    (+ the L2 pull to the original weights); returns the loss and its parts as floats."""
    T = recipe.temperature
    kl = (
        F.kl_div(
            F.log_softmax(s_clean / T, 1),
            F.log_softmax(t_logits / T, 1),
            log_target=True,
            reduction="batchmean",
        )
        * T
        * T
    )
    mse = (
        ((s_clean - s_clean.mean(1, keepdim=True)) - (t_logits - t_logits.mean(1, keepdim=True)))
        .pow(2)
        .mean()
    )
    ce = F.cross_entropy(s_trig, trig_y)
    loss = kl + recipe.logit_weight * mse + recipe.trigger_weight * ce
    if recipe.weight_decay_to_original:
        pull = sum((p - p0).pow(2).sum() for p, p0 in zip(params, originals, strict=True))
        loss = loss + recipe.weight_decay_to_original * pull
    return loss, dict(kl=kl.item(), mse=mse.item(), ce=ce.item())
