"""The paper's human study (SPADE, ICML 2024, Table 3) as a kit a class can run on itself.

Each *trial* shows a neuron's feature visualization (made on the dense network or on a photo's SPADE trace) and two
patches of the photo; the participant answers which patch the visualization points to: ``left``, ``right`` or
``undecided``. A reference attribution, Score-CAM (:func:`score_cam`) of the same neuron on the dense network,
decides which patch is "correct": the participant *agrees* with it, *disagrees*, or is undecided. The paper
reports, for dense and for SPADE visualizations, the share of each outcome (:func:`table3`).

The pieces: :func:`score_cam` (the reference), :func:`patch_pair` (the two patches), :func:`make_trials` /
:func:`save_trials` / :func:`load_trials` (the trial set), :func:`study_form` (the ipywidgets form served by
Voilà, ``make study``), :func:`append_response` / :func:`read_responses` (one CSV, one line per answer),
:func:`simulated_answers` (a participant who reads the reference attribution through noise, for the tests and
the dry run), :func:`table3` (undecided / agree / disagree with bootstrap intervals, clustered by participant).
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from .archs import prepare_for_captum
from .intervals import bootstrap_ci, paired_bootstrap_diff
from .runtime import eval_mode
from .saliency import gradcam_layer
from .validation import check_float, check_int, check_positive_int, check_seed

CONDITIONS = ("dense", "SPADE")
ANSWERS = ("left", "right", "undecided")
OUTCOMES = ("undecided", "agree", "disagree")
RESPONSE_COLUMNS = (
    "participant",
    "trial_id",
    "condition",
    "photo",
    "answer",
    "correct",
    "outcome",
    "seconds",
    "time",
)


# ------------------------------------------------------------------------------------------------ Score-CAM
def score_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    layer: str | None = None,
    *,
    channels: int | None = None,
    batch_size: int = 32,
    baseline: bool = True,
) -> torch.Tensor:
    """Score-CAM map of class ``target`` for one normalised image: float32 ``[H, W]`` in [0, 1], on the CPU.

    Score-CAM (Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu: "Score-CAM: Score-Weighted Visual Explanations
    for Convolutional Neural Networks", CVPR Workshops 2020, arXiv 1910.01279, section 3): for each channel k of
    ``layer``'s output A (``[K, h, w]``), upsample A_k bilinearly to the input size and min-max normalise it to
    [0, 1] (H_k); its weight is the increase of confidence it causes,
    ``alpha_k = softmax(f(x * H_k))[target] - softmax(f(x_b))[target]`` (``baseline=False`` drops the second term,
    as the authors' code does), where ``x * H_k`` keeps the image where H_k is high and sets it to 0 (the dataset
    mean under the model's normalisation) elsewhere, and x_b is the all-zero input. The map is
    ``ReLU(sum_k alpha_k A_k)``, upsampled to the input size and divided by its maximum (all zero if it is 0).
    A constant channel has no H_k and gets weight 0.

    Parameters
    ----------
    model : classifier returning logits ``[B, classes]``; run in eval mode and left as found (flags, weights).
    x : ``[1, 3, H, W]`` (or ``[3, H, W]``) normalised image, finite.
    target : class index; layer : a module name of ``model`` whose output is a feature map after its
        activation; default None: :func:`spade_utils.saliency.gradcam_layer` of a copy of ``model`` prepared as
        for Captum (:func:`spade_utils.archs.prepare_for_captum`: EfficientNet-Lite's head activation becomes a
        module of its own; the caller's model is not touched).
    channels : use only the ``channels`` channels with the largest activation variance (a speed-up, not in the
        paper; default None: every channel, the paper's method); batch_size : masked images per forward pass.

    Raises TypeError/ValueError naming the argument (shape, NaN, unknown layer, class out of range).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor [1, 3, H, W]")
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"x must be one image [1, C, H, W], got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or inf values")
    if layer is None:
        model = prepare_for_captum(copy.deepcopy(model))
        layer = gradcam_layer(model)
    modules = dict(model.named_modules())
    if not isinstance(layer, str) or layer not in modules:
        raise ValueError(f"layer must name a module of the model, got {layer!r}")
    target = check_int(target, "target", minimum=0)
    if channels is not None:
        channels = check_positive_int(channels, "channels")
    batch_size = check_positive_int(batch_size, "batch_size")
    # the model's device and dtype; the input's for a model without parameters
    param = next(model.parameters(), None)
    x = x.to(param.device, param.dtype) if param is not None else x
    dtype = x.dtype
    captured: list[torch.Tensor] = []
    handle = modules[layer].register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        with eval_mode(model), torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    if target >= logits.shape[1]:
        raise ValueError(f"target must be < {logits.shape[1]} (the model's classes), got {target}")
    if not captured or captured[0].dim() != 4:
        raise ValueError(f"layer {layer!r} must output a feature map [1, K, h, w]")
    acts = captured[0][0].float()  # [K, h, w]
    keep = torch.arange(acts.shape[0], device=acts.device)
    if channels is not None and channels < acts.shape[0]:
        keep = acts.flatten(1).var(dim=1).topk(channels).indices.sort().values
    size = x.shape[-2:]
    up = F.interpolate(acts[keep][None], size=size, mode="bilinear", align_corners=False)[0]  # [k, H, W]
    low = up.flatten(1).min(dim=1).values[:, None, None]
    span = up.flatten(1).max(dim=1).values[:, None, None] - low
    varying = span.flatten() > 0
    masks = torch.where(span > 0, (up - low) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
    weights = torch.zeros(len(keep), device=acts.device)
    with eval_mode(model), torch.no_grad():
        base = model(torch.zeros_like(x)).softmax(1)[0, target].float() if baseline else 0.0
        for start in range(0, len(keep), batch_size):
            m = masks[start : start + batch_size]
            probs = model(x * m[:, None].to(dtype)).softmax(1)[:, target].float()
            weights[start : start + batch_size] = probs - base
    weights = torch.where(varying, weights, torch.zeros_like(weights))
    cam = torch.relu((weights[:, None, None] * acts[keep]).sum(0))
    cam = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].clamp_min(0)
    top = float(cam.max())
    return (cam / top if top > 0 else cam).cpu()


# ------------------------------------------------------------------------------------------------ trials
@dataclass(frozen=True)
class Trial:
    """One question: a visualization and two patches; ``correct`` is the side of the patch the reference favours.

    ``visualization``, ``left``, ``right``: uint8 arrays ``[h, w, 3]``; ``condition``: ``"dense"`` or ``"SPADE"``;
    ``reference_left``, ``reference_right``: the mean reference attribution (Score-CAM, in [0, 1]) inside each
    patch; ``target``: the neuron (class index) visualized.
    """

    trial_id: str
    photo: str
    condition: str
    target: int
    visualization: np.ndarray
    left: np.ndarray
    right: np.ndarray
    correct: str
    reference_left: float
    reference_right: float


def _uint8_image(image, name: str) -> np.ndarray:
    """An image as uint8 ``[h, w, 3]``: from a float tensor/array ``[3, h, w]`` or ``[h, w, 3]`` in [0, 1], or uint8."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a tensor or array image, got {type(image).__name__}")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"{name} must be an RGB image [3, h, w] or [h, w, 3], got shape {image.shape}")
    if image.dtype == np.uint8:
        return image
    if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise ValueError(f"{name} must hold values in [0, 1] (or be uint8)")
    return (image * 255).round().astype(np.uint8)


def patch_pair(
    reference: torch.Tensor, *, grid: int = 3
) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """The two patches of a trial: the cells of a ``grid`` x ``grid`` partition of the image with the highest and
    the lowest mean ``reference`` attribution, as ``(top, left, height, width)`` boxes: ``(favoured, other)``.

    ``reference``: float ``[H, W]``, finite; ``grid`` >= 2 (default 3). Ties go to the first cell in row-major
    order. Raises ValueError for a constant map (no patch is favoured) or a grid finer than the map.
    """
    if not isinstance(reference, torch.Tensor) or reference.dim() != 2:
        raise TypeError("reference must be a torch.Tensor [H, W]")
    if not bool(torch.isfinite(reference).all()):
        raise ValueError("reference holds NaN or inf values")
    grid = check_int(grid, "grid", minimum=2)
    h, w = reference.shape
    if grid > min(h, w):
        raise ValueError(f"grid must be <= the map's side {min(h, w)}, got {grid}")
    ch, cw = h // grid, w // grid
    boxes = [(r * ch, c * cw, ch, cw) for r in range(grid) for c in range(grid)]
    means = [float(reference[t : t + hh, s : s + ww].mean()) for t, s, hh, ww in boxes]
    hi, lo = int(np.argmax(means)), int(np.argmin(means))
    if means[hi] == means[lo]:
        raise ValueError("reference is constant over the grid: no patch is favoured")
    return boxes[hi], boxes[lo]


def make_trials(
    photos: Mapping[str, torch.Tensor],
    references: Mapping[str, torch.Tensor],
    visualizations: Mapping[tuple[str, str], torch.Tensor],
    targets: Mapping[str, int],
    *,
    grid: int = 3,
    seed: int = 0,
) -> list[Trial]:
    """One trial per (photo, condition): the photo's two patches (:func:`patch_pair` of its reference map), put
    left and right in a seeded random order, under that condition's visualization.

    ``photos``: name -> image ``[3, H, W]`` in [0, 1] (what the reference explains); ``references``: name -> map
    ``[H, W]`` (e.g. :func:`score_cam`); ``visualizations``: (name, condition) -> image ``[3, h, w]`` in [0, 1],
    condition in :data:`CONDITIONS`; ``targets``: name -> the class visualized. Every photo needs a reference, a
    target and at least one visualization; raises TypeError/ValueError naming the argument otherwise.
    """
    if not isinstance(photos, Mapping) or not photos:
        raise ValueError("photos must be a non-empty mapping name -> image")
    seed = check_seed(seed)
    for key in visualizations:
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] in photos and key[1] in CONDITIONS):
            raise ValueError(f"visualizations keys must be (photo, condition in {CONDITIONS}), got {key!r}")
    rng = random.Random(seed)
    trials = []
    for name, image in photos.items():
        if name not in references or name not in targets:
            raise ValueError(f"photo {name!r} needs an entry in references and in targets")
        picture = _uint8_image(image, f"photos[{name!r}]")
        ref = references[name]
        if tuple(ref.shape) != picture.shape[:2]:
            raise ValueError(f"references[{name!r}] must have the photo's shape {picture.shape[:2]}")
        favoured, other = patch_pair(ref.float(), grid=grid)
        crops = {}
        for label, (t, s, hh, ww) in (("favoured", favoured), ("other", other)):
            crops[label] = (picture[t : t + hh, s : s + ww], float(ref[t : t + hh, s : s + ww].mean()))
        for condition in CONDITIONS:
            if (name, condition) not in visualizations:
                continue
            vis = _uint8_image(visualizations[name, condition], f"visualizations[{(name, condition)!r}]")
            correct = rng.choice(("left", "right"))
            first, second = ("favoured", "other") if correct == "left" else ("other", "favoured")
            trials.append(
                Trial(
                    trial_id=f"{name}-{condition}",
                    photo=name,
                    condition=condition,
                    target=check_int(targets[name], f"targets[{name!r}]", minimum=0),
                    visualization=vis,
                    left=crops[first][0],
                    right=crops[second][0],
                    correct=correct,
                    reference_left=crops[first][1],
                    reference_right=crops[second][1],
                )
            )
    if not trials:
        raise ValueError("visualizations holds no (photo, condition) of these photos: no trial")
    return trials


_TRIAL_FIELDS = ("trial_id", "photo", "condition", "target", "correct", "reference_left", "reference_right")


def save_trials(folder: str | os.PathLike, trials: Sequence[Trial]) -> Path:
    """Write ``trials`` to ``folder``: ``trials.csv`` (one row per trial) and three PNGs per trial
    (``<id>_visualization.png``, ``<id>_left.png``, ``<id>_right.png``). Returns the CSV's path."""
    if not trials or not all(isinstance(t, Trial) for t in trials):
        raise TypeError("trials must be a non-empty sequence of Trial")
    if len({t.trial_id for t in trials}) != len(trials):
        raise ValueError("trials must have unique trial_id values")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for t in trials:
        for part in ("visualization", "left", "right"):
            Image.fromarray(getattr(t, part)).save(folder / f"{t.trial_id}_{part}.png")
    table = pd.DataFrame([{f: getattr(t, f) for f in _TRIAL_FIELDS} for t in trials])
    path = folder / "trials.csv"
    table.to_csv(path, index=False)
    return path


def load_trials(folder: str | os.PathLike) -> list[Trial]:
    """The trials :func:`save_trials` wrote into ``folder``; FileNotFoundError when there are none."""
    folder = Path(folder)
    path = folder / "trials.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no trials.csv in {folder}")
    table = pd.read_csv(path, dtype={"trial_id": str, "photo": str})
    trials = []
    for row in table.itertuples(index=False):
        images = {
            part: np.asarray(Image.open(folder / f"{row.trial_id}_{part}.png").convert("RGB"))
            for part in ("visualization", "left", "right")
        }
        trials.append(
            Trial(
                trial_id=row.trial_id,
                photo=row.photo,
                condition=row.condition,
                target=int(row.target),
                correct=row.correct,
                reference_left=float(row.reference_left),
                reference_right=float(row.reference_right),
                **images,
            )
        )
    return trials


# ------------------------------------------------------------------------------------------------ responses
def outcome(answer: str, correct: str) -> str:
    """``"undecided"``, ``"agree"`` (the answer is the reference's side) or ``"disagree"``."""
    if answer not in ANSWERS:
        raise ValueError(f"answer must be one of {ANSWERS}, got {answer!r}")
    if correct not in ("left", "right"):
        raise ValueError(f"correct must be 'left' or 'right', got {correct!r}")
    return "undecided" if answer == "undecided" else ("agree" if answer == correct else "disagree")


def append_response(
    path: str | os.PathLike, participant: str, trial: Trial, answer: str, seconds: float
) -> dict:
    """Append one answer to the CSV at ``path`` (created with a header), as one ``O_APPEND`` write, so the kernels
    of several participants' pages can share the file. Returns the row written (:data:`RESPONSE_COLUMNS`)."""
    if (
        not isinstance(participant, str)
        or not participant.strip()
        or "," in participant
        or "\n" in participant
    ):
        raise ValueError(
            f"participant must be a non-empty name without commas or newlines, got {participant!r}"
        )
    if not isinstance(trial, Trial):
        raise TypeError(f"trial must be a Trial, got {type(trial).__name__}")
    row = {
        "participant": participant.strip(),
        "trial_id": trial.trial_id,
        "condition": trial.condition,
        "photo": trial.photo,
        "answer": answer,
        "correct": trial.correct,
        "outcome": outcome(answer, trial.correct),
        "seconds": round(check_float(seconds, "seconds", low=0.0), 3),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # exactly one writer creates the file and its header
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, (",".join(RESPONSE_COLUMNS) + "\n").encode())
        os.close(fd)
    except FileExistsError:
        pass
    line = ",".join(str(row[c]) for c in RESPONSE_COLUMNS) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return row


def read_responses(path: str | os.PathLike) -> pd.DataFrame:
    """The answers in the CSV at ``path`` as a DataFrame (:data:`RESPONSE_COLUMNS`); ValueError for a file with
    other columns, an unknown answer or condition, or an outcome that does not follow from answer and correct."""
    table = pd.read_csv(path, dtype={"participant": str, "trial_id": str, "photo": str})
    if tuple(table.columns) != RESPONSE_COLUMNS:
        raise ValueError(f"{path} must have the columns {RESPONSE_COLUMNS}, got {tuple(table.columns)}")
    bad = table[~table.condition.isin(CONDITIONS) | ~table.answer.isin(ANSWERS)]
    if len(bad):
        raise ValueError(f"{path}: unknown condition or answer in rows {bad.index.tolist()[:5]}")
    expected = [outcome(a, c) for a, c in zip(table.answer, table.correct, strict=True)]
    if list(table.outcome) != expected:
        raise ValueError(f"{path}: the outcome column does not follow from answer and correct")
    return table


# ------------------------------------------------------------------------------------------------ simulation
def simulated_answers(
    trials: Sequence[Trial], *, noise: Mapping[str, float], margin: float, seed: int = 0
) -> list[str]:
    """The answers of a simulated participant who reads the reference attribution through noise.

    For each trial they perceive ``reference_left + e_l`` and ``reference_right + e_r`` with independent
    ``e ~ N(0, noise[condition]**2)``, answer ``undecided`` when the two differ by less than ``margin``, else the
    side perceived higher. So with ``d = |reference_left - reference_right|`` and ``s = noise * sqrt(2)``,
    P(agree) = Phi((d - margin) / s), P(disagree) = Phi((-d - margin) / s) (:func:`expected_outcomes`).
    """
    seed = check_seed(seed)
    margin = check_float(margin, "margin", low=0.0)
    rng = np.random.default_rng(seed)
    answers = []
    for t in trials:
        sigma = check_float(noise[t.condition], f"noise[{t.condition!r}]", low=0.0)
        left, right = t.reference_left + rng.normal(0, sigma), t.reference_right + rng.normal(0, sigma)
        answers.append("undecided" if abs(left - right) < margin else ("left" if left > right else "right"))
    return answers


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def expected_outcomes(trials: Sequence[Trial], *, noise: Mapping[str, float], margin: float) -> pd.DataFrame:
    """The exact expected share of each outcome per condition for :func:`simulated_answers` (the test's oracle)."""
    rows = []
    for condition in CONDITIONS:
        chosen = [t for t in trials if t.condition == condition]
        if not chosen:
            continue
        s = noise[condition] * math.sqrt(2)
        agree, disagree = [], []
        for t in chosen:
            d = abs(t.reference_left - t.reference_right)
            if s == 0:
                agree.append(float(d >= margin))
                disagree.append(0.0)
            else:
                agree.append(_phi((d - margin) / s))
                disagree.append(_phi((-d - margin) / s))
        a, b = float(np.mean(agree)), float(np.mean(disagree))
        rows.append({"condition": condition, "undecided": 1 - a - b, "agree": a, "disagree": b})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ analysis
def _share_interval(
    values: np.ndarray, clusters, n_boot: int, level: float, seed: int
) -> tuple[float, float, float]:
    share = float(values.mean())
    if values.min() == values.max():  # every answer alike: every resample gives the same share
        return share, share, share
    if clusters is not None and len(set(clusters)) < 2:
        clusters = None
    return bootstrap_ci(values, n_boot=n_boot, level=level, seed=seed, clusters=clusters)


def table3(
    responses: pd.DataFrame, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> pd.DataFrame:
    """The Table-3 rows: per condition (dense, SPADE), the share of undecided, agree and disagree answers, each with
    a bootstrap ``level`` interval that resamples participants, then their answers (answers of one person are not
    independent; :func:`spade_utils.intervals.bootstrap_ci` with ``clusters``; one participant: plain bootstrap).

    ``responses``: a DataFrame as :func:`read_responses` returns. Columns of the result: ``condition``,
    ``answers``, ``participants``, and for each outcome ``<outcome>``, ``<outcome> low``, ``<outcome> high``
    (fractions in [0, 1]). A condition needs at least 2 answers; ValueError otherwise, or for missing columns.
    """
    if not isinstance(responses, pd.DataFrame):
        raise TypeError(f"responses must be a pandas DataFrame, got {type(responses).__name__}")
    missing = {"participant", "condition", "outcome"} - set(responses.columns)
    if missing:
        raise ValueError(f"responses lacks the columns {sorted(missing)}")
    rows = []
    for condition in CONDITIONS:
        part = responses[responses.condition == condition]
        if len(part) == 0:
            continue
        if len(part) < 2:
            raise ValueError(f"responses: condition {condition!r} needs at least 2 answers for an interval")
        row: dict[str, object] = {
            "condition": condition,
            "answers": len(part),
            "participants": part.participant.nunique(),
        }
        clusters = part.participant.to_numpy()
        for name in OUTCOMES:
            est, low, high = _share_interval(
                (part.outcome == name).to_numpy(float), clusters, n_boot, level, seed
            )
            row.update({name: est, f"{name} low": low, f"{name} high": high})
        rows.append(row)
    if not rows:
        raise ValueError("responses holds no answer of a known condition")
    return pd.DataFrame(rows)


def agreement_difference(
    responses: pd.DataFrame, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float, int]:
    """SPADE's agreement with the reference minus dense's, paired: ``(difference, low, high, pairs)``.

    A pair is one participant's answers to the dense and the SPADE trial of one photo (the same neuron and
    patches); the difference is the mean over pairs of ``agree(SPADE) - agree(dense)`` (each 1 or 0), with the
    :func:`spade_utils.intervals.paired_bootstrap_diff` ``level`` interval that resamples participants, then their
    pairs (plain pairs with one participant). A participant's repeated answer to a trial counts once (the first).
    Raises ValueError when fewer than 2 pairs exist or columns are missing.
    """
    if not isinstance(responses, pd.DataFrame):
        raise TypeError(f"responses must be a pandas DataFrame, got {type(responses).__name__}")
    missing = {"participant", "condition", "outcome", "photo"} - set(responses.columns)
    if missing:
        raise ValueError(f"responses lacks the columns {sorted(missing)}")
    first = responses.drop_duplicates(["participant", "photo", "condition"])
    wide = first.pivot(index=["participant", "photo"], columns="condition", values="outcome").dropna()
    if len(wide) < 2 or not set(CONDITIONS) <= set(wide.columns):
        raise ValueError(
            f"responses: need at least 2 (participant, photo) pairs answered in both conditions, got {len(wide)}"
        )
    a = (wide["SPADE"] == "agree").to_numpy(float)
    b = (wide["dense"] == "agree").to_numpy(float)
    d = a - b
    if d.min() == d.max():  # every pair alike: every resample gives the same difference
        return float(d[0]), float(d[0]), float(d[0]), len(d)
    clusters = wide.index.get_level_values("participant").to_numpy()
    clusters = clusters if len(set(clusters)) >= 2 else None
    diff, low, high = paired_bootstrap_diff(a, b, clusters, n_boot=n_boot, level=level, seed=seed)
    return diff, low, high, len(d)


def format_table3(table: pd.DataFrame) -> pd.DataFrame:
    """The Table-3 rows as text, ``"42% [35, 50]"`` per outcome, for display."""
    out = table[["condition", "answers", "participants"]].copy()
    for name in OUTCOMES:
        out[name] = [
            f"{100 * e:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
            for e, lo, hi in zip(table[name], table[f"{name} low"], table[f"{name} high"], strict=True)
        ]
    return out


# ------------------------------------------------------------------------------------------------ the form
def _png(array: np.ndarray, side: int) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).resize((side, side), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def study_form(
    trials: Sequence[Trial],
    responses_path: str | os.PathLike,
    *,
    participant: str | None = None,
    seed: int | None = None,
    side: int = 192,
):
    """The answer form as one ipywidgets box: per trial the visualization and the two patches, and three buttons
    (left / undecided / right). Each click appends a row to ``responses_path`` (:func:`append_response`) and shows
    the next trial; trials come in an order shuffled per participant. ``participant``: a name (default: a random
    code shown on the page); ``side``: pixels of each picture. Returns the box; its ``.buttons`` dict
    (answer -> Button) lets a script or test answer."""
    import ipywidgets as w

    if not trials:
        raise ValueError("trials is empty")
    participant = participant or f"p-{uuid.uuid4().hex[:6]}"
    order = list(trials)
    random.Random(seed if seed is not None else participant).shuffle(order)
    state: dict[str, Any] = {"k": 0, "shown": time.perf_counter()}
    header = w.HTML()
    header.add_class("spade-study-header")
    pictures = {
        part: w.Image(format="png", width=side, height=side) for part in ("visualization", "left", "right")
    }
    buttons = {answer: w.Button(description=answer) for answer in ("left", "undecided", "right")}
    for answer, button in buttons.items():
        button.add_class(f"spade-answer-{answer}")

    def caption(text, widget):
        return w.VBox([w.HTML(f"<b>{text}</b>"), widget])

    def show() -> None:
        k = state["k"]
        if k >= len(order):
            header.value = f"<h3>Thank you, {participant}: all {len(order)} answers are saved.</h3>"
            for b in buttons.values():
                b.disabled = True
            return
        t = order[k]
        header.value = (
            f"Participant <code>{participant}</code> · question {k + 1} of {len(order)}: which patch of the photo "
            "does this visualization show?"
        )
        for part in pictures:
            pictures[part].value = _png(getattr(t, part), side)
        state["shown"] = time.perf_counter()

    def answered(answer: str):
        def click(_button) -> None:
            k = state["k"]
            if k >= len(order):
                return
            append_response(
                responses_path, participant, order[k], answer, time.perf_counter() - state["shown"]
            )
            state["k"] = k + 1
            show()

        return click

    for answer, button in buttons.items():
        button.on_click(answered(answer))
    show()
    box = w.VBox(
        [
            header,
            w.HBox(
                [
                    caption("visualization", pictures["visualization"]),
                    caption("left patch", pictures["left"]),
                    caption("right patch", pictures["right"]),
                ]
            ),
            w.HBox([buttons["left"], buttons["undecided"], buttons["right"]]),
        ]
    )
    box.add_class("spade-study")
    box.buttons = buttons
    box.participant = participant
    return box


def read_or_empty(path: str | os.PathLike) -> pd.DataFrame:
    """:func:`read_responses`, or an empty table with :data:`RESPONSE_COLUMNS` when ``path`` does not exist yet."""
    if not Path(path).is_file():
        return pd.DataFrame(columns=list(RESPONSE_COLUMNS))
    return read_responses(path)
