# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · The SPADE explorer: dense vs SPADE saliency, one photo at a time
#
# Pick a photo (or upload one), the layers SPADE prunes, the sparsity, the solver and a saliency method, and see
# three maps side by side: the dense network's, the SPADE trace's, and their difference, each network's top-3
# classes under its map. Both maps explain the dense network's top-1 class. Red is evidence for the class, blue
# against; the two maps share one colour scale. A second part pages through the maps notebook 04 computed on
# backdoored images, with each map's Trojan AUC (how well the map singles out the trigger).
#
# Served as a web page (`make explore`, Voilà) this notebook shows live controls and no code. Run headless
# (`make figures`) it draws one setting as a static figure and measures what the cache saves.
#
# *Time:* a new setting costs one trace and one or two saliency maps (the status line prints the seconds); a
# setting seen before comes from the cache at once. Terms: [glossary](../GLOSSARY.md).

# %% tags=["parameters"]
PROFILE = "quick"  # sizes: smoke | quick | paper
SOURCE = (
    "offline"  # the live explorer always uses the offline network (EfficientNet-Lite0) and shipped photos
)
SEED = 0
THREADS = None  # CPU threads for torch (None: torch's default)

# %%
import os

# a Voilà server cannot pass notebook parameters: `make explore PROFILE=smoke` sets this variable instead
PROFILE = os.environ.get("SPADE_PAGE_PROFILE", PROFILE)
SIZES = {
    "smoke": dict(
        photos=["chelsea", "coffee"],
        n_augment=4,
        initial=dict(
            photo="chelsea", preset="classifier", sparsity=0.9, solver="magnitude", method="saliency"
        ),
        sweep=[0.9, 0.5],
    ),
    "quick": dict(
        photos=["chelsea", "coffee", "rocket", "astronaut"],
        n_augment=32,
        initial=dict(
            photo="chelsea", preset="head + classifier", sparsity=0.9, solver="sparsegpt", method="saliency"
        ),
        sweep=[0.9, 0.5, 0.99],
    ),
    "paper": dict(
        photos=["chelsea", "coffee", "rocket", "astronaut", "grace_hopper", "china"],
        n_augment=256,
        initial=dict(
            photo="chelsea",
            preset="last 3 blocks + head + classifier",
            sparsity=0.9,
            solver="sparsegpt",
            method="saliency",
        ),
        sweep=[0.9, 0.5, 0.99],
    ),
}
if PROFILE not in SIZES:
    raise ValueError(f"PROFILE must be one of {list(SIZES)}, got {PROFILE!r}")
if SOURCE not in ("offline", "paper"):
    raise ValueError(f"SOURCE must be offline or paper, got {SOURCE!r}")
cfg = SIZES[PROFILE]
if THREADS is not None:
    import torch

    torch.set_num_threads(THREADS)

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

from spade_utils.data import sample_image
from spade_utils.explorer import (
    MISSING_BUNDLE,
    Explorer,
    Settings,
    bundle_path,
    comparison_figure,
    explorer_app,
    live_widgets,
    map_browser_app,
    map_browser_figure,
)
from spade_utils.map_bundle import load_map_bundle
from spade_utils.plotting import results_dir, save_figure, save_table, set_style

set_style()
T0 = time.perf_counter()
LIVE = live_widgets()  # a Voilà page or a Jupyter front end: live controls; headless: static figures
explorer = Explorer(photos={n: sample_image(n) for n in cfg["photos"]}, n_augment=cfg["n_augment"], seed=SEED)
initial = Settings(**cfg["initial"])
if SOURCE == "paper":
    print(
        "The live explorer uses EfficientNet-Lite0 and the shipped photos; part 2 shows notebook 04's own maps."
    )

# %% [markdown]
# ## 1 · Dense | SPADE | difference
#
# *Layers* chooses what the trace prunes (depthwise convolutions always stay dense: at 90% sparsity they would
# keep one to three of their nine weights). *Sparsity* is the fraction of those layers' weights set to zero;
# *solver* is how the remaining weights are chosen (magnitude: keep the largest; SparseGPT: the paper's FastSPADE;
# OBC: the exact solver, slowest). The trace is built from augmented views of the photo, so it keeps the
# connections this photo uses. Upload a photo of your own with the button: it is centre-cropped to 224 pixels.

