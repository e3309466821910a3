"""Stand-ins for the paper path's downloads, written into a folder by the tests themselves.

The ``paper`` source of notebooks 03-05 reads four things that cannot be fetched here: torchvision's
ResNet-50 ImageNet weights from the torch hub cache, an ImageNet folder (validation and training), the
SPADE authors' backdoored ResNet-50 (a MadryLab ``robustness`` checkpoint) and four RGBA trigger
PNGs. :func:`write_paper_standins` writes each in the exact layout the real one has, with random
weights and the photos that ship with scikit-image / matplotlib / scikit-learn, so that every line of
code only the paper path reaches runs in CI (``tests/test_paper_path.py``, and a notebook-level
rehearsal that points the notebooks' ``IMAGENET_VAL`` / ``IMAGENET_TRAIN`` / ``CHECKPOINT`` /
``TRIGGER_DIR`` parameters and the ``TORCH_HOME`` environment variable at the folder written here).

Layouts (what the real files look like):

- ``<torch_home>/hub/checkpoints/resnet50-0676ba61.pth``: a plain ``state_dict`` of torchvision's
  ``resnet50`` (the basename of ``ResNet50_Weights.IMAGENET1K_V1.url``; torchvision's loader finds it
  there through ``TORCH_HOME``).
- ``imagenet/val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG`` and
  ``imagenet/train/<wnid>/<wnid>_<n>.JPEG``: synset sub-folders (the layout of torchvision's
  ``ImageFolder`` / the usual ``valprep.sh`` output). Like the real set, a few files are not plain RGB
  JPEGs: one greyscale JPEG, one CMYK JPEG, and in train one PNG saved under a ``.JPEG`` name
  (ImageNet's ``n02105855_2933.JPEG`` is such a file).
- ``backdoored_resnet50.pt``: ``{'model': state dict, 'optimizer': ..., 'schedule': None, 'epoch': 90}``
  with parameter names ``module.model.<torchvision name>``, a copy of some under
  ``module.attacker.model.`` and the input statistics under ``module.normalizer.new_mean/new_std``
  (shape (3, 1, 1)), as MadryLab's ``robustness`` library saves them.
- ``triggers/{heart,star,smiley,fish}.png``: RGBA images, transparent outside the shape, with
  antialiased (partly transparent) edges like real emoji.

Random networks are not useful stand-ins as they come: a freshly initialised ResNet-50 in eval mode
predicts the same class for every image (measured: class 713 for 8 different photo crops), so a
Sparse-FC fit labelled by its predictions has a single class and stops. :func:`standin_resnet50`
therefore estimates the batch-norm statistics on crops of the shipped photos and centres the
classifier on their mean feature, which gives input-dependent predictions; the weights stay random.
"""

from __future__ import annotations

import os
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = [
    "RESNET50_FILE",
    "TRIGGER_NAMES",
    "PaperStandins",
    "robustness_checkpoint",
    "standin_resnet50",
    "write_imagenet_folder",
    "write_paper_standins",
    "write_resnet50_weights",
    "write_robustness_checkpoint",
    "write_trigger_pngs",
    "written_standins",
]

TRIGGER_NAMES = ("heart", "star", "smiley", "fish")


def _torchvision_resnet50_file() -> str:
    from torchvision.models import ResNet50_Weights

    return os.path.basename(ResNet50_Weights.IMAGENET1K_V1.url)


RESNET50_FILE = _torchvision_resnet50_file()  # "resnet50-0676ba61.pth"

# photo (spade_utils.data.sample_image name) -> a plausible ImageNet synset; only the layout matters
VAL_PHOTOS = {"chelsea": "n02124075", "coffee": "n07920052", "grace_hopper": "n03763968"}
TRAIN_PHOTOS = {
    "astronaut": "n04266014",
    "rocket": "n04266014",
    "flower": "n11939491",
    "china": "n03028079",
    "motorcycle": "n03790512",
}


