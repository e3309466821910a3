"""``spade-run``: the command-line entry point for the dataset-scale experiments, sharded and resumable.

Sub-commands::

    spade-run trojan --out runs/t1 --n-samples 111 --sparsities 0.9 [--shard 0 --num-shards 4] ...
    spade-run merge --out runs/t1
    spade-run insertion ...   (registered, not implemented yet)
    spade-run calibrate ...   (registered, not implemented yet)

``trojan`` is the Table-1 analogue of notebook 04 (SPADE, ICML 2024, Table 1): the Trojan AUC of each saliency
method for the variants Clean original, Dense, Sparse FC, FastSPADE (SparseGPT) and SPADE (OBC), on triggered
crops of held-out photos (``--source offline``: EfficientNet-Lite0 with the implanted backdoor and the shipped
photos; ``--source paper``: the authors' ResNet-50 checkpoint, trigger PNGs and ImageNet folders). Sample
``i`` is candidate ``i`` of a deterministic list (:func:`trojan_sample`: photo, crop, trigger and position all
seeded from ``--seed`` and ``i``); ``--n-samples N`` takes the first N candidates that the trigger flips (or the
first N with ``--no-require-flip``), ``--sample-ids`` names them. Each shard writes
``<out>/trojan/shard-<k>-of-<n>.csv`` sample by sample and resumes from it (:mod:`spade_utils.run_shards`);
``merge`` writes ``merged.csv`` and ``summary.csv`` (:func:`spade_utils.backdoor.summarize_scores`).

Settings come from flags or ``--config FILE`` (JSON, or TOML on Python >= 3.11: flag names as keys, dashes or
underscores), flags winning. Progress and summary lines go to stderr; exit status 0 on success, 1 when
``merge`` finds missing ids, 2 for bad input (named flag) or refused files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .run_shards import (
    ShardFile,
    code_version,
    derive_seed,
    local_device,
    merge_shards,
    resolve_shard,
    settings_hash,
    shard_path,
    stride_ids,
    write_manifest,
)

__all__ = [
    "TROJAN_KEY",
    "VARIANTS",
    "build_parser",
    "main",
    "parse_ids",
    "trojan_sample",
    "trojan_sample_rows",
]

# CLI name -> the variant label of notebook 04's tables
VARIANTS = {
    "clean": "Clean original",
    "dense": "Dense",
    "sparse-fc": "Sparse FC",
    "fastspade": "FastSPADE (SparseGPT)",
    "spade": "SPADE (OBC)",
}
_SOLVERS = {"fastspade": "sparsegpt", "spade": "obc"}  # per-sample variants: a SPADE trace per sample
TROJAN_KEY = ["sample_id", "variant", "sparsity", "method"]
_COLUMNS = [
    "sample_id",
    "source",
    "source_name",
    "trigger",
    "target",
    "clean_prediction",
    "triggered_prediction",
    "flipped",
    "variant",
    "sparsity",
    "method",
    "variant_prediction",
    "auc",
    "auc_signed",
    "auc_absolute",
    "pointing",
    "settings_hash",
    "code_version",
]


class UsageError(ValueError):
    """Bad input or a refused file: reported as ``spade-run: error: ...`` with exit status 2."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# the library part: one sample, its rows
# --------------------------------------------------------------------------------------------------
def parse_ids(text) -> list[int]:
    """Sample ids from ``"0-9,15,20"`` (ranges inclusive), a list of ints, or one int: sorted, unique.
    Raises ValueError naming ``--sample-ids`` for anything else or a negative id."""
    if isinstance(text, int) and not isinstance(text, bool):
        parts: list = [text]
    elif isinstance(text, (list, tuple)):
        parts = list(text)
    elif isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
    else:
        raise UsageError(f"--sample-ids must be like '0-9,15', got {text!r}")
    ids: set[int] = set()
    for p in parts:
        try:
            if isinstance(p, str) and "-" in p[1:]:
                lo, hi = (int(v) for v in p.split("-", 1))
                if lo > hi:
                    raise ValueError
                ids.update(range(lo, hi + 1))
            elif isinstance(p, bool):
                raise ValueError
            else:
                ids.add(int(p))
        except (TypeError, ValueError):
            raise UsageError(f"--sample-ids: cannot read {p!r} (ids like '0-9,15')") from None
    if not ids or min(ids) < 0:
        raise UsageError(f"--sample-ids must name ids >= 0, got {text!r}")
    return sorted(ids)


