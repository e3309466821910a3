"""Backdoor (Trojan) experiments (SPADE, ICML 2024, Section 5.1 and Table 1), one job per module:

- :mod:`~spade_utils.backdoor.triggers`: the four drawn trigger shapes, :class:`TriggerSet` (the
  triggers a caller holds, e.g. the authors' emoji PNGs), pasting a trigger with its exact mask,
  and :func:`trigger_similarity` (is the trigger in an image?).
- :mod:`~spade_utils.backdoor.poison`: photos by name, seeded crops, textures, decoys, mosaics,
  :func:`poison` and the poisoned training set; :func:`normalize` ([0, 1] -> ImageNet-normalised).
- :mod:`~spade_utils.backdoor.implant`: :class:`BackdoorRecipe` and :func:`implant_backdoor`
  (fine-tuning with distillation, cached under ``data/cache``).
- :mod:`~spade_utils.backdoor.calibrate`: the paper's greedy per-block sparsity calibration
  (:func:`calibrate_block_sparsity`).
- :mod:`~spade_utils.backdoor.evaluate`: predictions, attack success and clean agreement,
  triggered samples that flip, pasted-patch attacks, and the Table-1 saliency scoring with
  bootstrap summaries.

Imports flow triggers <- poison <- evaluate <- implant. Splitting a network into a frozen front
and a trained back lives in :mod:`spade_utils.archs`; the Sparse-FC baseline in :mod:`spade_utils.baselines`.
"""

from .calibrate import PAPER_GRID, BlockCalibration, block_groups, calibrate_block_sparsity
from .evaluate import (
    TriggeredSample,
    evaluate_backdoor,
    flipped_samples,
    interval_cells,
    paired_differences,
    patch_attack_rate,
    predict,
    summarize_scores,
    trojan_saliency_scores,
)
from .implant import DEFAULT_RECIPE, OFFLINE_SPADE_LAYERS, Backdoor, BackdoorRecipe, implant_backdoor
from .poison import (
    CALIBRATION_PHOTOS,
    EXTRA_TRAIN_IMAGES,
    TEST_PHOTOS,
    TRAIN_PHOTOS,
    PoisonedBatch,
    build_poisoned_set,
    crop_sources,
    decoy_patch,
    fibre_textures,
    load_image,
    normalize,
    paste_patch,
    poison,
    procedural_textures,
    random_crops,
)
from .triggers import (
    DRAWN_TRIGGERS,
    PAPER_TARGETS,
    TRIGGERS,
    TriggerSet,
    paste_trigger,
    patch_size,
    trigger_patch,
    trigger_similarity,
)

__all__ = [
    "CALIBRATION_PHOTOS",
    "DEFAULT_RECIPE",
    "DRAWN_TRIGGERS",
    "EXTRA_TRAIN_IMAGES",
    "OFFLINE_SPADE_LAYERS",
    "PAPER_GRID",
    "PAPER_TARGETS",
    "TEST_PHOTOS",
    "TRAIN_PHOTOS",
    "TRIGGERS",
    "Backdoor",
    "BackdoorRecipe",
    "BlockCalibration",
    "PoisonedBatch",
    "TriggerSet",
    "TriggeredSample",
    "block_groups",
    "build_poisoned_set",
    "calibrate_block_sparsity",
    "crop_sources",
    "decoy_patch",
    "evaluate_backdoor",
    "fibre_textures",
    "flipped_samples",
    "implant_backdoor",
    "interval_cells",
    "load_image",
    "normalize",
    "paired_differences",
    "paste_patch",
    "paste_trigger",
    "patch_attack_rate",
    "patch_size",
    "poison",
    "predict",
    "procedural_textures",
    "random_crops",
    "summarize_scores",
    "trigger_patch",
    "trigger_similarity",
    "trojan_saliency_scores",
]