# --------------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------------
def standin_resnet50(seed: int = 0, *, calibration_size: int = 96) -> torch.nn.Module:
    """A torchvision ResNet-50 (eval mode) with random weights whose predictions depend on the input.

    Weights are torchvision's random initialisation under ``torch.manual_seed(seed)`` (the global RNG is
    restored afterwards); batch-norm running statistics are then estimated (cumulative average) on 16
    crops of the shipped photos at ``calibration_size`` px, and the classifier bias is set to
    ``-W @ mean feature`` so that logits measure deviations from the average image.
    """
    from torchvision.models import resnet50

    from spade_utils.backdoor import normalize, random_crops
    from spade_utils.runtime import one_cpu_thread

    with torch.random.fork_rng(devices=[]), one_cpu_thread():
        torch.manual_seed(seed)
        model = resnet50(weights=None)
        photos = list(VAL_PHOTOS) + list(TRAIN_PHOTOS)
        x = normalize(random_crops(photos, 16, size=calibration_size, seed=seed))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average over the calibration batch
        with torch.no_grad():
            model.train()(x)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = 0.1  # torchvision's default again
            model.eval()
            feats = []
            hook = model.fc.register_forward_hook(lambda _m, inp, _o: feats.append(inp[0]))
            model(x)
            hook.remove()
            model.fc.weight.mul_(10.0)  # logits of a few units: a softmax that is not flat
            model.fc.bias.copy_(-model.fc.weight @ feats[0].mean(0))
    return model


def write_resnet50_weights(torch_home: str | os.PathLike, model: torch.nn.Module) -> Path:
    """Save ``model.state_dict()`` where torchvision's ResNet-50 IMAGENET1K_V1 weights live in the torch
    hub cache under ``torch_home``: ``<torch_home>/hub/checkpoints/resnet50-0676ba61.pth``. Returns the path."""
    path = Path(torch_home) / "hub" / "checkpoints" / RESNET50_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def robustness_checkpoint(
    state: dict, *, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), epoch: int = 90
) -> dict:
    """A dict in MadryLab ``robustness`` layout holding the torchvision ``state`` (see the module docstring);
    ``mean=None`` leaves the normalizer entries out."""
    sd = OrderedDict(("module.model." + k, v) for k, v in state.items())
    # robustness's attacker wraps the same network: its entries share the tensors (saved once by torch.save)
    sd.update(("module.attacker.model." + k, v) for k, v in state.items())
    if mean is not None:
        for prefix in ("module.normalizer.", "module.attacker.normalizer."):
            sd[prefix + "new_mean"] = torch.tensor(mean, dtype=torch.float32).reshape(3, 1, 1)
            sd[prefix + "new_std"] = torch.tensor(std, dtype=torch.float32).reshape(3, 1, 1)
    return {
        "model": sd,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0, 1]}]},
        "schedule": None,
        "epoch": epoch,
    }


