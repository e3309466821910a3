"""The explorer of notebook 06: dense vs SPADE saliency on one photo, and a browser over notebook 04's saved maps.

:class:`Explorer` computes, for a photo, a layer preset, a sparsity, a solver and a saliency method, the dense
network's map, the SPADE trace's map and their difference, with the top-3 classes of each network, through the
library's engine (:func:`spade_utils.spade.spade_pruned_copy`, :func:`spade_utils.saliency.attribute`). Every
stage is cached by the settings it depends on, so returning to earlier settings costs nothing.
:func:`explorer_app` and :func:`map_browser_app` wrap them in ipywidgets for a page served by Voilà
(``make explore``); :func:`comparison_figure` and :func:`map_browser_figure` draw the same content as static
figures for headless runs.
"""

from __future__ import annotations

import io
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from PIL import Image
from torch import nn

from .data import denormalize, image_to_tensor, imagenet_classes, preprocess, sample_image, to_pil
from .map_bundle import MapBundle
from .saliency import attribute
from .spade import spade_pruned_copy
from .validation import check_positive_int, check_seed, check_sparsity

# layer presets of EfficientNet-Lite0 (depthwise convolutions are always left dense, as in notebook 03)
LAYER_PRESETS: dict[str, list[str]] = {
    "classifier": ["_fc"],
    "head + classifier": ["_conv_head", "_fc"],
    "last 3 blocks + head + classifier": [
        "_blocks.13.*",
        "_blocks.14.*",
        "_blocks.15.*",
        "_conv_head",
        "_fc",
    ],
}
SOLVERS = ("magnitude", "sparsegpt", "obc")
METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "grad_cam", "lrp")
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
MAX_SIDE = 2048  # uploads are shrunk to this many pixels on their longer side
BUNDLE_NAME = "04_saliency_maps.npz"  # notebook 04 writes <results>/maps/04_saliency_maps.npz
MISSING_BUNDLE = "No precomputed maps yet: run notebook 04 first (make figures NB=04), then reload this page."


@dataclass(frozen=True)
class Settings:
    """One point of the explorer: which photo, which layers at which sparsity, which solver and saliency method."""

    photo: str
    preset: str = "head + classifier"
    sparsity: float = 0.9
    solver: str = "sparsegpt"
    method: str = "saliency"


@dataclass(frozen=True)
class Comparison:
    """What the explorer shows for one :class:`Settings`.

    ``image``: float ``[3, H, W]`` in [0, 1], the centre crop explained; ``dense_map``, ``spade_map``: float
    ``[H, W]`` signed saliency of the dense top-1 class on the dense network and on the SPADE trace;
    ``difference``: ``spade_map - dense_map``; ``dense_top3``, ``spade_top3``: three (class name, probability);
    ``seconds``: stage -> wall seconds spent computing it for this call (0.0 where a cache answered);
    ``target``: the class index explained.
    """

    settings: Settings
    image: torch.Tensor
    dense_map: torch.Tensor
    spade_map: torch.Tensor
    difference: torch.Tensor
    dense_top3: tuple[tuple[str, float], ...]
    spade_top3: tuple[tuple[str, float], ...]
    target: int
    seconds: dict[str, float]


Progress = Callable[[str, int, int], None]  # (stage description, stage number from 1, number of stages)


