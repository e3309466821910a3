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
    participant, in the title. Raises TypeError/ValueError naming the argument for no trials or a trial whose
    photo has no photo or reference."""
    if not trials or not all(isinstance(t, Trial) for t in trials):
        raise TypeError("trials must be a non-empty sequence of human_study.Trial")
    missing = sorted({t.photo for t in trials} - (set(photos) & set(references)))
    if missing:
        raise ValueError(f"photos/references: nothing given for the trials' photos {missing}")
    fig, axes = plt.subplots(len(trials), 4, figsize=(8, row_height * len(trials)), squeeze=False)
    for row, t in zip(axes, trials):
        (top, left, h, w), _ = patch_pair(references[t.photo])
        panels = [
            (t.visualization, f"{t.condition}: {class_names[t.target][:18]}"),
            (t.left, f"left (Score-CAM {t.reference_left:.2f})"),
            (t.right, f"right (Score-CAM {t.reference_right:.2f})"),
            (photos[t.photo].permute(1, 2, 0).numpy(), f"{t.photo}: favoured = {t.correct}"),
        ]
        for ax, (image, title) in zip(row, panels):
            ax.imshow(image)
            ax.set_title(title, fontsize=8)
            _bare(ax)
        row[3].imshow(references[t.photo].numpy(), cmap="magma", alpha=0.5)
        row[3].add_patch(plt.Rectangle((left, top), w, h, fill=False, color="lime", lw=1.5))
    fig.tight_layout()
    return fig
