"""Notebook 07's figure: each human-study trial as a participant sees it, beside the reference that grades it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import torch

from .human_study import Trial, patch_pair
from .plotting import _bare

__all__ = ["trials_figure"]


def trials_figure(
    trials: Sequence[Trial],
    photos: Mapping[str, torch.Tensor],
    references: Mapping[str, torch.Tensor],
    class_names: Sequence[str],
    *,
    row_height: float = 2.1,
) -> plt.Figure:
    """One row per trial: the visualization (titled with its condition and class), the left and right patches
    (with their mean reference attribution), and the photo ((3, H, W) in [0, 1]) under its reference map
    ((H, W) Score-CAM) with the favoured patch outlined in green and the favoured side, never shown to a
    participant, in the title. Raises TypeError/ValueError naming the argument, before drawing, for no trials, a
    trial without a photo or reference, a reference not of its photo's size, or a target ``class_names`` lacks."""
    if not isinstance(trials, (list, tuple)) or not trials or not all(isinstance(t, Trial) for t in trials):
        raise TypeError("trials must be a non-empty list of human_study.Trial")
    if not isinstance(photos, Mapping) or not isinstance(references, Mapping):
        raise TypeError("photos and references must be mappings photo name -> tensor")
    if isinstance(class_names, str) or not all(0 <= t.target < len(class_names) for t in trials):
        raise ValueError(
            f"class_names must be a list naming every trial's target (got {len(class_names)} names)"
        )
    missing = sorted({t.photo for t in trials} - (set(photos) & set(references)))
    if missing:
        raise ValueError(f"photos/references: nothing given for the trials' photos {missing}")
    for name in {t.photo for t in trials}:
        photo, ref = photos[name], references[name]
        if not isinstance(photo, torch.Tensor) or photo.dim() != 3 or photo.shape[0] != 3:
            raise ValueError(f"photos[{name!r}] must be a (3, H, W) tensor in [0, 1]")
        if not isinstance(ref, torch.Tensor) or tuple(ref.shape) != tuple(photo.shape[1:]):
            raise ValueError(f"references[{name!r}] must be an (H, W) tensor of its photo's size")
    boxes = {name: patch_pair(references[name].detach()) for name in {t.photo for t in trials}}
    fig, axes = plt.subplots(len(trials), 4, figsize=(8, row_height * len(trials)), squeeze=False)
    for row, t in zip(axes, trials):
        (top, left, h, w), _ = boxes[t.photo]
        panels = [
            (t.visualization, f"{t.condition}: {class_names[t.target][:18]}"),
            (t.left, f"left (Score-CAM {t.reference_left:.2f})"),
            (t.right, f"right (Score-CAM {t.reference_right:.2f})"),
            (photos[t.photo].detach().permute(1, 2, 0).numpy(), f"{t.photo}: favoured = {t.correct}"),
        ]
        for ax, (image, title) in zip(row, panels):
            ax.imshow(image)
            ax.set_title(title, fontsize=8)
            _bare(ax)
        row[3].imshow(references[t.photo].detach().numpy(), cmap="magma", alpha=0.5)
        row[3].add_patch(plt.Rectangle((left, top), w, h, fill=False, color="lime", lw=1.5))
    fig.tight_layout()
    return fig