class Explorer:
    """Dense vs SPADE saliency for photos, cached per setting.

    Parameters
    ----------
    model : the ImageNet classifier (ImageNet-normalised 224 px input), default EfficientNet-Lite0
        (:func:`spade_utils.models.load_model`); it is never modified.
    photos : name -> image (PIL image, array or tensor as :func:`spade_utils.data.image_to_tensor` reads them);
        default: the shipped photos ``chelsea``, ``coffee``, ``rocket``, ``astronaut``.
    n_augment : views per trace (default 32); seed : the trace's augmentation seed (default 0);
    batch_size : views per forward pass (default 32); ig_steps : Integrated Gradients steps (default 16);
    max_traces : SPADE copies kept in memory (least recently used dropped first; default 12, ~20 MB each).

    Raises TypeError/ValueError naming the argument.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        *,
        photos: Mapping[str, object] | None = None,
        n_augment: int = 32,
        seed: int = 0,
        batch_size: int = 32,
        ig_steps: int = 16,
        max_traces: int = 12,
    ):
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.n_augment = check_positive_int(n_augment, "n_augment")
        self.seed = check_seed(seed)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.ig_steps = check_positive_int(ig_steps, "ig_steps")
        self.max_traces = check_positive_int(max_traces, "max_traces")
        self._inputs: dict[str, torch.Tensor] = {}
        self._dense: dict[tuple, tuple] = {}
        self._traces: OrderedDict[tuple, nn.Module] = OrderedDict()
        self._spade: dict[tuple, tuple] = {}
        if photos is None:
            photos = {name: sample_image(name) for name in ("chelsea", "coffee", "rocket", "astronaut")}
        if not isinstance(photos, Mapping) or not photos:
            raise ValueError("photos must be a non-empty mapping name -> image")
        self.photos: dict[str, Image.Image] = {}
        for name, image in photos.items():
            self.add_photo(name, image)
        if model is None:
            from .models import load_model

            model = load_model("efficientnet_lite0")
        self.model = model
        self.classes = imagenet_classes()

    def add_photo(self, name: str, image) -> str:
        """Register ``image`` (PIL image, array, tensor, or the bytes of an image file) under ``name``; returns ``name``.
        Uploaded files larger than ``MAX_SIDE`` px on a side are shrunk to it (aspect kept), so a 12000-px scan
        does not hold gigabytes.

        Raises TypeError for a non-string or empty name, ValueError (from the image reader) for unreadable bytes.
        """
        if not isinstance(name, str) or not name.strip():
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        if isinstance(image, (bytes, bytearray, memoryview)):
            try:
                image = Image.open(io.BytesIO(bytes(image)))
                image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # a JPEG decodes at a reduced scale directly
                image.load()
            except Exception as err:  # PIL raises several kinds for a file that is not an image
                raise ValueError(f"image {name!r} is not a readable image file ({err})") from err
            if max(image.size) > MAX_SIDE:  # a phone photo or a scan: every view is a 224-px crop anyway
                image = image.copy()
                image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        self.photos[name] = to_pil(image_to_tensor(image, argname="image"))
        for cache in (self._dense, self._spade):
            for key in [k for k in cache if k[0] == name]:
                del cache[key]
        for key in [k for k in self._traces if k[0] == name]:
            del self._traces[key]
        self._inputs.pop(name, None)
        return name

    def check(self, settings: Settings) -> Settings:
        """``settings`` if every field is one the explorer offers; ValueError/TypeError naming the field otherwise."""
        if not isinstance(settings, Settings):
            raise TypeError(f"settings must be a Settings, got {type(settings).__name__}")
        if settings.photo not in self.photos:
            raise ValueError(f"photo must be one of {list(self.photos)}, got {settings.photo!r}")
        if settings.preset not in LAYER_PRESETS:
            raise ValueError(f"preset must be one of {list(LAYER_PRESETS)}, got {settings.preset!r}")
        check_sparsity(settings.sparsity)
        if settings.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {settings.solver!r}")
        if settings.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {settings.method!r}")
        return settings

    def _input(self, photo: str) -> torch.Tensor:
        if photo not in self._inputs:
            self._inputs[photo] = preprocess(self.photos[photo])
        return self._inputs[photo]

    def _top3(self, net: nn.Module, x: torch.Tensor) -> tuple[tuple[str, float], ...]:
        with torch.no_grad():
            p = net(x).softmax(1)[0]
        values, indices = p.topk(3)
        return tuple((self.classes[int(i)], float(v)) for v, i in zip(values, indices, strict=True))

    def _saliency(self, net: nn.Module, x: torch.Tensor, target: int, method: str) -> torch.Tensor:
        return attribute(net, x, target, method, n_steps=self.ig_steps, internal_batch_size=self.batch_size)[
            0
        ]

    def _trace(self, s: Settings) -> nn.Module:
        key = (s.photo, s.preset, s.sparsity, s.solver)
        if key in self._traces:
            self._traces.move_to_end(key)
            return self._traces[key]
        pruned = spade_pruned_copy(
            self.model,
            self.photos[s.photo],
            layers=LAYER_PRESETS[s.preset],
            sparsity=s.sparsity,
            n_augment=self.n_augment,
            solver=s.solver,
            skip_depthwise=True,
            batch_size=self.batch_size,
            seed=self.seed,
            progress=False,
        )
        self._traces[key] = pruned
        while len(self._traces) > self.max_traces:
            self._traces.popitem(last=False)
        return pruned

    def is_cached(self, settings: Settings) -> bool:
        """Whether :meth:`compare` would answer ``settings`` from the cache (no network evaluation)."""
        s = self.check(settings)
        return (s.photo, s.method) in self._dense and (
            s.photo,
            s.preset,
            s.sparsity,
            s.solver,
            s.method,
        ) in self._spade

    def compare(self, settings: Settings, progress: Progress | None = None) -> Comparison:
        """Dense and SPADE maps of the dense top-1 class for ``settings`` (see :class:`Comparison`).

        ``progress(stage, k, n)`` is called before each of the ``n`` stages that must really run (dense map,
        SPADE trace, SPADE map); cached stages are skipped silently. The model is left as found.
        """
        s = self.check(settings)
        x = self._input(s.photo)
        seconds = {"dense": 0.0, "trace": 0.0, "spade map": 0.0}
        dense_key = (s.photo, s.method)
        spade_key = (s.photo, s.preset, s.sparsity, s.solver, s.method)
        stages = []
        if dense_key not in self._dense:
            stages.append("dense")
        if spade_key not in self._spade:
            if (s.photo, s.preset, s.sparsity, s.solver) not in self._traces:
                stages.append("trace")
            stages.append("spade map")
        labels = {
            "dense": f"saliency ({s.method}) of the dense network",
            "trace": f"SPADE trace ({s.solver}, {s.sparsity:.0%} of {s.preset}, {self.n_augment} views)",
            "spade map": f"saliency ({s.method}) of the SPADE trace",
        }
        done = 0

        def start(stage: str) -> float:
            nonlocal done
            done += 1
            if progress is not None:
                progress(labels[stage], done, len(stages))
            return time.perf_counter()

        if dense_key not in self._dense:
            t = start("dense")
            top3 = self._top3(self.model, x)
            target = self.classes.index(top3[0][0])
            self._dense[dense_key] = (self._saliency(self.model, x, target, s.method), top3, target)
            seconds["dense"] = time.perf_counter() - t
        dense_map, dense_top3, target = self._dense[dense_key]
        if spade_key not in self._spade:
            if "trace" in stages:
                t = start("trace")
                pruned = self._trace(s)
                seconds["trace"] = time.perf_counter() - t
            else:
                pruned = self._trace(s)
            t = start("spade map")
            self._spade[spade_key] = (self._saliency(pruned, x, target, s.method), self._top3(pruned, x))
            seconds["spade map"] = time.perf_counter() - t
        spade_map, spade_top3 = self._spade[spade_key]
        return Comparison(
            settings=s,
            image=denormalize(x)[0].clamp(0, 1),
            dense_map=dense_map,
            spade_map=spade_map,
            difference=spade_map - dense_map,
            dense_top3=dense_top3,
            spade_top3=spade_top3,
            target=target,
            seconds=seconds,
        )


def _signed_limit(*maps: torch.Tensor, quantile: float = 0.995) -> float:
    """± the ``quantile`` of |value| over all ``maps``: one colour scale so maps compare by colour."""
    flat = torch.cat([m.detach().float().abs().flatten() for m in maps])
    return max(float(torch.quantile(flat, quantile)), 1e-12)


def _top3_text(top3) -> str:
    return "\n".join(f"{name[:22]} {p:.2f}" for name, p in top3)


def comparison_figure(c: Comparison, *, size: float = 2.6) -> plt.Figure:
    """photo | dense map | SPADE map | difference, each network's top-3 under its map; one colour scale for the
    two maps (± their 99.5th percentile of |value|), its own for the difference. Red: evidence for the class."""
    if not isinstance(c, Comparison):
        raise TypeError(f"c must be a Comparison, got {type(c).__name__}")
    fig, axes = plt.subplots(1, 4, figsize=(4 * size, size + 0.9), squeeze=False)
    axes = axes[0]
    limit = _signed_limit(c.dense_map, c.spade_map)
    diff_limit = _signed_limit(c.difference)
    s = c.settings
    axes[0].imshow(c.image.permute(1, 2, 0).numpy())
    axes[0].set_title(f"{s.photo}\nexplained: {c.dense_top3[0][0][:22]}", fontsize=9)
    panels = [
        (c.dense_map, limit, "dense", _top3_text(c.dense_top3)),
        (c.spade_map, limit, f"SPADE ({s.solver}, {s.sparsity:.0%})", _top3_text(c.spade_top3)),
        (c.difference, diff_limit, "SPADE − dense", f"scale ±{diff_limit:.2g}\n(maps ±{limit:.2g})"),
    ]
    for ax, (m, lim, title, text) in zip(axes[1:], panels, strict=True):
        ax.imshow(m.numpy(), cmap="bwr", vmin=-lim, vmax=lim)
        ax.set_title(f"{title}\n{s.method}", fontsize=9)
        ax.text(0.5, -0.04, text, transform=ax.transAxes, ha="center", va="top", fontsize=7.5)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.tight_layout()
    return fig


def figure_png(fig: plt.Figure, *, dpi: int = 80) -> bytes:
    """The PNG bytes of ``fig`` (then closed), for an ``ipywidgets.Image``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def map_browser_figure(bundle: MapBundle, sample: str, method: str, *, size: float = 2.4) -> plt.Figure:
    """One sample of a :class:`~spade_utils.map_bundle.MapBundle`: the image with its trigger outlined, then the
    map of ``method`` on every variant with its Trojan AUC in the title (one colour scale per row: ± the 99.5th
    percentile of |value| over the variants). ValueError naming ``sample``/``method`` when the bundle lacks it."""
    if not isinstance(bundle, MapBundle):
        raise TypeError(f"bundle must be a MapBundle, got {type(bundle).__name__}")
    if sample not in bundle.sample_names:
        raise ValueError(f"sample must be one of {list(bundle.sample_names)}, got {sample!r}")
    if method not in bundle.methods:
        raise ValueError(f"method must be one of {list(bundle.methods)}, got {method!r}")
    i = bundle.sample_names.index(sample)
    variants = [v for v in bundle.variants if (v, method) in bundle.maps]
    maps = [torch.from_numpy(bundle.maps[v, method][i]) for v in variants]
    limit = _signed_limit(*maps)
    fig, axes = plt.subplots(
        1, 1 + len(variants), figsize=((1 + len(variants)) * size, size + 0.5), squeeze=False
    )
    axes = axes[0]
    axes[0].imshow(bundle.images[i].transpose(1, 2, 0))
    axes[0].contour(bundle.masks[i], levels=[0.5], colors="yellow", linewidths=1.0)
    axes[0].set_title(f"{sample}\n(trigger outlined)", fontsize=9)
    for ax, variant, m in zip(axes[1:], variants, maps, strict=True):
        ax.imshow(m.numpy(), cmap="bwr", vmin=-limit, vmax=limit)
        ax.contour(bundle.masks[i], levels=[0.5], colors="k", linewidths=0.6)
        auc = bundle.aucs[variant, method][i]
        ax.set_title(f"{variant}\n{method}: AUC {auc:.3f}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.tight_layout()
    return fig


def bundle_path(results: str | os.PathLike) -> Path:
    """Where notebook 04 saves its map bundle inside a results folder: ``<results>/maps/04_saliency_maps.npz``."""
    return Path(results) / "maps" / BUNDLE_NAME


def serving_page() -> bool:
    """Whether this kernel runs behind a Voilà page (which renders widgets although it disallows stdin, so
    :func:`spade_utils.widgets.frontend_attached` says False there): Voilà sets ``SERVER_SOFTWARE=voila/<version>``
    in its kernels' environment."""
    return os.environ.get("SERVER_SOFTWARE", "").startswith("voila/")


def live_widgets() -> bool:
    """Show live widgets: behind a Voilà page, or when :func:`spade_utils.widgets.frontend_attached` is true.
    Headless runs (papermill, ``$SPADE_HEADLESS``) get False, so they draw static figures and never hang."""
    from .widgets import frontend_attached

    return serving_page() or frontend_attached()


def explorer_app(explorer: Explorer, initial: Settings):
    """The explorer as one ipywidgets box: controls (photo, upload, preset, sparsity, solver, method), a progress
    bar and status line, and the comparison figure as an ``ipywidgets.Image``. Each change recomputes (cached)
    and shows the time it took. Needs a front end (Jupyter or Voilà) to be useful; returns the box."""
    import ipywidgets as w

    explorer.check(initial)
    style = {"description_width": "80px"}
    layout = w.Layout(width="330px")
    photo = w.Dropdown(options=list(explorer.photos), value=initial.photo, description="photo", style=style)
    upload = w.FileUpload(accept="image/*", multiple=False, description="upload a photo")
    preset = w.Dropdown(
        options=list(LAYER_PRESETS), value=initial.preset, description="layers", style=style, layout=layout
    )
    sparsity = w.SelectionSlider(
        options=list(SPARSITIES), value=initial.sparsity, description="sparsity", style=style, layout=layout
    )
    solver = w.Dropdown(options=list(SOLVERS), value=initial.solver, description="solver", style=style)
    method = w.Dropdown(options=list(METHODS), value=initial.method, description="saliency", style=style)
    bar = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="330px"))
    status = w.HTML(value="starting…")
    status.add_class("spade-status")
    picture = w.Image(format="png")
    picture.add_class("spade-comparison")

    pictures: dict[Settings, bytes] = {}  # the rendered figure of each setting shown, so returning is instant

    def current() -> Settings:
        return Settings(photo.value, preset.value, float(sparsity.value), solver.value, method.value)

    def report(stage: str, k: int, n: int) -> None:
        bar.max, bar.value = n, k - 1
        status.value = f"working ({k}/{n}): {stage}…"

    def refresh(_change=None) -> None:
        s = current()
        t = time.perf_counter()
        try:
            result = explorer.compare(s, progress=report)
        except Exception as err:  # shown on the page instead of a silent dead control
            status.value = f"<b>error</b>: {type(err).__name__}: {err}"
            return
        if s not in pictures:
            pictures[s] = figure_png(comparison_figure(result))
        picture.value = pictures[s]
        bar.max, bar.value = 1, 1
        took = time.perf_counter() - t
        status.value = (
            f"ready: {s.photo}, {s.preset}, sparsity {s.sparsity:.2f}, {s.solver}, {s.method} "
            f"({'from the cache' if sum(result.seconds.values()) == 0 else f'{took:.1f} s'})"
        )

    def uploaded(change) -> None:
        files = change["new"]
        if not files:
            return
        f = files[0]
        try:
            name = explorer.add_photo(f"upload: {f['name']}", f["content"])
        except (TypeError, ValueError) as err:
            status.value = f"<b>upload refused</b>: {err}"
            return
        photo.options = list(explorer.photos)
        photo.value = name  # triggers refresh

    for control in (photo, preset, sparsity, solver, method):
        control.observe(refresh, names="value")
    upload.observe(uploaded, names="value")
    controls = w.HBox([w.VBox([photo, upload, preset]), w.VBox([sparsity, solver, method])])
    refresh()
    app = w.VBox([controls, w.VBox([bar, status]), picture])
    app.add_class("spade-explorer")
    return app


def map_browser_app(path: str | os.PathLike):
    """Notebook 04's saved maps as one ipywidgets box (sample, method; every variant side by side with its Trojan
    AUC), or a message saying to run notebook 04 first when ``path`` does not exist. Returns the box."""
    import ipywidgets as w

    from .map_bundle import load_map_bundle

    path = Path(path)
    if not path.is_file():
        return w.HTML(
            value=f"<p>{MISSING_BUNDLE}<br>(looked for <code>{path.name}</code> in results/maps)</p>"
        )
    bundle = load_map_bundle(path)
    sample = w.Dropdown(options=list(bundle.sample_names), description="sample")
    method = w.Dropdown(options=list(bundle.methods), description="method")
    picture = w.Image(format="png")

    def refresh(_change=None) -> None:
        picture.value = figure_png(map_browser_figure(bundle, sample.value, method.value))

    sample.observe(refresh, names="value")
    method.observe(refresh, names="value")
    refresh()
    return w.VBox([w.HBox([sample, method]), picture])