def trojan_sample(photos, sample_id: int, *, seed: int, targets, size: int = 224, trigger_set=None):
    """Candidate ``sample_id`` of the Trojan evaluation: a :class:`~spade_utils.backdoor.TriggeredSample`.

    ``photos``: a list of photo names (:func:`spade_utils.backdoor.load_image`) or image file paths;
    ``targets``: trigger name -> target class, in order (candidate ``i`` gets trigger ``i % len(targets)``).
    The photo, the crop (``size`` px, :func:`~spade_utils.backdoor.random_crops`) and the trigger's position
    are drawn from seeds derived from ``seed`` and ``sample_id`` alone, so a candidate is the same whoever
    builds it. ``clean_prediction`` is left -1 (filled by the caller's model). ``source`` is the photo's
    index in ``photos`` (the bootstrap cluster).
    """
    from .backdoor import TriggeredSample, paste_trigger, random_crops

    names = list(targets)
    k = derive_seed(seed, sample_id, "photo") % len(photos)
    crop = random_crops([_load_photo(photos[k])], 1, size=size, seed=derive_seed(seed, sample_id, "crop"))[0]
    trigger = names[sample_id % len(names)]
    image, mask = paste_trigger(
        crop, trigger, seed=derive_seed(seed, sample_id, "paste"), trigger_set=trigger_set
    )
    return TriggeredSample(image, mask, crop, trigger, int(targets[trigger]), -1, k)


_PHOTOS: dict[str, object] = {}


def _load_photo(photo):
    key = str(photo)
    if key not in _PHOTOS:
        from .backdoor import load_image
        from .data import read_image

        _PHOTOS[key] = read_image(photo) if isinstance(photo, Path) else load_image(photo)
    if len(_PHOTOS) > 64:  # an ImageNet folder: keep the cache small
        _PHOTOS.pop(next(iter(_PHOTOS)))
    return _PHOTOS[key]


def _top1(model, images) -> list[int]:
    from .backdoor import predict

    return predict(model, images).argmax(1).tolist()