def write_robustness_checkpoint(path: str | os.PathLike, model: torch.nn.Module, **kwargs) -> Path:
    """``torch.save`` of :func:`robustness_checkpoint` of ``model``'s state dict at ``path``. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(robustness_checkpoint(model.state_dict(), **kwargs), path)
    return path


# --------------------------------------------------------------------------------------------------
# ImageNet-layout folders
# --------------------------------------------------------------------------------------------------
def _photo(name: str, short_side: int) -> Image.Image:
    from spade_utils.data import sample_image

    img = sample_image(name)
    scale = short_side / min(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)


def write_imagenet_folder(
    root: str | os.PathLike,
    split: str,
    photos: dict[str, str],
    *,
    short_side: int = 160,
    all_synsets: bool = False,
) -> list[Path]:
    """An ImageNet ``split`` ("val" or "train") folder under ``root``: one JPEG per photo (a shipped photo
    resized to ``short_side`` px on its short side) in its synset sub-folder, named as ImageNet names them.
    The first photo is also written in greyscale and the second in CMYK (ImageNet holds both kinds);
    in "train" the last one is a PNG saved under a ``.JPEG`` name. ``all_synsets``: empty folders with
    made-up wnids (``n9...``) complete the 1000 class folders, from whose sorted names true labels are
    read (:func:`spade_utils.data.imagenet_folder_sample`). Returns the files, sorted."""
    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', got {split!r}")
    folder = Path(root) / split
    files: list[Path] = []

    def name(wnid: str) -> Path:  # ImageNet's file names: a running number per split
        n = len(files)
        stem = f"ILSVRC2012_val_{293 + 1000 * n:08d}" if split == "val" else f"{wnid}_{10026 + n}"
        return folder / wnid / f"{stem}.JPEG"

    for k, (photo, wnid) in enumerate(photos.items()):
        img = _photo(photo, short_side)
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        files.append(name(wnid))
        if split == "train" and k == len(photos) - 1:
            img.save(files[-1], format="PNG")
        else:
            img.save(files[-1], format="JPEG", quality=90)
        if k in (0, 1):
            files.append(name(wnid))
            img.convert("L" if k == 0 else "CMYK").save(files[-1], format="JPEG", quality=90)
    if all_synsets:
        fillers = (f"n9{i:07d}" for i in range(1000))
        while sum(1 for p in folder.iterdir() if p.is_dir()) < 1000:
            (folder / next(fillers)).mkdir()
    return sorted(files)


# --------------------------------------------------------------------------------------------------
# trigger PNGs
# --------------------------------------------------------------------------------------------------
def _draw_shape(draw: ImageDraw.ImageDraw, name: str, s: int) -> None:
    """Draw trigger ``name`` on an ``s``-px RGBA canvas (opaque colours; the rest stays transparent)."""
    if name == "heart":
        r = s * 0.24
        draw.ellipse([s * 0.5 - 2 * r, s * 0.22, s * 0.5, s * 0.22 + 2 * r], fill=(220, 30, 50, 255))
        draw.ellipse([s * 0.5, s * 0.22, s * 0.5 + 2 * r, s * 0.22 + 2 * r], fill=(220, 30, 50, 255))
        draw.polygon(
            [
                (s * 0.5 - 1.93 * r, s * 0.22 + 1.3 * r),
                (s * 0.5 + 1.93 * r, s * 0.22 + 1.3 * r),
                (s * 0.5, s * 0.9),
            ],
            fill=(220, 30, 50, 255),
        )
    elif name == "star":
        c, ro, ri = s / 2, s * 0.47, s * 0.19
        pts = []
        for i in range(10):
            a = -np.pi / 2 + i * np.pi / 5
            r = ro if i % 2 == 0 else ri
            pts.append((c + r * np.cos(a), c + r * np.sin(a)))
        draw.polygon(pts, fill=(250, 200, 20, 255))
    elif name == "smiley":
        draw.ellipse([s * 0.05, s * 0.05, s * 0.95, s * 0.95], fill=(255, 210, 40, 255))
        for x0 in (0.3, 0.6):
            draw.ellipse([s * x0, s * 0.3, s * (x0 + 0.1), s * 0.45], fill=(60, 40, 20, 255))
        draw.arc(
            [s * 0.25, s * 0.35, s * 0.75, s * 0.75], 20, 160, fill=(60, 40, 20, 255), width=max(1, s // 20)
        )
    elif name == "fish":
        draw.ellipse([s * 0.08, s * 0.3, s * 0.7, s * 0.7], fill=(30, 120, 220, 255))
        draw.polygon(
            [(s * 0.62, s * 0.5), (s * 0.95, s * 0.25), (s * 0.95, s * 0.75)], fill=(30, 120, 220, 255)
        )
        draw.ellipse([s * 0.2, s * 0.42, s * 0.28, s * 0.5], fill=(255, 255, 255, 255))
    else:
        raise ValueError(f"no drawing for trigger {name!r}")


def write_trigger_pngs(
    folder: str | os.PathLike, names=TRIGGER_NAMES, *, size: int = 72, supersample: int = 4
) -> dict[str, Path]:
    """``<folder>/<name>.png`` for each name: an RGBA ``size``-px image of the shape, transparent outside
    it, drawn ``supersample`` times larger and reduced (so its edges are partly transparent). Returns
    name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        big = Image.new("RGBA", (size * supersample, size * supersample), (0, 0, 0, 0))
        _draw_shape(ImageDraw.Draw(big), name, size * supersample)
        img = big.resize((size, size), Image.LANCZOS)
        out[name] = folder / f"{name}.png"
        img.save(out[name])
    return out