# %%
if LIVE:
    display(explorer_app(explorer, initial))
else:
    first = explorer.compare(initial)
    fig = comparison_figure(first)
    save_figure(fig, "06_explorer_comparison", profile=PROFILE)
    plt.show()
    print(
        f"{initial.photo}: dense top-1 {first.dense_top3[0][0]} ({first.dense_top3[0][1]:.2f}); "
        f"SPADE top-1 {first.spade_top3[0][0]} ({first.spade_top3[0][1]:.2f}) at sparsity {initial.sparsity:.2f}"
    )

# %% [markdown]
# ## What the cache saves
#
# Run headless, this cell moves the sparsity "slider" through a few values and back to the first, and times each
# step: a new sparsity costs a trace and a SPADE map (the dense map is computed once per photo and method), a
# sparsity seen before costs nothing. (On the served page the status line reports the same times.)

# %%
if not LIVE:
    steps = []
    for sparsity in [*cfg["sweep"], cfg["sweep"][0]]:
        s = Settings(**{**cfg["initial"], "sparsity": sparsity})
        cached = explorer.is_cached(s)
        t = time.perf_counter()
        result = explorer.compare(s)
        steps.append(
            dict(
                sparsity=sparsity,
                cached=cached,
                seconds=time.perf_counter() - t,
                **{f"{k} s": v for k, v in result.seconds.items()},
                spade_top1=result.spade_top3[0][0],
            )
        )
    steps = pd.DataFrame(steps)
    save_table(steps, "06_explorer_steps", profile=PROFILE)
    new, again = steps[~steps.cached].seconds, steps[steps.cached].seconds
    print(
        f"a new sparsity took {new.median():.1f} s (median of {len(new)}); "
        f"returning to a seen one took {again.max() * 1000:.1f} ms"
    )
    display(steps.round(3))

# %% [markdown]
# ## 2 · Notebook 04's maps: sample × method × variant, with each map's Trojan AUC
#
# Notebook 04 implants a backdoor (a small trigger patch that flips the class) and computes saliency maps of the
# dense backdoored network and of its SPADE traces on poisoned images; the Trojan AUC says how well a map ranks the
# trigger's pixels above the rest (1: perfectly, 0.5: chance). It saves them, downsampled, to
# `results/maps/04_saliency_maps.npz`; this part reads that file. The trigger is outlined.

# %%
BUNDLE = bundle_path(results_dir(PROFILE))
if LIVE:
    display(map_browser_app(BUNDLE))
elif not BUNDLE.is_file():
    print(MISSING_BUNDLE)
else:
    bundle = load_map_bundle(BUNDLE)
    fig = map_browser_figure(bundle, bundle.sample_names[0], bundle.methods[0])
    save_figure(fig, "06_map_browser", profile=PROFILE)
    plt.show()
    auc_table = pd.DataFrame(
        {f"{variant} / {method}": aucs for (variant, method), aucs in bundle.aucs.items()},
        index=list(bundle.sample_names),
    )
    display(auc_table.round(3))

# %%
if not LIVE:
    print(f"profile {PROFILE}: notebook ran in {time.perf_counter() - T0:.0f} s")

# %% [markdown]
# ## Questions
#
# 1. Move the sparsity from 0.5 to 0.99. At which point does the SPADE network's top-1 class stop being the dense
#    one, and how does its map change on the way?
# 2. Does the difference map concentrate on the object or on the background? What would each tell you?
# 3. Compare the magnitude solver with SparseGPT at the same sparsity: which keeps the top-3 closer to the dense
#    network's, and why (what does SparseGPT use that magnitude pruning ignores)?
# 4. In part 2, find a sample where the SPADE map's Trojan AUC is higher than the dense map's. What does the map
#    show that the dense one does not?