def trojan_sample_rows(
    sample_id: int,
    sample,
    *,
    models,
    backdoored,
    per_sample: Sequence[str],
    sparsities: Sequence[float],
    methods: Sequence[str],
    trace_kwargs,
    attribute_kwargs,
    seed: int,
):
    """The rows of one sample: every variant x method (x sparsity for the SPADE variants), as a DataFrame.

    ``models``: variant label -> model, attributed as they are (Clean original, Dense, Sparse FC);
    ``per_sample``: CLI names among ``fastspade``/``spade``, each a SPADE trace of ``backdoored`` on this sample
    at each of ``sparsities`` (:func:`spade_utils.spade.spade_pruned_copy` with ``trace_kwargs``).
    The views and the attribution are seeded from ``seed`` and ``sample_id`` (:func:`derive_seed`), so the
    rows do not depend on which shard runs the sample. Columns: ids, the backdoored model's top-1 on the
    clean and triggered image (``flipped``), each variant's top-1 on the triggered image, and the Trojan AUC
    columns of :func:`spade_utils.backdoor.trojan_saliency_scores` (no ``settings_hash``/``code_version``).
    """
    import pandas as pd
    import torch

    from .backdoor import trojan_saliency_scores
    from .spade import spade_pruned_copy

    attr = dict(attribute_kwargs, seed=derive_seed(seed, sample_id, "attribute"))
    views_seed = derive_seed(seed, sample_id, "views")
    clean_pred, trig_pred = _top1(backdoored, torch.stack([sample.clean, sample.image]))
    sample.clean_prediction = clean_pred
    frames = []
    if models:
        scores, _ = trojan_saliency_scores(models, [sample], methods, attribute_kwargs=attr, progress=False)
        preds = {label: _top1(m, sample.image[None])[0] for label, m in models.items()}
        frames.append(scores.assign(sparsity=float("nan"), variant_prediction=scores.variant.map(preds)))
    for sp in sparsities:
        preds = {}

        def traced(name, sp=sp, preds=preds):
            def build(s, i):
                m = spade_pruned_copy(
                    backdoored, s.image, sparsity=sp, solver=_SOLVERS[name], seed=views_seed, **trace_kwargs
                )
                preds[VARIANTS[name]] = _top1(m, s.image[None])[0]
                return m

            return build

        if per_sample:
            variants = {VARIANTS[n]: traced(n) for n in per_sample}
            scores, _ = trojan_saliency_scores(
                variants, [sample], methods, attribute_kwargs=attr, progress=False
            )
            frames.append(scores.assign(sparsity=float(sp), variant_prediction=scores.variant.map(preds)))
    rows = pd.concat(frames, ignore_index=True)
    rows = rows.assign(
        sample_id=int(sample_id),
        target=sample.target,
        clean_prediction=clean_pred,
        triggered_prediction=trig_pred,
        flipped=clean_pred != sample.target and trig_pred == sample.target,
    )
    return rows


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``spade-run`` argument parser (sub-commands trojan, merge, insertion, calibrate)."""
    return _build()[0]


def _build() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The parser and its ``trojan`` sub-parser (where ``--config`` values become defaults)."""
    parser = argparse.ArgumentParser(prog="spade-run", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trojan", help="Trojan AUC per saliency method and variant (Table 1)")
    t.add_argument("--config", help="JSON/TOML file of flag values (flags on the command line win)")
    t.add_argument("--out", help="output folder; rows go to <out>/trojan/")
    t.add_argument("--source", choices=["offline", "paper"], default="offline")
    t.add_argument("--checkpoint", help="paper source: the authors' robustness checkpoint (.pt)")
    t.add_argument("--trigger-dir", help="paper source: folder with heart/star/smiley/fish .png")
    t.add_argument("--imagenet-val", help="paper source: evaluation images (ImageNet validation folder)")
    t.add_argument("--imagenet-train", help="paper source: images for the Sparse-FC fit")
    t.add_argument("--n-samples", type=int, help="evaluate the first N candidates the trigger flips")
    t.add_argument("--sample-ids", help="evaluate exactly these candidate ids, e.g. '0-9,15'")
    t.add_argument("--require-flip", action=argparse.BooleanOptionalAction, default=True)
    t.add_argument("--max-candidates", type=int, help="candidates scanned for --n-samples (default 16 N)")
    t.add_argument("--triggers", nargs="+", default=["smiley", "fish"], help="evaluation triggers")
    t.add_argument("--methods", nargs="+", help="saliency methods (default: all)")
    t.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"of {list(VARIANTS)}")
    t.add_argument("--sparsities", nargs="+", type=float, help="SPADE sparsities (for fastspade/spade)")
    t.add_argument("--views", type=int, default=1024, help="augmented views per SPADE trace")
    t.add_argument("--layers", nargs="+", help="layer patterns SPADE prunes (default: per source)")
    t.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps")
    t.add_argument("--shap-samples", type=int, default=16, help="gradient-SHAP samples")
    t.add_argument("--fc-crops", type=int, default=480, help="Sparse FC: training crops")
    t.add_argument("--fc-path", type=int, default=20, help="Sparse FC: regularisation path length")
    t.add_argument("--seed", type=int, default=0, help="seeds samples, views, attribution, Sparse FC")
    t.add_argument("--implant-seed", type=int, default=0, help="offline source: seed of the implant")
    t.add_argument("--implant-steps", type=int, help="offline: implant recipe steps (default recipe's)")
    t.add_argument("--implant-n-clean", type=int, help="offline: implant clean crops")
    t.add_argument("--implant-n-triggered", type=int, help="offline: implant triggered crops")
    t.add_argument("--cache-dir", help="offline: implant cache folder (default: the project's data/cache)")
    t.add_argument("--no-cache", action="store_true", help="offline: implant without a cache")
    t.add_argument("--size", type=int, default=224, help="crop size in px")
    t.add_argument(
        "--device", default="auto", help="auto (CUDA when present; LOCAL_RANK under torchrun), cpu, cuda:N"
    )
    t.add_argument("--shard", type=int, help="this shard's index k (0 <= k < n)")
    t.add_argument("--num-shards", type=int, help="number of shards n")
    t.add_argument("--max-samples", type=int, help="stop after this many new samples (rerun resumes)")
    m = sub.add_parser("merge", help="merge the shard files of a run and name missing ids")
    m.add_argument("--out", required=True, help="the run's output folder")
    m.add_argument("--experiment", choices=["trojan"], default="trojan")
    for name in ("insertion", "calibrate"):
        p = sub.add_parser(name, help=f"{name} (not implemented yet)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return parser, t


def _apply_config(parser: argparse.ArgumentParser, sub: argparse.ArgumentParser, argv) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if not getattr(args, "config", None):
        return args
    path = Path(args.config)
    if not path.is_file():
        raise UsageError(f"--config: no file {path}")
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise UsageError("--config: TOML needs Python >= 3.11; use a .json file") from None
        config = tomllib.loads(path.read_text())
    else:
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UsageError(f"--config {path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise UsageError(f"--config {path} must hold a mapping of flag names to values")
    known = {a.dest for a in sub._actions} - {"help", "config"}
    values = {}
    for key, value in config.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in known:
            raise UsageError(f"--config {path}: unknown setting {key!r} (not a flag of this command)")
        values[dest] = value
    sub.set_defaults(**values)
    return parser.parse_args(argv)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_args(a: argparse.Namespace) -> None:
    """Every flag checked before any work; UsageError naming the flag."""
    from .saliency import SALIENCY_METHODS

    def intflag(dest, minimum, required=False):
        v = getattr(a, dest)
        if v is None:
            if required:
                raise UsageError(f"{_flag(dest)} is required")
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise UsageError(f"{_flag(dest)} must be an integer >= {minimum}, got {v!r}")

    def listflag(dest):
        v = getattr(a, dest)
        if isinstance(v, str):
            v = [v]
            setattr(a, dest, v)
        if v is not None and (not isinstance(v, list) or not v):
            raise UsageError(f"{_flag(dest)} must be a non-empty list, got {v!r}")

    if not a.out:
        raise UsageError("--out is required (the output folder)")
    for dest in ("triggers", "methods", "variants", "sparsities", "layers"):
        listflag(dest)
    for dest, lo in [("views", 1), ("ig_steps", 1), ("shap_samples", 1), ("fc_crops", 4), ("fc_path", 1)]:
        intflag(dest, lo, required=True)
    for dest in ("seed", "implant_seed"):
        intflag(dest, 0, required=True)
    intflag("size", 16, required=True)
    for dest in (
        "n_samples",
        "max_candidates",
        "max_samples",
        "implant_steps",
        "implant_n_clean",
        "implant_n_triggered",
    ):
        intflag(dest, 1)
    if (a.n_samples is None) == (a.sample_ids is None):
        raise UsageError("give exactly one of --n-samples N and --sample-ids LIST")
    a.ids = parse_ids(a.sample_ids) if a.sample_ids is not None else None
    bad = [v for v in a.variants if v not in VARIANTS]
    if bad or len(set(a.variants)) != len(a.variants):
        raise UsageError(f"--variants must be distinct names of {list(VARIANTS)}, got {a.variants}")
    a.methods = a.methods or list(SALIENCY_METHODS)
    bad = [m for m in a.methods if m not in SALIENCY_METHODS]
    if bad or len(set(a.methods)) != len(a.methods):
        raise UsageError(f"--methods must be distinct names of {SALIENCY_METHODS}, got {a.methods}")
    if any(v in _SOLVERS for v in a.variants):
        if not a.sparsities:
            raise UsageError(
                "--sparsities is required for the variants fastspade/spade (e.g. --sparsities 0.9)"
            )
        for s in a.sparsities:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 1:
                raise UsageError(f"--sparsities must lie in (0, 1), got {s!r}")
        a.sparsities = sorted({float(s) for s in a.sparsities})
    else:
        a.sparsities = []
    if len(set(a.triggers)) != len(a.triggers):
        raise UsageError(f"--triggers must be distinct, got {a.triggers}")
    if a.source == "paper":
        needs = [("checkpoint", "file"), ("trigger_dir", "dir"), ("imagenet_val", "dir")]
        if "sparse-fc" in a.variants:
            needs.append(("imagenet_train", "dir"))
        for dest, kind in needs:
            v = getattr(a, dest)
            if not v:
                raise UsageError(f"{_flag(dest)} is required with --source paper")
            ok = Path(v).is_file() if kind == "file" else Path(v).is_dir()
            if not ok:
                raise UsageError(f"{_flag(dest)}: no {'file' if kind == 'file' else 'folder'} {v}")
        for t in a.triggers:
            if not (Path(a.trigger_dir) / f"{t}.png").is_file():
                raise UsageError(f"--trigger-dir: no {t}.png in {a.trigger_dir}")
    else:
        for dest in ("checkpoint", "trigger_dir", "imagenet_val", "imagenet_train"):
            if getattr(a, dest):
                raise UsageError(f"{_flag(dest)} is for --source paper only")
    if a.no_cache and a.cache_dir:
        raise UsageError("--no-cache and --cache-dir exclude each other")
    try:
        a.spec = resolve_shard(a.shard, a.num_shards)
        a.device = local_device(a.device)
        from .runtime import resolve_device

        a.torch_device = resolve_device(a.device)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None


def _model_hash(model) -> str:
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _setup_trojan(a: argparse.Namespace) -> dict:
    """Models, photos, triggers and the settings that change numbers."""
    import torch

    from . import backdoor, baselines
    from .models import load_model, load_robustness_checkpoint

    dev = a.torch_device
    if a.source == "paper":
        trigger_set = backdoor.TriggerSet.from_folder(a.trigger_dir, a.triggers)
        original = load_model("resnet50", device=dev) if "clean" in a.variants else None
        backdoored = load_robustness_checkpoint(a.checkpoint).to(dev)
        all_targets = dict(backdoor.PAPER_TARGETS)
        photos: list = sorted(
            p for p in Path(a.imagenet_val).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png")
        )
        photo_names = [p.relative_to(a.imagenet_val).as_posix() for p in photos]
        fc_images = a.imagenet_train
        layers, skip_dw = a.layers or ["layer3.4*", "layer3.5*", "layer4*", "fc"], False
    else:
        trigger_set = backdoor.DRAWN_TRIGGERS
        original = load_model("efficientnet_lite0", device=dev)
        overrides = {
            k: v
            for k, v in dict(
                steps=a.implant_steps, n_clean=a.implant_n_clean, n_triggered=a.implant_n_triggered
            ).items()
            if v is not None
        }
        cache = False if a.no_cache else (a.cache_dir or True)
        _say(f"[trojan] implanting (or loading) the offline backdoor {overrides or 'default recipe'} ...")
        bd = backdoor.implant_backdoor(
            original,
            recipe=backdoor.DEFAULT_RECIPE.replace(**overrides),
            seed=a.implant_seed,
            cache=cache,
            device=dev,
            progress=False,
        )
        backdoored, all_targets = bd.model, bd.targets
        photos = photo_names = list(backdoor.TEST_PHOTOS)
        fc_images = list(backdoor.TRAIN_PHOTOS) + list(backdoor.EXTRA_TRAIN_IMAGES)
        layers, skip_dw = a.layers or list(backdoor.OFFLINE_SPADE_LAYERS), True
    missing = [t for t in a.triggers if t not in all_targets]
    if missing:
        raise UsageError(f"--triggers: {missing} have no target class (known: {list(all_targets)})")
    targets = {t: int(all_targets[t]) for t in a.triggers}
    models = {}
    if "clean" in a.variants:
        models[VARIANTS["clean"]] = original
    if "dense" in a.variants:
        models[VARIANTS["dense"]] = backdoored
    fc_hash = None
    if "sparse-fc" in a.variants:  # fitted once per process, from seeds alone: the same model in every shard
        _say("[trojan] fitting the Sparse-FC baseline ...")
        n = a.fc_crops
        clean = backdoor.random_crops(fc_images, n * 3 // 4, size=a.size, seed=a.seed + 3)
        trig = backdoor.poison(
            backdoor.random_crops(fc_images, n // 4, size=a.size, seed=a.seed + 4),
            targets,
            seed=a.seed + 5,
            trigger_set=trigger_set,
        ).images
        sparse_fc, _ = baselines.sparse_fc_model(
            backdoored, torch.cat([clean, trig]), density=0.05, seed=a.seed, path_length=a.fc_path, device=dev
        )
        models[VARIANTS["sparse-fc"]] = sparse_fc
        fc_hash = _model_hash(sparse_fc)
    s = patch_size_for(a.size)
    trig_hash = hashlib.sha256()
    for t in a.triggers:
        for x in trigger_set.patch(t, s):
            trig_hash.update(x.float().numpy().tobytes())
    settings = dict(
        experiment="trojan",
        source=a.source,
        backdoored=_model_hash(backdoored),
        original=_model_hash(original) if "clean" in a.variants else None,
        sparse_fc=fc_hash,
        fc=dict(crops=a.fc_crops, path=a.fc_path) if fc_hash else None,
        targets=targets,
        trigger_images=trig_hash.hexdigest()[:16],
        photos=hashlib.sha256("\n".join(photo_names).encode()).hexdigest()[:16],
        n_photos=len(photo_names),
        size=a.size,
        seed=a.seed,
        methods=a.methods,
        variants=a.variants,
        sparsities=a.sparsities,
        views=a.views,
        layers=layers,
        skip_depthwise=skip_dw,
        attribute=dict(n_steps=a.ig_steps, n_samples=a.shap_samples, internal_batch_size=16),
        device=a.torch_device.type,
    )
    per_sample = [v for v in a.variants if v in _SOLVERS]
    rows_per_sample = (len(models) + len(per_sample) * len(a.sparsities)) * len(a.methods)
    return dict(
        settings=settings,
        hash=settings_hash(settings),
        rows_per_sample=rows_per_sample,
        models=models,
        backdoored=backdoored,
        per_sample=per_sample,
        photos=photos,
        photo_names=photo_names,
        targets=targets,
        trigger_set=trigger_set,
        trace_kwargs=dict(
            layers=layers,
            skip_depthwise=skip_dw,
            n_augment=a.views,
            batch_size=32,
            progress=False,
            device=dev,
        ),
        attribute_kwargs=dict(
            n_steps=a.ig_steps, n_samples=a.shap_samples, internal_batch_size=16, device=dev
        ),
    )


def patch_size_for(size: int) -> int:
    """The trigger patch side for ``size`` px crops (a quarter of the side, as :func:`paste_trigger`)."""
    from .backdoor import patch_size

    return patch_size(size, size)


def _select(a, run, make) -> list[int]:
    """The expected sample ids: ``--sample-ids`` as given, or the first ``--n-samples`` candidates that flip."""
    import torch

    if a.ids is not None:
        return a.ids
    if not a.require_flip:
        return list(range(a.n_samples))
    limit = a.max_candidates or 16 * a.n_samples
    found: list[int] = []
    for j in range(limit):
        s = make(j)
        clean, trig = _top1(run["backdoored"], torch.stack([s.clean, s.image]))
        if clean != s.target and trig == s.target:
            found.append(j)
            if len(found) == a.n_samples:
                return found
    raise UsageError(
        f"--n-samples {a.n_samples}: only {len(found)} of the first {limit} candidates are flipped by their "
        "trigger; raise --max-candidates, or pass --no-require-flip"
    )


def run_trojan(a: argparse.Namespace) -> int:
    """The ``trojan`` sub-command (flags already checked): returns the exit status."""
    t0 = time.perf_counter()
    spec = a.spec
    folder = Path(a.out) / "trojan"
    tag = f"[trojan shard {spec.index}/{spec.count}]"
    run = _setup_trojan(a)
    shard = ShardFile(shard_path(folder, spec), run["hash"], run["rows_per_sample"])
    try:
        done = shard.open()
    except ValueError as err:  # rows of other settings: refused, never mixed
        raise UsageError(str(err)) from None
    if shard.dropped:
        _say(f"{tag} dropped {shard.dropped} incomplete row(s) of an interrupted write in {shard.path}")

    def make(j):
        return trojan_sample(
            run["photos"], j, seed=a.seed, targets=run["targets"], size=a.size, trigger_set=run["trigger_set"]
        )

    ids = _select(a, run, make)
    version = code_version()
    manifest = dict(
        experiment="trojan",
        settings_hash=run["hash"],
        settings=run["settings"],
        sample_ids=ids,
        rows_per_sample=run["rows_per_sample"],
        selection=dict(n_samples=a.n_samples, sample_ids=a.sample_ids, require_flip=a.require_flip),
        key=TROJAN_KEY,
        code_version=version,
    )
    try:
        write_manifest(folder, manifest)
    except ValueError as err:  # another run's manifest: refused
        raise UsageError(str(err)) from None
    mine = stride_ids(ids, spec)
    todo = [i for i in mine if i not in done]
    _say(
        f"{tag} {len(mine)} sample(s) of {len(ids)}, {len(mine) - len(todo)} already written, settings {run['hash']}"
    )
    for n, sid in enumerate(todo):
        if a.max_samples is not None and n >= a.max_samples:
            _say(f"{tag} stopped after --max-samples {a.max_samples}; rerun to resume")
            return 0
        t1 = time.perf_counter()
        sample = make(sid)
        rows = trojan_sample_rows(
            sid,
            sample,
            models=run["models"],
            backdoored=run["backdoored"],
            per_sample=run["per_sample"],
            sparsities=a.sparsities,
            methods=a.methods,
            trace_kwargs=run["trace_kwargs"],
            attribute_kwargs=run["attribute_kwargs"],
            seed=a.seed,
        )
        rows = rows.assign(
            source_name=run["photo_names"][sample.source], settings_hash=run["hash"], code_version=version
        )[_COLUMNS]
        shard.append(rows)
        _say(f"{tag} sample {sid} ({n + 1}/{len(todo)}): {len(rows)} rows, {time.perf_counter() - t1:.1f} s")
    _say(f"{tag} done: {len(mine)} sample(s) in {shard.path} ({time.perf_counter() - t0:.0f} s)")
    return 0


def run_merge(a: argparse.Namespace) -> int:
    """The ``merge`` sub-command: merged.csv (+ summary.csv when complete); 1 when ids are missing."""
    from .backdoor import summarize_scores

    folder = Path(a.out) / a.experiment
    try:
        res = merge_shards(folder, TROJAN_KEY)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    table = res.table
    _say(
        f"[merge] {len(res.files)} shard file(s), {len(table)} rows of {len(res.expected) - len(res.missing)} "
        f"complete sample(s) of {len(res.expected)}; {res.duplicates} duplicate row(s) dropped"
    )
    if len(res.code_versions) > 1:
        _say(f"[merge] note: rows come from several code versions: {res.code_versions}")
    if res.missing:
        table.to_csv(folder / "merged-incomplete.csv", index=False)
        _say(f"[merge] missing {len(res.missing)} sample id(s): {','.join(map(str, res.missing))}")
        _say(f"[merge] wrote {folder / 'merged-incomplete.csv'}; rerun the shards that hold them")
        return 1
    table.to_csv(folder / "merged.csv", index=False)
    sps = sorted(set(table["sparsity"].dropna()))
    label = table.apply(
        lambda r: (
            r["variant"]
            if r["sparsity"] != r["sparsity"] or len(sps) < 2
            else f"{r['variant']} @ {r['sparsity']:g}"
        ),
        axis=1,
    )
    scores = table.assign(variant=label).rename(columns={"sample_id": "sample"})
    summary = summarize_scores(scores, cluster="source", seed=int(res.manifest["settings"].get("seed", 0)))
    summary.to_csv(folder / "summary.csv", index=False)
    _say(f"[merge] wrote {folder / 'merged.csv'} and {folder / 'summary.csv'}")
    for _, r in summary[summary.method == "average"].iterrows():
        _say(
            f"[merge] {r['variant']:28s} average Trojan AUC {100 * r['mean']:.1f} [{100 * r['low']:.1f}, {100 * r['high']:.1f}] (n={r['n']})"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spade-run`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status (argparse exits
    with 2 itself on a malformed command line)."""
    parser, trojan_parser = _build()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        first = parser.parse_args(argv)
        if first.command in ("insertion", "calibrate"):
            raise UsageError(
                f"'spade-run {first.command}' is not implemented yet (issue 18); only trojan and merge are"
            )
        if first.command == "merge":
            return run_merge(first)
        args = _apply_config(parser, trojan_parser, argv)
        _check_args(args)
        return run_trojan(args)
    except (
        UsageError
    ) as err:  # bad flags, refused files: named in the message (other errors keep their traceback)
        print(f"spade-run: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