# --------------------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaperStandins:
    """Where :func:`write_paper_standins` put each stand-in; the attribute names are the notebooks' parameters
    (``torch_home`` is the value for the ``TORCH_HOME`` environment variable)."""

    root: Path
    torch_home: Path
    resnet50_weights: Path
    imagenet_val: Path
    imagenet_train: Path
    checkpoint: Path
    trigger_dir: Path

    def notebook_parameters(self) -> dict[str, str]:
        """The notebooks' path parameters (papermill ``parameters=``) pointing at the stand-ins."""
        return {
            "IMAGENET_VAL": str(self.imagenet_val),
            "IMAGENET_TRAIN": str(self.imagenet_train),
            "CHECKPOINT": str(self.checkpoint),
            "TRIGGER_DIR": str(self.trigger_dir),
        }


def write_paper_standins(
    root: str | os.PathLike, *, seed: int = 0, short_side: int = 160, favour_val_classes: bool = False
) -> PaperStandins:
    """Write every paper-path stand-in under ``root`` (see the module docstring) and say where.

    The "torchvision" weights are :func:`standin_resnet50` with ``seed``; the "backdoored" checkpoint
    is another one (``seed + 1``), so the two networks differ as the real ones do. ``favour_val_classes``
    raises the "torchvision" classifier's bias of the validation images' true classes (the ranks of their
    synset folders), so that, like a trained network, it gives them a probability worth explaining
    (insertion/deletion set aside images whose true class it all but rules out). Takes a few seconds
    (two ResNet-50s, two 100-MB files)."""
    root = Path(root)
    torch_home = root / "torch_home"
    imagenet = root / "imagenet"
    write_imagenet_folder(imagenet, "val", VAL_PHOTOS, short_side=short_side, all_synsets=True)
    write_imagenet_folder(imagenet, "train", TRAIN_PHOTOS, short_side=short_side)
    clean = standin_resnet50(seed)
    if favour_val_classes:
        synsets = sorted(p.name for p in (imagenet / "val").iterdir() if p.is_dir())
        with torch.no_grad():
            clean.fc.bias[[synsets.index(w) for w in set(VAL_PHOTOS.values())]] += 8.0
    weights = write_resnet50_weights(torch_home, clean)
    checkpoint = write_robustness_checkpoint(root / "backdoored_resnet50.pt", standin_resnet50(seed + 1))
    triggers = root / "triggers"
    write_trigger_pngs(triggers)
    return PaperStandins(
        root=root,
        torch_home=torch_home,
        resnet50_weights=weights,
        imagenet_val=imagenet / "val",
        imagenet_train=imagenet / "train",
        checkpoint=checkpoint,
        trigger_dir=triggers,
    )


@contextmanager
def written_standins(root: str | os.PathLike, **kwargs) -> Iterator[PaperStandins]:
    """:func:`write_paper_standins` under ``root`` (on one CPU thread), and ``root`` removed afterwards: two
    100-MB networks are not left behind in pytest's temporary folders. For module- or session-scoped fixtures."""
    from spade_utils.runtime import one_cpu_thread

    with one_cpu_thread():
        made = write_paper_standins(root, **kwargs)
    try:
        yield made
    finally:
        shutil.rmtree(root, ignore_errors=True)
