"""``spade-run``: the command-line entry point for the dataset-scale experiments, sharded and resumable.

Sub-commands::

    spade-run trojan --out runs/t1 --n-samples 111 --sparsities 0.9 [--shard 0 --num-shards 4] ...
    spade-run insertion --out runs/t2 --n-samples 100 [--source paper --imagenet-val DIR] ...
    spade-run calibrate --out runs/c1 --n-samples 100 --blocks A B C ... [--grid 0 .2 .4 ...]
    spade-run merge --out runs/t1 [--experiment trojan|insertion|calibrate]

``trojan`` is the Table-1 analogue of notebook 04 (SPADE, ICML 2024, Table 1): the Trojan AUC of each saliency
method for the variants Clean original, Dense, Sparse FC, FastSPADE (SparseGPT) and SPADE (OBC), on triggered
crops of held-out photos (``--source offline``: EfficientNet-Lite0 with the implanted backdoor and the shipped
photos; ``--source paper``: the authors' ResNet-50 checkpoint, trigger PNGs and ImageNet folders). Sample
``i`` is candidate ``i`` of a deterministic list (:func:`trojan_sample`: photo, crop, trigger and position all
seeded from ``--seed`` and ``i``); ``--n-samples N`` takes the first N candidates that the trigger flips (or the
first N with ``--no-require-flip``), ``--sample-ids`` names them.

``insertion`` is Table 2 (notebook 03, section 5): insertion and deletion AUC of each method for Dense, Sparse FC,
FastSPADE and SPADE, every map scored on the dense network (:func:`spade_utils.saliency.attribution_aucs`); sample
``i`` is :func:`insertion_sample` (offline: a held-out crop of a photo, explained for the dense top-1; paper: image
``i`` of a seeded draw from ``--imagenet-val``, for its true class), its traces built from the photo's views.

``calibrate`` is the paper's greedy per-block sparsity search (:func:`spade_utils.backdoor.calibrate_block_sparsity`)
as a sharded run: one step per block from the classifier back, each step a run of its own in
``<out>/calibrate/step-<k>/`` whose unit is one calibration sample scored under every method x grid value
(:func:`spade_utils.backdoor.calibrate.calibration_sample_scores`); a step's configurations come from the choices
of the steps before (:func:`choose_sparsity`), so a shard waits (``--wait``) until every shard finished them.

Each shard writes ``<out>/<experiment>/shard-<k>-of-<n>.csv`` sample by sample and resumes from it
(:mod:`spade_utils.run_shards`); ``merge`` writes ``merged.csv`` and ``summary.csv``
(:func:`spade_utils.backdoor.summarize_scores`, :func:`spade_utils.metrics.summarize_aucs`), or for ``calibrate``
``candidates.csv`` and ``sparsity.csv``.

Settings come from flags or ``--config FILE`` (JSON, or TOML on Python >= 3.11: flag names as keys, dashes or
underscores), flags winning. Progress and summary lines go to stderr; exit status 0 on success, 1 when
``merge`` finds missing ids, 2 for bad input (named flag) or refused files, 3 when ``calibrate`` waited in vain
for other shards' earlier step (rerun it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from itertools import zip_longest
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
    "CALIBRATION_KEY",
    "INSERTION_KEY",
    "INSERTION_PHOTOS",
    "INSERTION_VARIANTS",
    "TROJAN_KEY",
    "VARIANTS",
    "build_parser",
    "calibrated_configurations",
    "choose_sparsity",
    "flipped_ids",
    "image_files",
    "insertion_sample",
    "insertion_sample_rows",
    "main",
    "parse_ids",
    "round_robin",
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
# CLI name -> the explainer label of notebook 03's Table-2 analogue (FastSPADE*, tuned on calibration images, is
# notebook 03's: spade_utils.insertion_tuning)
INSERTION_VARIANTS = {
    "dense": "Dense",
    "sparse-fc": "Sparse FC",
    "fastspade": "FastSPADE (SparseGPT)",
    "spade": "SPADE (OBC)",
}
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
_MAX_IDS = 10_000_000  # more ids than any dataset here (ImageNet validation: 50,000)


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
                if hi - lo >= _MAX_IDS:
                    raise UsageError(f"--sample-ids: the range {p!r} holds more than {_MAX_IDS:,} ids")
                ids.update(range(lo, hi + 1))
            elif isinstance(p, bool) or (isinstance(p, float) and not p.is_integer()):
                raise ValueError
            else:
                ids.add(int(p))
        except UsageError:
            raise
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
    from .backdoor.poison import check_targets
    from .validation import check_int, check_nonempty, check_seed

    sample_id = check_int(sample_id, "sample_id", minimum=0)
    seed = check_seed(seed)
    targets = check_targets(targets, trigger_set)
    if isinstance(photos, (str, bytes, Path)):
        raise TypeError(f"photos must be a list of photo names or paths, got one {type(photos).__name__}")
    check_nonempty(photos, "photos")
    names = list(targets)
    k = derive_seed(seed, sample_id, "photo") % len(photos)
    crop = random_crops([_load_photo(photos[k])], 1, size=size, seed=derive_seed(seed, sample_id, "crop"))[0]
    trigger = names[sample_id % len(names)]
    image, mask = paste_trigger(
        crop, trigger, seed=derive_seed(seed, sample_id, "paste"), trigger_set=trigger_set
    )
    return TriggeredSample(image, mask, crop, trigger, int(targets[trigger]), -1, k)


def image_files(root) -> list[Path]:
    """The images (.jpg, .jpeg, .png, any case) under folder ``root``, recursively, sorted: the photo list
    :func:`trojan_sample` indexes for the paper source. Raises ValueError naming ``root`` when there are none."""
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise ValueError(f"root: no .jpg/.jpeg/.png images under {root}")
    return files


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


def flipped_ids(make, backdoored, n: int, *, require_flip: bool = True, max_candidates: int | None = None):
    """The ids of the first ``n`` candidates ``make(i)`` (a :class:`~spade_utils.backdoor.TriggeredSample`,
    e.g. from :func:`trojan_sample`) whose trigger flips ``backdoored``: the clean crop goes to another class,
    the triggered one to the target. ``require_flip=False``: ids ``0..n-1``. Candidates are scanned in order,
    at most ``max_candidates`` (default ``16 n``), so the ids depend on the seeds alone. Raises ValueError
    naming ``n`` when too few flip."""
    import torch

    from .validation import check_positive_int

    n = check_positive_int(n, "n")
    limit = 16 * n if max_candidates is None else check_positive_int(max_candidates, "max_candidates")
    if not require_flip:
        return list(range(n))
    found: list[int] = []
    for j in range(limit):
        s = make(j)
        clean, trig = _top1(backdoored, torch.stack([s.clean, s.image]))
        if clean != s.target and trig == s.target:
            found.append(j)
            if len(found) == n:
                return found
    raise TooFewFlips(n, len(found), limit)


class TooFewFlips(ValueError):
    """:func:`flipped_ids` found ``found`` < ``n`` flipped candidates among the first ``limit``."""

    def __init__(self, n: int, found: int, limit: int):
        self.n, self.found, self.limit = n, found, limit
        super().__init__(f"n={n}: {self.shortfall}; raise max_candidates, or pass require_flip=False")

    @property
    def shortfall(self) -> str:
        return f"only {self.found} of the first {self.limit} candidates are flipped by their trigger"


def round_robin(sources: Sequence, n: int) -> list[int]:
    """The first ``n`` positions of ``sources`` (e.g. each sample's photo name) taken one per source in turn, in
    order of first appearance: a subset spread over the photos (all positions when ``n >= len(sources)``).
    Sources are compared as strings or ints. Raises TypeError naming ``sources`` for anything but a list/tuple
    of str/int (a float such as NaN has no reliable identity), ValueError naming ``n`` for a negative count."""
    if not isinstance(sources, (list, tuple)) or not all(
        isinstance(s, (str, int)) and not isinstance(s, bool) for s in sources
    ):
        raise TypeError("sources must be a list of source names (str) or ids (int)")
    from .validation import check_int

    n = check_int(n, "n", minimum=0)
    by_source: dict = {}
    for i, src in enumerate(sources):
        by_source.setdefault((type(src).__name__, src), []).append(i)
    rounds = zip_longest(*by_source.values())
    return [i for r in rounds for i in r if i is not None][:n]


def calibrated_configurations(calibration, methods: Sequence[str]) -> list[tuple[dict, list[str]]]:
    """``[(trace arguments, the methods that use them)]`` from a
    :class:`~spade_utils.backdoor.BlockCalibration`: each method takes its own calibrated blocks; a calibration
    whose only label is a search pooled over several methods (labelled ``"saliency+lrp"``, as
    :func:`~spade_utils.backdoor.calibrate_block_sparsity` labels a pooled search) serves every method, as
    notebook 04's quick profile uses it. Methods sharing a configuration share one trace per sample. Raises
    TypeError for a calibration that is not a BlockCalibration or ``methods`` given as one string, ValueError
    naming ``calibration`` for a method it does not cover (one method's calibration is never lent to another)."""
    from .backdoor import BlockCalibration

    if not isinstance(calibration, BlockCalibration):
        raise TypeError(f"calibration must be a BlockCalibration, got {type(calibration).__name__}")
    if isinstance(methods, str) or not all(isinstance(m, str) for m in methods):
        raise TypeError(f"methods must be a list of method names, got {methods!r}")
    labels = list(calibration.sparsity)
    pooled = labels[0] if len(labels) == 1 and "+" in labels[0] else None
    out: dict[tuple, tuple[dict, list[str]]] = {}
    for m in methods:
        label = m if m in calibration.sparsity else pooled
        if label is None:
            raise ValueError(
                f"calibration: method {m!r} was not calibrated (calibrated: {labels}; only a single search "
                "pooled over methods, labelled like 'saliency+lrp', serves every method)"
            )
        args = calibration.trace_arguments(label)
        out.setdefault(tuple(sorted(args["sparsity"].items())), (args, []))[1].append(m)
    return list(out.values())


def trojan_sample_rows(
    sample_id: int,
    sample,
    *,
    models,
    backdoored,
    per_sample: Sequence[str],
    methods: Sequence[str],
    trace_kwargs,
    attribute_kwargs,
    seed: int,
    sparsities: Sequence[float] = (),
    calibration=None,
    keep_maps: bool = False,
    pruned: dict | None = None,
):
    """The rows of one sample: every variant x method (x sparsity for the SPADE variants), as a DataFrame.

    ``models``: variant label -> model, attributed as they are (Clean original, Dense, Sparse FC);
    ``per_sample``: CLI names among ``fastspade``/``spade``, each a SPADE trace of ``backdoored`` on this sample
    (:func:`spade_utils.spade.spade_pruned_copy` with ``trace_kwargs``), either at each of ``sparsities`` (one
    sparsity for every layer of ``trace_kwargs["layers"]``) or, with ``calibration`` (a
    :class:`~spade_utils.backdoor.BlockCalibration`), at each method's calibrated per-block sparsities
    (:func:`calibrated_configurations`; ``sparsity`` is NaN in those rows; a configuration with every block
    dense is the backdoored model itself). ``pruned``: a dict the pruned copies are kept in (keyed by solver,
    configuration and ``sample_id``) so a later call reuses a trace.
    The views and the attribution are seeded from ``seed`` and ``sample_id`` (:func:`derive_seed`), so the
    rows do not depend on which shard runs the sample. Columns: ids, the backdoored model's top-1 on the
    clean and triggered image (``flipped``), each variant's top-1 on the triggered image, and the Trojan AUC
    columns of :func:`spade_utils.backdoor.trojan_saliency_scores` (no ``settings_hash``/``code_version``).
    Returns the rows, or ``(rows, maps)`` with ``keep_maps`` (maps: (variant, method) -> [(H, W) map]).
    """
    import pandas as pd
    import torch

    from .backdoor import trojan_saliency_scores
    from .spade import spade_pruned_copy

    if calibration is not None and len(sparsities):
        raise ValueError("give sparsities or calibration, not both")
    attr = dict(attribute_kwargs, seed=derive_seed(seed, sample_id, "attribute"))
    views_seed = derive_seed(seed, sample_id, "views")
    clean_pred, trig_pred = _top1(backdoored, torch.stack([sample.clean, sample.image]))
    sample.clean_prediction = clean_pred
    pruned = {} if pruned is None else pruned
    frames, maps = [], {}

    def score(variants, group, sparsity, preds):
        sc, mp = trojan_saliency_scores(
            variants, [sample], group, attribute_kwargs=attr, keep_maps=int(keep_maps), progress=False
        )
        frames.append(sc.assign(sparsity=sparsity, variant_prediction=sc.variant.map(preds)))
        maps.update(mp)

    if models:
        score(
            models,
            methods,
            float("nan"),
            {label: _top1(m, sample.image[None])[0] for label, m in models.items()},
        )
    if calibration is not None:
        configs = [
            (args, group, float("nan")) for args, group in calibrated_configurations(calibration, methods)
        ]
    else:
        configs = [({"sparsity": float(sp)}, list(methods), float(sp)) for sp in sparsities]
    for args, group, label in configs if per_sample else ():
        preds: dict = {}

        def traced(name, args=args, preds=preds):
            solver = _SOLVERS[name]
            key = (solver, repr(sorted(args.items())), int(sample_id))

            def build(s, i):
                if args.get("layers", True) == []:  # every calibrated block dense: the backdoored model
                    m = backdoored
                else:
                    if key not in pruned:
                        pruned[key] = spade_pruned_copy(
                            backdoored, s.image, solver=solver, seed=views_seed, **{**trace_kwargs, **args}
                        )
                    m = pruned[key]
                preds[VARIANTS[name]] = _top1(m, s.image[None])[0]
                return m

            return build

        score({VARIANTS[n]: traced(n) for n in per_sample}, group, label, preds)
    rows = pd.concat(frames, ignore_index=True)
    rows = rows.assign(
        sample_id=int(sample_id),
        target=sample.target,
        clean_prediction=clean_pred,
        triggered_prediction=trig_pred,
        flipped=clean_pred != sample.target and trig_pred == sample.target,
    )
    return (rows, maps) if keep_maps else rows


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``spade-run`` argument parser (sub-commands trojan, insertion, calibrate, merge)."""
    return _build()[0]


def _common_flags(p: argparse.ArgumentParser) -> None:
    """Flags every experiment has: output, source, samples, methods, views, seeds, device, shards."""
    p.add_argument("--config", help="JSON/TOML file of flag values (flags on the command line win)")
    p.add_argument("--out", help="output folder; rows go to <out>/<experiment>/")
    p.add_argument("--source", choices=["offline", "paper"], default="offline")
    p.add_argument("--n-samples", type=int, help="evaluate the first N candidates (that the trigger flips)")
    p.add_argument("--sample-ids", help="evaluate exactly these candidate ids, e.g. '0-9,15'")
    p.add_argument("--methods", nargs="+", help="saliency methods (default: all)")
    p.add_argument("--views", type=int, default=1024, help="augmented views per SPADE trace")
    p.add_argument("--layers", nargs="+", help="layer patterns SPADE prunes (default: per source)")
    p.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps")
    p.add_argument("--shap-samples", type=int, default=16, help="gradient-SHAP samples")
    p.add_argument("--seed", type=int, default=0, help="seeds samples, views, attribution, Sparse FC")
    p.add_argument("--size", type=int, default=224, help="crop size in px")
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when present; LOCAL_RANK under torchrun), cpu, cuda:N"
    )
    p.add_argument("--shard", type=int, help="this shard's index k (0 <= k < n)")
    p.add_argument("--num-shards", type=int, help="number of shards n")
    p.add_argument("--max-samples", type=int, help="stop after this many new samples (rerun resumes)")


def _backdoor_flags(p: argparse.ArgumentParser, triggers: list[str]) -> None:
    """Flags of the backdoored model and its triggered samples (trojan, calibrate)."""
    p.add_argument("--checkpoint", help="paper source: the authors' robustness checkpoint (.pt)")
    p.add_argument("--trigger-dir", help="paper source: folder with heart/star/smiley/fish .png")
    p.add_argument("--imagenet-val", help="paper source: evaluation images (ImageNet validation folder)")
    p.add_argument("--imagenet-train", help="paper source: images for the Sparse-FC fit / calibration")
    p.add_argument("--require-flip", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--max-candidates", type=int, help="candidates scanned for --n-samples (default 16 N)")
    p.add_argument("--triggers", nargs="+", default=triggers, help="triggers of the samples")
    p.add_argument("--implant-seed", type=int, default=0, help="offline source: seed of the implant")
    p.add_argument("--implant-steps", type=int, help="offline: implant recipe steps (default recipe's)")
    p.add_argument("--implant-n-clean", type=int, help="offline: implant clean crops")
    p.add_argument("--implant-n-triggered", type=int, help="offline: implant triggered crops")
    p.add_argument("--cache-dir", help="offline: implant cache folder (default: the project's data/cache)")
    p.add_argument("--no-cache", action="store_true", help="offline: implant without a cache")


def _variant_flags(p: argparse.ArgumentParser, variants: Sequence[str]) -> None:
    p.add_argument("--variants", nargs="+", default=list(variants), help=f"of {list(variants)}")
    p.add_argument("--sparsities", nargs="+", type=float, help="SPADE sparsities (for fastspade/spade)")
    p.add_argument("--fc-crops", type=int, default=480, help="Sparse FC: training crops")
    p.add_argument("--fc-path", type=int, default=20, help="Sparse FC: regularisation path length")


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser and its experiment sub-parsers (where ``--config`` values become defaults)."""
    parser = argparse.ArgumentParser(prog="spade-run", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trojan", help="Trojan AUC per saliency method and variant (Table 1)")
    _common_flags(t)
    _backdoor_flags(t, ["smiley", "fish"])
    _variant_flags(t, list(VARIANTS))
    t.add_argument(
        "--calibration",
        help="per-block SPADE sparsities instead of --sparsities: a CSV (method, block, sparsity), e.g. the "
        "sparsity.csv of 'spade-run merge --experiment calibrate' or notebook 04's 04_sparsity_calibration.csv",
    )
    i = sub.add_parser("insertion", help="insertion/deletion AUC per saliency method and variant (Table 2)")
    _common_flags(i)
    i.add_argument("--imagenet-val", help="paper source: the scored images (ImageNet validation folder)")
    i.add_argument("--imagenet-train", help="paper source: images for the Sparse-FC fit")
    _variant_flags(i, list(INSERTION_VARIANTS))
    i.add_argument("--auc-steps", type=int, default=100, help="insertion/deletion steps (the paper's 100)")
    c = sub.add_parser("calibrate", help="greedy per-block sparsity calibration (Table 1's SPADE sparsities)")
    _common_flags(c)
    _backdoor_flags(c, ["heart", "star"])
    c.add_argument("--blocks", nargs="+", help="blocks, input first, each 'pattern[,pattern...]' (default: "
                   "one block per layer pattern)")  # fmt: skip
    c.add_argument("--grid", nargs="+", type=float, help="sparsity grid (default: the paper's 8 values)")
    c.add_argument("--value", default="auc", choices=["auc", "auc_signed", "auc_absolute", "pointing"])
    c.add_argument("--solver", default="sparsegpt", choices=["sparsegpt", "obc", "magnitude"])
    c.add_argument(
        "--wait", type=float, default=3600.0, help="seconds to wait for other shards' earlier steps"
    )
    m = sub.add_parser("merge", help="merge the shard files of a run and name missing ids")
    m.add_argument("--out", required=True, help="the run's output folder")
    m.add_argument("--experiment", choices=["trojan", "insertion", "calibrate"], default="trojan")
    return parser, {"trojan": t, "insertion": i, "calibrate": c}


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
    actions = {a.dest: a for a in sub._actions if a.dest not in ("help", "config")}
    values = {}
    for key, value in config.items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in actions:
            raise UsageError(f"--config {path}: unknown setting {key!r} (not a flag of this command)")
        values[dest] = _config_value(actions[dest], value, f"--config {path}: {key!r}")
    sub.set_defaults(**values)
    return parser.parse_args(argv)


def _config_value(action: argparse.Action, value, where: str):
    """A config file's value for ``action``, held to what the flag accepts on the command line: a bool for a
    switch, the flag's type (a list of it for a multi-value flag), one of its choices."""
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):  # a switch
        if not isinstance(value, bool):
            raise UsageError(f"{where} must be true or false, got {value!r}")
        return value
    if action.dest == "sample_ids":  # '0-9,15', an id or a list of ids: parse_ids checks each
        return value
    kind = action.type or str
    items = value if action.nargs in ("+", "*") else [value]
    if action.nargs in ("+", "*") and (not isinstance(value, list) or not value):
        raise UsageError(f"{where} must be a non-empty list, got {value!r}")
    for v in items:
        ok = (
            isinstance(v, str)
            if kind is str
            else isinstance(v, int) and not isinstance(v, bool)
            if kind is int
            else isinstance(v, (int, float)) and not isinstance(v, bool)
            if kind is float
            else True
        )
        if not ok:
            raise UsageError(f"{where} must be {getattr(kind, '__name__', kind)} values, got {v!r}")
        if action.choices is not None and v not in action.choices:
            raise UsageError(f"{where} must be one of {list(action.choices)}, got {v!r}")
    return value


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_args(a: argparse.Namespace) -> None:
    """Every flag of an experiment checked before any work; UsageError naming the flag."""
    from .saliency import SALIENCY_METHODS

    has = vars(a)

    def intflag(dest, minimum, required=False):
        if dest not in has:
            return
        v = getattr(a, dest)
        if v is None:
            if required:
                raise UsageError(f"{_flag(dest)} is required")
            return
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise UsageError(f"{_flag(dest)} must be an integer >= {minimum}, got {v!r}")

    def listflag(dest):
        v = has.get(dest)
        if isinstance(v, str):
            v = [v]
            setattr(a, dest, v)
        if v is not None and (not isinstance(v, list) or not v):
            raise UsageError(f"{_flag(dest)} must be a non-empty list, got {v!r}")

    def fractions(dest, low_ok):
        values = getattr(a, dest)
        for v in values:
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not (0 <= v < 1 if low_ok else 0 < v < 1)
            ):
                raise UsageError(f"{_flag(dest)} must lie in {'[0, 1)' if low_ok else '(0, 1)'}, got {v!r}")
        return sorted({float(v) for v in values})

    if not a.out:
        raise UsageError("--out is required (the output folder)")
    for dest in ("triggers", "methods", "variants", "sparsities", "layers", "blocks", "grid"):
        listflag(dest)
    for dest, lo in [("views", 1), ("ig_steps", 1), ("shap_samples", 1), ("fc_crops", 4), ("fc_path", 1)]:
        intflag(dest, lo, required=True)
    intflag("auc_steps", 1, required=True)
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
    a.methods = a.methods or list(SALIENCY_METHODS)
    bad = [m for m in a.methods if m not in SALIENCY_METHODS]
    if bad or len(set(a.methods)) != len(a.methods):
        raise UsageError(f"--methods must be distinct names of {SALIENCY_METHODS}, got {a.methods}")
    if "variants" in has:
        known = VARIANTS if a.command == "trojan" else INSERTION_VARIANTS
        if any(v not in known for v in a.variants) or len(set(a.variants)) != len(a.variants):
            raise UsageError(f"--variants must be distinct names of {list(known)}, got {a.variants}")
        calibrated = getattr(a, "calibration", None) is not None
        if calibrated and a.sparsities:
            raise UsageError("give --sparsities or --calibration, not both")
        if calibrated and not Path(a.calibration).is_file():
            raise UsageError(f"--calibration: no file {a.calibration}")
        if any(v in _SOLVERS for v in a.variants):
            if not a.sparsities and not calibrated and a.command == "trojan":
                raise UsageError(
                    "--sparsities (or --calibration) is required for the variants fastspade/spade (e.g. "
                    "--sparsities 0.9)"
                )
            a.sparsities = fractions("sparsities", False) if a.sparsities else None
            if calibrated:
                a.sparsities = []
        else:
            a.sparsities = []
    if a.command == "calibrate":
        a.grid = fractions("grid", True) if a.grid else None
        if isinstance(a.wait, bool) or not isinstance(a.wait, (int, float)) or not a.wait >= 0:
            raise UsageError(f"--wait must be a number of seconds >= 0, got {a.wait!r}")
    if "triggers" in has and len(set(a.triggers)) != len(a.triggers):
        raise UsageError(f"--triggers must be distinct, got {a.triggers}")
    paths: list[str] = [
        d for d in ("checkpoint", "trigger_dir", "imagenet_val", "imagenet_train") if d in has
    ]
    if a.source == "paper":
        needs: list[tuple[str, str]] = [
            (d, "file" if d == "checkpoint" else "dir") for d in paths if d != "imagenet_train"
        ]
        if a.command == "calibrate":
            needs = [(d, k) for d, k in needs if d != "imagenet_val"] + [("imagenet_train", "dir")]
        elif "sparse-fc" in (getattr(a, "variants", None) or []):
            needs.append(("imagenet_train", "dir"))
        for dest, kind in needs:
            v = getattr(a, dest)
            if not v:
                raise UsageError(f"{_flag(dest)} is required with --source paper")
            ok = Path(v).is_file() if kind == "file" else Path(v).is_dir()
            if not ok:
                raise UsageError(f"{_flag(dest)}: no {'file' if kind == 'file' else 'folder'} {v}")
        for t in getattr(a, "triggers", None) or []:
            if not (Path(a.trigger_dir) / f"{t}.png").is_file():
                raise UsageError(f"--trigger-dir: no {t}.png in {a.trigger_dir}")
    else:
        for dest in paths:
            if getattr(a, dest):
                raise UsageError(f"{_flag(dest)} is for --source paper only")
    if has.get("no_cache") and has.get("cache_dir"):
        raise UsageError("--no-cache and --cache-dir exclude each other")
    try:
        a.spec = resolve_shard(a.shard, a.num_shards)
        a.device = local_device(a.device)
        from .runtime import resolve_device

        a.torch_device = resolve_device(a.device)
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None
    if a.torch_device.type == "cuda":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (a.torch_device.index or 0) >= count:
            raise UsageError(f"--device {a.device}: this machine has {count} CUDA device(s)")
    if getattr(a, "calibration", None) is not None:  # the file's form, before any model loads
        from .backdoor.calibrate import read_calibration_table

        try:
            read_calibration_table(a.calibration)
        except (TypeError, ValueError) as err:
            raise UsageError(f"--calibration {a.calibration}: {err}") from None


def _fc_cache(a: argparse.Namespace):
    """Where the Sparse-FC fit is kept: the implant's cache folder (``--cache-dir``, default the project's), or
    nowhere with ``--no-cache``. The first shard fits it; the others load the same layer."""
    if getattr(a, "no_cache", False):
        return False
    return getattr(a, "cache_dir", None) or True


def _check_layers(model, layers, skip_depthwise: bool) -> None:
    """Refuse ``--layers`` that select nothing prunable in ``model`` before a shard writes its manifest (a typo
    would otherwise fail inside the first sample and leave a folder that refuses the corrected run)."""
    from .layer_select import choose_layers

    try:
        choose_layers(model, layers, skip_depthwise=skip_depthwise)
    except (TypeError, ValueError) as err:
        raise UsageError(f"--layers {layers}: {err}") from None


def _model_hash(model) -> str:
    """:func:`spade_utils.runtime.state_hash`, imported on first use: ``spade-run --help`` never loads torch."""
    from .runtime import state_hash

    return state_hash(model)


def _setup_backdoor(a: argparse.Namespace, photos_from: str) -> dict:
    """The backdoored model (and the clean original when the trojan variants want it), triggers, targets and the
    photos samples are cut from: ``photos_from`` "evaluation" (held-out photos / ``--imagenet-val``) or
    "calibration" (other photos / ``--imagenet-train``)."""
    from . import backdoor
    from .models import load_model, load_robustness_checkpoint

    dev = a.torch_device
    wants_clean = "clean" in (getattr(a, "variants", None) or [])
    if a.source == "paper":
        # every trigger PNG in the folder (the Sparse-FC fit poisons with all of them), at least --triggers
        present = [t for t in backdoor.PAPER_TARGETS if (Path(a.trigger_dir) / f"{t}.png").is_file()]
        trigger_set = backdoor.TriggerSet.from_folder(
            a.trigger_dir, list(dict.fromkeys([*a.triggers, *present]))
        )
        original = load_model("resnet50", device=dev) if wants_clean else None
        backdoored = load_robustness_checkpoint(a.checkpoint).to(dev)
        all_targets = {t: c for t, c in backdoor.PAPER_TARGETS.items() if t in present or t in a.triggers}
        root = a.imagenet_val if photos_from == "evaluation" else a.imagenet_train
        try:
            photos: list = image_files(root)
        except ValueError as err:
            flag = "--imagenet-val" if photos_from == "evaluation" else "--imagenet-train"
            raise UsageError(f"{flag}: {err}") from None
        photo_names = [p.relative_to(root).as_posix() for p in photos]
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
        _say(
            f"[{a.command}] implanting (or loading) the offline backdoor {overrides or 'default recipe'} ..."
        )
        bd = backdoor.implant_backdoor(
            original,
            recipe=backdoor.DEFAULT_RECIPE.replace(**overrides),
            seed=a.implant_seed,
            cache=cache,
            device=dev,
            progress=False,
        )
        backdoored, all_targets = bd.model, bd.targets
        names = backdoor.TEST_PHOTOS if photos_from == "evaluation" else backdoor.CALIBRATION_PHOTOS
        photos = photo_names = list(names)
        fc_images = list(backdoor.TRAIN_PHOTOS) + list(backdoor.EXTRA_TRAIN_IMAGES)
        layers, skip_dw = a.layers or list(backdoor.OFFLINE_SPADE_LAYERS), True
    missing = [t for t in a.triggers if t not in all_targets]
    if missing:
        raise UsageError(f"--triggers: {missing} have no target class (known: {list(all_targets)})")
    return dict(
        trigger_set=trigger_set,
        original=original,
        backdoored=backdoored,
        targets={t: int(all_targets[t]) for t in a.triggers},
        all_targets={t: int(c) for t, c in all_targets.items()},  # every trigger the backdoor knows
        photos=photos,
        photo_names=photo_names,
        fc_images=fc_images,
        layers=layers,
        skip_dw=skip_dw,
    )


def _trigger_hash(a: argparse.Namespace, trigger_set) -> str:
    s = patch_size_for(a.size)
    h = hashlib.sha256()
    for t in a.triggers:
        for x in trigger_set.patch(t, s):
            h.update(x.float().numpy().tobytes())
    return h.hexdigest()[:16]


def _setup_trojan(a: argparse.Namespace) -> dict:
    """Models, photos, triggers and the settings that change numbers."""
    import torch

    from . import backdoor, baselines

    dev = a.torch_device
    src = _setup_backdoor(a, "evaluation")
    trigger_set, original, backdoored = src["trigger_set"], src["original"], src["backdoored"]
    photos, photo_names, fc_images = src["photos"], src["photo_names"], src["fc_images"]
    layers, skip_dw, targets = src["layers"], src["skip_dw"], src["targets"]
    models = {}
    if "clean" in a.variants:
        models[VARIANTS["clean"]] = original
    if "dense" in a.variants:
        models[VARIANTS["dense"]] = backdoored
    calibration = None
    if getattr(a, "calibration", None) is not None:
        try:
            calibration = backdoor.BlockCalibration.from_table(
                backdoored, a.calibration, skip_depthwise=skip_dw
            )
            calibrated_configurations(calibration, a.methods)
        except ValueError as err:
            raise UsageError(f"--calibration {a.calibration}: {err}") from None
    fc_hash = None
    if "sparse-fc" in a.variants:  # fitted once per process, from seeds alone: the same model in every shard
        _say("[trojan] fitting (or loading) the Sparse-FC baseline ...")
        n = a.fc_crops
        clean = backdoor.random_crops(fc_images, n * 3 // 4, size=a.size, seed=a.seed + 3)
        trig = (
            backdoor.poison(  # every trigger, as the backdoored model's training set had them (notebook 04)
                backdoor.random_crops(fc_images, n // 4, size=a.size, seed=a.seed + 4),
                src["all_targets"],
                seed=a.seed + 5,
                trigger_set=trigger_set,
            ).images
        )
        sparse_fc, _ = baselines.sparse_fc_model(
            backdoored,
            torch.cat([clean, trig]),
            density=0.05,
            seed=a.seed,
            path_length=a.fc_path,
            device=dev,
            cache=_fc_cache(a),
        )
        models[VARIANTS["sparse-fc"]] = sparse_fc
        fc_hash = _model_hash(sparse_fc)
    settings = dict(
        experiment="trojan",
        source=a.source,
        backdoored=_model_hash(backdoored),
        original=_model_hash(original) if "clean" in a.variants else None,
        sparse_fc=fc_hash,
        fc=dict(crops=a.fc_crops, path=a.fc_path) if fc_hash else None,
        targets=targets,
        trigger_images=_trigger_hash(a, trigger_set),
        photos=hashlib.sha256("\n".join(photo_names).encode()).hexdigest()[:16],
        n_photos=len(photo_names),
        size=a.size,
        seed=a.seed,
        methods=a.methods,
        variants=a.variants,
        sparsities=a.sparsities,
        calibration=calibration.table().to_dict("records") if calibration is not None else None,
        views=a.views,
        layers=layers,
        skip_depthwise=skip_dw,
        attribute=dict(n_steps=a.ig_steps, n_samples=a.shap_samples, internal_batch_size=16),
        device=a.torch_device.type,
    )
    per_sample = [v for v in a.variants if v in _SOLVERS]
    if per_sample and calibration is None:
        _check_layers(backdoored, layers, skip_dw)
    n_configs = 1 if calibration is not None else len(a.sparsities)
    rows_per_sample = (len(models) + len(per_sample) * n_configs) * len(a.methods)
    return dict(
        calibration=calibration,
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
    if a.ids is not None:
        return a.ids
    try:
        return flipped_ids(
            make, run["backdoored"], a.n_samples, require_flip=a.require_flip, max_candidates=a.max_candidates
        )
    except TooFewFlips as err:
        raise UsageError(
            f"--n-samples {a.n_samples}: {err.shortfall}; raise --max-candidates, or pass --no-require-flip"
        ) from None


def _run_shard(a: argparse.Namespace, folder: Path, run: dict, ids: list[int], rows_of, key, **extra) -> bool:
    """This shard's samples of ``ids`` in ``folder``: resume from its file, write the manifest, then append each
    sample's rows (``rows_of(sample_id)``, a DataFrame) as it goes. False when ``--max-samples`` stopped it."""
    t0 = time.perf_counter()
    spec = a.spec
    tag = f"[{a.command} shard {spec.index}/{spec.count}]"
    shard = ShardFile(shard_path(folder, spec), run["hash"], run["rows_per_sample"])
    try:
        done = shard.open()
    except ValueError as err:  # rows of other settings: refused, never mixed
        raise UsageError(str(err)) from None
    if shard.dropped:
        _say(f"{tag} dropped {shard.dropped} incomplete row(s) of an interrupted write in {shard.path}")
    version = code_version()
    manifest = dict(
        experiment=a.command,
        settings_hash=run["hash"],
        settings=run["settings"],
        sample_ids=ids,
        rows_per_sample=run["rows_per_sample"],
        key=list(key),
        code_version=version,
        **extra,
    )
    try:
        write_manifest(folder, manifest)
    except ValueError as err:  # another run's manifest: refused
        raise UsageError(str(err)) from None
    mine = stride_ids(ids, spec)
    todo = [i for i in mine if i not in done]
    _say(f"{tag} {folder.name}: {len(mine)} sample(s) of {len(ids)}, {len(mine) - len(todo)} already written, "
         f"settings {run['hash']}")  # fmt: skip
    for n, sid in enumerate(todo):
        if a.max_samples is not None and a.budget_used >= a.max_samples:
            _say(f"{tag} stopped after --max-samples {a.max_samples}; rerun to resume")
            return False
        t1 = time.perf_counter()
        rows = rows_of(sid).assign(settings_hash=run["hash"], code_version=version)
        shard.append(rows)
        a.budget_used += 1
        _say(f"{tag} sample {sid} ({n + 1}/{len(todo)}): {len(rows)} rows, {time.perf_counter() - t1:.1f} s")
    _say(f"{tag} done: {len(mine)} sample(s) in {shard.path} ({time.perf_counter() - t0:.0f} s)")
    return True


def run_trojan(a: argparse.Namespace) -> int:
    """The ``trojan`` sub-command (flags already checked): returns the exit status."""
    run = _setup_trojan(a)

    def make(j):
        return trojan_sample(
            run["photos"], j, seed=a.seed, targets=run["targets"], size=a.size, trigger_set=run["trigger_set"]
        )

    ids = _select(a, run, make)

    def rows_of(sid):
        sample = make(sid)
        rows = trojan_sample_rows(
            sid,
            sample,
            models=run["models"],
            backdoored=run["backdoored"],
            per_sample=run["per_sample"],
            sparsities=a.sparsities,
            calibration=run["calibration"],
            methods=a.methods,
            trace_kwargs=run["trace_kwargs"],
            attribute_kwargs=run["attribute_kwargs"],
            seed=a.seed,
        )
        return rows.assign(source_name=run["photo_names"][sample.source], settings_hash="", code_version="")[
            _COLUMNS
        ]

    selection = dict(n_samples=a.n_samples, sample_ids=a.sample_ids, require_flip=a.require_flip)
    _run_shard(a, Path(a.out) / "trojan", run, ids, rows_of, TROJAN_KEY, selection=selection)
    return 0


# --------------------------------------------------------------------------------------------------
# insertion / deletion (Table 2)
# --------------------------------------------------------------------------------------------------
INSERTION_KEY = ["sample_id", "variant", "sparsity", "method"]
INSERTION_PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "grace_hopper", "china")
"""The offline source's photos for ``spade-run insertion`` (notebook 03's paper-profile photos)."""
_INSERTION_COLUMNS = [
    "sample_id",
    "source",
    "source_name",
    "target",
    "clean_prob",
    "scorable",
    "variant",
    "sparsity",
    "method",
    "insertion",
    "deletion",
    "settings_hash",
    "code_version",
]


def insertion_sample(photos, sample_id: int, *, seed: int, size: int = 224, labelled=None):
    """Sample ``sample_id`` of the insertion/deletion run: ``(image, x, target, source)``.

    ``image``: the photo (3, H, W) in [0, 1], whose augmented views build the sample's SPADE traces; ``x``:
    the (1, 3, size, size) normalised image that is explained and scored. Offline (``labelled`` None): photo
    ``derive_seed(seed, id, "photo") % len(photos)`` of ``photos`` (names), ``x`` a held-out augmented crop of
    it (seed ``derive_seed(seed, id, "crop")``) as in notebook 03, ``target`` None (the caller explains the
    dense top-1). Paper: ``labelled`` is the ``(path, class)`` list of
    :func:`spade_utils.data.imagenet_folder_sample`; the sample is its entry ``sample_id``, ``x`` its
    :func:`~spade_utils.data.preprocess` centre crop and ``target`` its true class. ``source`` indexes the
    photo (the bootstrap cluster)."""
    from .augment import augment_image
    from .data import preprocess

    if labelled is not None:
        path, cls = labelled[sample_id]
        image = _load_photo(Path(path))
        return image, preprocess(image, size=size), int(cls), sample_id
    k = derive_seed(seed, sample_id, "photo") % len(photos)
    image = _load_photo(photos[k])
    x = augment_image(image, 1, size=size, seed=derive_seed(seed, sample_id, "crop"))
    return image, x, None, k


def insertion_sample_rows(
    sample_id: int,
    image,
    x,
    target: int,
    *,
    dense,
    models,
    per_sample: Sequence[str],
    sparsities: Sequence[float],
    methods: Sequence[str],
    trace_kwargs,
    attribute_kwargs,
    auc_steps: int,
    seed: int,
):
    """The rows of one sample: insertion and deletion AUC of every variant x method (x sparsity for the SPADE
    variants), scored on the ``dense`` network for ``target`` (SPADE, ICML 2024, Table 2; the metric is
    :func:`spade_utils.saliency.attribution_aucs` over :func:`spade_utils.metrics.insertion_deletion_auc`).

    ``models``: explainer label -> model attributed as it is (Dense, Sparse FC); ``per_sample``: CLI names among
    fastspade/spade, each a SPADE trace of ``dense`` on ``image``'s views (seed ``derive_seed(seed, id,
    "views")``) at each of ``sparsities``. A sample whose clean probability of ``target`` is below
    :data:`spade_utils.metrics.MIN_CLEAN_PROB` cannot be scored (the score is relative to it): its rows carry
    ``scorable`` False and NaN AUCs. Columns: sample_id, target, clean_prob, scorable, variant, sparsity,
    method, insertion, deletion."""
    import pandas as pd
    import torch

    from .metrics import MIN_CLEAN_PROB
    from .saliency import attribution_aucs
    from .spade import spade_pruned_copy

    attr = dict(attribute_kwargs, seed=derive_seed(seed, sample_id, "attribute"))
    views_seed = derive_seed(seed, sample_id, "views")
    dev = attribute_kwargs.get("device")
    with torch.no_grad():
        p = dense(x.to(dev)).softmax(1)[0, target]
    clean_prob = float(p)
    scorable = clean_prob >= MIN_CLEAN_PROB
    explainers: list[tuple[str, float, object]] = [(label, float("nan"), m) for label, m in models.items()]
    for sp in sparsities:
        for name in per_sample:
            explainers.append((INSERTION_VARIANTS[name], float(sp), (name, sp)))
    frames = []
    for label, sp, model in explainers:
        if scorable:
            if isinstance(model, tuple):
                model = spade_pruned_copy(
                    dense,
                    image,
                    sparsity=model[1],
                    solver=_SOLVERS[model[0]],
                    seed=views_seed,
                    **trace_kwargs,
                )
            df = attribution_aucs(
                dense,
                x,
                [target],
                methods,
                {label: model},
                auc_steps=auc_steps,
                image_ids=[sample_id],
                **attr,
            )
        else:
            df = pd.DataFrame(
                dict(method=list(methods), explainer=label, insertion=float("nan"), deletion=float("nan"))
            )
        frames.append(df[["method", "explainer", "insertion", "deletion"]].assign(sparsity=sp))
    rows = pd.concat(frames, ignore_index=True).rename(columns={"explainer": "variant"})
    return rows.assign(sample_id=int(sample_id), target=int(target), clean_prob=clean_prob, scorable=scorable)


def _setup_insertion(a: argparse.Namespace) -> dict:
    """The dense network, Sparse FC, the photos (or the labelled draw) and the settings that change numbers."""
    from . import backdoor, baselines
    from .data import imagenet_folder_sample
    from .models import load_model

    dev = a.torch_device
    if a.source == "paper":
        dense = load_model("resnet50", device=dev)
        n = a.n_samples if a.ids is None else max(a.ids) + 1
        try:
            labelled = imagenet_folder_sample(a.imagenet_val, n, seed=a.seed)
        except ValueError as err:
            raise UsageError(f"--imagenet-val: {err}") from None
        photos: list = [p for p, _ in labelled]
        photo_names = [Path(p).relative_to(a.imagenet_val).as_posix() for p in photos]
        fc_images = a.imagenet_train
        layers, sparsities = a.layers or ["layer3.4*", "layer3.5*", "layer4*", "fc"], [0.95]
    else:
        dense = load_model("efficientnet_lite0", device=dev)
        labelled = None
        photos = photo_names = list(INSERTION_PHOTOS)
        fc_images = list(INSERTION_PHOTOS)
        layers = a.layers or ["_blocks.13.*", "_blocks.14.*", "_blocks.15.*", "_conv_head", "_fc"]
        sparsities = [0.9]
    if a.sparsities is None:
        a.sparsities = sparsities
    models = {INSERTION_VARIANTS["dense"]: dense} if "dense" in a.variants else {}
    fc_hash = None
    if "sparse-fc" in a.variants:  # fitted once per process, from seeds alone: the same model in every shard
        _say("[insertion] fitting (or loading) the Sparse-FC baseline ...")
        crops = backdoor.random_crops(fc_images, a.fc_crops, size=a.size, seed=a.seed + 3)
        sparse_fc, _ = baselines.sparse_fc_model(
            dense, crops, density=0.05, seed=a.seed, path_length=a.fc_path, device=dev, cache=_fc_cache(a)
        )
        models[INSERTION_VARIANTS["sparse-fc"]] = sparse_fc
        fc_hash = _model_hash(sparse_fc)
    per_sample = [v for v in a.variants if v in _SOLVERS]
    if per_sample:
        _check_layers(dense, layers, a.source == "offline")
    settings = dict(
        experiment="insertion",
        source=a.source,
        dense=_model_hash(dense),
        sparse_fc=fc_hash,
        fc=dict(crops=a.fc_crops, path=a.fc_path) if fc_hash else None,
        photos=hashlib.sha256("\n".join(photo_names).encode()).hexdigest()[:16],
        n_photos=len(photo_names),
        size=a.size,
        seed=a.seed,
        methods=a.methods,
        variants=a.variants,
        sparsities=a.sparsities if per_sample else [],
        views=a.views,
        layers=layers,
        auc_steps=a.auc_steps,
        attribute=dict(n_steps=a.ig_steps, n_samples=a.shap_samples, internal_batch_size=16),
        device=a.torch_device.type,
    )
    rows_per_sample = (len(models) + len(per_sample) * len(settings["sparsities"])) * len(a.methods)
    return dict(
        settings=settings,
        hash=settings_hash(settings),
        rows_per_sample=rows_per_sample,
        dense=dense,
        models=models,
        per_sample=per_sample,
        photos=photos,
        photo_names=photo_names,
        labelled=labelled,
        trace_kwargs=dict(
            layers=layers,
            skip_depthwise=a.source == "offline",
            n_augment=a.views,
            batch_size=32,
            progress=False,
            device=dev,
        ),  # fmt: skip
        attribute_kwargs=dict(
            n_steps=a.ig_steps, n_samples=a.shap_samples, internal_batch_size=16, device=dev
        ),
    )


def run_insertion(a: argparse.Namespace) -> int:
    """The ``insertion`` sub-command (flags already checked): returns the exit status."""
    import torch

    run = _setup_insertion(a)
    ids = a.ids if a.ids is not None else list(range(a.n_samples))
    if run["labelled"] is not None and max(ids) >= len(run["labelled"]):
        raise UsageError(f"--sample-ids: the draw has {len(run['labelled'])} images")

    def rows_of(sid):
        image, x, target, source = insertion_sample(
            run["photos"], sid, seed=a.seed, size=a.size, labelled=run["labelled"]
        )
        if target is None:  # offline: explain the class the dense network predicts on the crop
            with torch.no_grad():
                target = int(run["dense"](x.to(a.torch_device)).argmax(1)[0])
        rows = insertion_sample_rows(
            sid,
            image,
            x,
            target,
            dense=run["dense"],
            models=run["models"],
            per_sample=run["per_sample"],
            sparsities=run["settings"]["sparsities"],
            methods=a.methods,
            trace_kwargs=run["trace_kwargs"],
            attribute_kwargs=run["attribute_kwargs"],
            auc_steps=a.auc_steps,
            seed=a.seed,
        )
        rows = rows.assign(
            source=source, source_name=run["photo_names"][source], settings_hash="", code_version=""
        )
        return rows[_INSERTION_COLUMNS]

    selection = dict(n_samples=a.n_samples, sample_ids=a.sample_ids)
    _run_shard(a, Path(a.out) / "insertion", run, ids, rows_of, INSERTION_KEY, selection=selection)
    return 0


# --------------------------------------------------------------------------------------------------
# the per-block sparsity calibration
# --------------------------------------------------------------------------------------------------
CALIBRATION_KEY = ["sample_id", "method", "sparsity"]
_TIE = 1e-12  # as spade_utils.backdoor.calibrate: means within this of the best are tied


def choose_sparsity(rows, value: str = "auc") -> dict[str, float]:
    """Per method, the sparsity whose rows have the best mean ``value`` over samples; ties (within 1e-12) to the
    lower sparsity, as :func:`spade_utils.backdoor.calibrate_block_sparsity` chooses. ``rows``: one greedy
    step's complete rows (columns method, sparsity, ``value``)."""
    out = {}
    for method, group in rows.groupby("method", sort=False):
        means = group.groupby("sparsity")[value].mean()
        best = float(means.max())
        out[str(method)] = float(min(s for s, mu in means.items() if mu >= best - _TIE))
    return out


def _step_folder(out, step: int) -> Path:
    return Path(out) / "calibrate" / f"step-{step}"


def _wait_for_step(a: argparse.Namespace, step: int):
    """The merged, complete rows of greedy step ``step`` (written by every shard), waiting up to ``--wait``."""
    folder = _step_folder(a.out, step)
    deadline = time.monotonic() + a.wait
    while True:
        try:
            res = merge_shards(folder, CALIBRATION_KEY)
            if not res.missing:
                return res
            missing = res.missing
        except FileNotFoundError:
            missing = None
        if time.monotonic() >= deadline:
            what = (
                "has not started" if missing is None else f"misses sample id(s) {','.join(map(str, missing))}"
            )
            raise StepIncomplete(
                f"calibration step {step} {what} (other shards); rerun this shard once they are done"
            )
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


class StepIncomplete(RuntimeError):
    """An earlier greedy step is not complete: exit status 3 (rerun later)."""


def run_calibrate(a: argparse.Namespace) -> int:
    """The ``calibrate`` sub-command: the greedy per-block search, one step (block) at a time, each step a sharded
    run in ``<out>/calibrate/step-<k>/`` whose work unit is one calibration sample (every method x grid value)."""
    from .backdoor import PAPER_GRID
    from .backdoor.calibrate import calibration_sample_scores

    src = _setup_backdoor(a, "calibration")
    blocks = {b: b.split(",") for b in a.blocks} if a.blocks else {p: [p] for p in src["layers"]}
    labels = list(blocks)
    grid = a.grid or list(PAPER_GRID)

    def make(j):
        return trojan_sample(
            src["photos"], j, seed=a.seed, targets=src["targets"], size=a.size, trigger_set=src["trigger_set"]
        )

    run0 = dict(backdoored=src["backdoored"])
    ids = _select(a, run0, make)
    base = dict(
        experiment="calibrate",
        source=a.source,
        backdoored=_model_hash(src["backdoored"]),
        targets=src["targets"],
        trigger_images=_trigger_hash(a, src["trigger_set"]),
        photos=hashlib.sha256("\n".join(src["photo_names"]).encode()).hexdigest()[:16],
        size=a.size,
        seed=a.seed,
        methods=a.methods,
        blocks=blocks,
        grid=grid,
        value=a.value,
        solver=a.solver,
        views=a.views,
        skip_depthwise=src["skip_dw"],
        attribute=dict(n_steps=a.ig_steps, n_samples=a.shap_samples, internal_batch_size=16),
        device=a.torch_device.type,
        sample_ids=ids,
    )
    attribute_kwargs = dict(n_steps=a.ig_steps, n_samples=a.shap_samples, internal_batch_size=16)
    decided: dict[str, dict[str, float]] = {m: {} for m in a.methods}
    for step, label in enumerate(labels[::-1]):  # from the classifier backwards
        if step > 0:
            try:
                res = _wait_for_step(a, step - 1)
            except StepIncomplete as err:
                _say(f"[calibrate] {err}")
                return 3
            for m, s in choose_sparsity(res.table, a.value).items():
                decided[m][labels[::-1][step - 1]] = s
        configs = [
            (m, {**{b: decided[m].get(b, 0.0) for b in labels}, label: float(s)})
            for m in a.methods
            for s in grid
        ]
        settings = dict(base, step=step, block=label, configs=[[m, c] for m, c in configs])
        run = dict(settings=settings, hash=settings_hash(settings), rows_per_sample=len(configs))

        def rows_of(sid, configs=configs, label=label, step=step):
            sample = make(sid)
            rows = calibration_sample_scores(
                src["backdoored"],
                sample,
                blocks,
                configs,
                n_augment=a.views,
                solver=a.solver,
                batch_size=32,
                seed=derive_seed(a.seed, sid, "views"),
                skip_depthwise=src["skip_dw"],
                device=a.torch_device,
                attribute_kwargs=dict(attribute_kwargs, seed=derive_seed(a.seed, sid, "attribute")),
            )
            sp = [configs[j][1][label] for j in rows["config"]]
            return rows.drop(columns="config").assign(
                sample_id=int(sid),
                source_name=src["photo_names"][sample.source],
                step=step,
                block=label,
                sparsity=sp,
                settings_hash="",
                code_version="",
            )

        if not _run_shard(a, _step_folder(a.out, step), run, ids, rows_of, CALIBRATION_KEY, block=label):
            return 0
    return 0


def _merge_folder(folder: Path, key) -> tuple:
    """merge_shards of one run folder, reported; (result, exit status 0 or 1 for missing ids)."""
    try:
        res = merge_shards(folder, key)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None
    table = res.table
    _say(
        f"[merge] {folder.name}: {len(res.files)} shard file(s), {len(table)} rows of "
        f"{len(res.expected) - len(res.missing)} complete sample(s) of {len(res.expected)}; "
        f"{res.duplicates} duplicate row(s) dropped"
    )
    if len(res.code_versions) > 1:
        _say(f"[merge] note: rows come from several code versions: {res.code_versions}")
    if res.missing:
        table.to_csv(folder / "merged-incomplete.csv", index=False)
        _say(f"[merge] missing {len(res.missing)} sample id(s): {','.join(map(str, res.missing))}")
        _say(f"[merge] wrote {folder / 'merged-incomplete.csv'}; rerun the shards that hold them")
        return res, 1
    table.to_csv(folder / "merged.csv", index=False)
    return res, 0


def _labelled_variants(table):
    """The variant column, with `` @ sparsity`` when a run has several SPADE sparsities."""
    sps = sorted(set(table["sparsity"].dropna()))
    return table.apply(
        lambda r: (
            r["variant"]
            if r["sparsity"] != r["sparsity"] or len(sps) < 2
            else f"{r['variant']} @ {r['sparsity']:g}"
        ),
        axis=1,
    )


def run_merge(a: argparse.Namespace) -> int:
    """The ``merge`` sub-command: merged.csv (+ summary.csv when complete); 1 when ids are missing."""
    if a.experiment == "calibrate":
        return _merge_calibrate(a)
    folder = Path(a.out) / a.experiment
    res, status = _merge_folder(folder, TROJAN_KEY if a.experiment == "trojan" else INSERTION_KEY)
    if status:
        return status
    table, seed = res.table, int(res.manifest["settings"].get("seed", 0))
    if a.experiment == "insertion":
        from .metrics import summarize_aucs

        ok = table[table["scorable"].astype(bool)]
        _say(f"[merge] {table['sample_id'].nunique() - ok['sample_id'].nunique()} sample(s) set aside: the dense "
             "network gives their class a probability below MIN_CLEAN_PROB")  # fmt: skip
        aucs = ok.assign(explainer=_labelled_variants(ok)).rename(columns={"sample_id": "image"})
        summary = summarize_aucs(aucs, baseline=INSERTION_VARIANTS["dense"], cluster="source", seed=seed)
        summary.to_csv(folder / "summary.csv", index=False)
        _say(f"[merge] wrote {folder / 'merged.csv'} and {folder / 'summary.csv'}")
        return 0
    from .backdoor import summarize_scores
    from .intervals import interval_text

    scores = table.assign(variant=_labelled_variants(table)).rename(columns={"sample_id": "sample"})
    summary = summarize_scores(scores, cluster="source", seed=seed)
    summary.to_csv(folder / "summary.csv", index=False)
    _say(f"[merge] wrote {folder / 'merged.csv'} and {folder / 'summary.csv'}")
    for _, r in summary[summary.method == "average"].iterrows():
        _say(
            f"[merge] {r['variant']:28s} average Trojan AUC {interval_text(r['mean'], r['low'], r['high'])} (n={r['n']})"
        )
    return 0


def _merge_calibrate(a: argparse.Namespace) -> int:
    """Merge every greedy step: ``calibrate/candidates.csv`` (mean per method, step and sparsity, the chosen
    one marked) and, once every block is searched, ``calibrate/sparsity.csv`` (method, block, sparsity)."""
    import pandas as pd

    root = Path(a.out) / "calibrate"
    if not (root / "step-0").is_dir():
        raise UsageError(f"no calibration steps in {root}: no shard of this run has started")
    rows, status, step, n_blocks = [], 0, 0, None
    while (root / f"step-{step}").is_dir():
        res, status = _merge_folder(root / f"step-{step}", CALIBRATION_KEY)
        settings = res.manifest["settings"]
        n_blocks = len(settings["blocks"])
        if status:
            break
        chosen = choose_sparsity(res.table, settings["value"])
        means = res.table.groupby(["method", "sparsity"], sort=False)[settings["value"]].agg(["mean", "size"])
        for (m, sp), r in means.iterrows():
            rows.append(dict(method=m, step=step, block=settings["block"], sparsity=sp, mean=r["mean"],
                             n=int(r["size"]), chosen=sp == chosen[m]))  # fmt: skip
        step += 1
    if rows:
        cand = pd.DataFrame(rows)
        cand.to_csv(root / "candidates.csv", index=False)
        _say(f"[merge] wrote {root / 'candidates.csv'} ({step} complete step(s) of {n_blocks})")
    if status:
        return status
    if n_blocks is not None and step < n_blocks:
        _say(f"[merge] steps {step}..{n_blocks - 1} have not run yet: rerun the shards (they resume)")
        return 1
    sparsity = cand[cand["chosen"]][["method", "block", "sparsity"]]
    sparsity.to_csv(root / "sparsity.csv", index=False)
    _say(f"[merge] wrote {root / 'sparsity.csv'}")
    for m, g in sparsity.groupby("method", sort=False):
        _say(
            f"[merge] {m}: " + ", ".join(f"{b} {s:g}" for b, s in zip(g["block"], g["sparsity"], strict=True))
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spade-run`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status (argparse exits
    with 2 itself on a malformed command line; 3: ``calibrate`` waited in vain for other shards' earlier step)."""
    parser, subs = _build()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        first = parser.parse_args(argv)
        if first.command == "merge":
            return run_merge(first)
        args = _apply_config(parser, subs[first.command], argv)
        _check_args(args)
        args.budget_used = 0
        return {"trojan": run_trojan, "insertion": run_insertion, "calibrate": run_calibrate}[args.command](
            args
        )
    except (
        UsageError
    ) as err:  # bad flags, refused files: named in the message (other errors keep their traceback)
        print(f"spade-run: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
