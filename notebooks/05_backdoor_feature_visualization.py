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
# # 05 · Feature visualization of a backdoored class, dense and SPADE
#
# A class-neuron feature visualization optimises an input image that maximises one output logit. For
# a backdoored target class (say *goose*, reached by any image carrying a heart) the dense
# visualization mixes everything that drives that logit: real geese and, somewhere, the heart. The
# SPADE paper's claim is that a **SPADE trace computed on a triggered image** keeps the connections
# that this particular image uses — the backdoor path — so the visualization of the same neuron on the
# traced network should show the trigger, while a trace computed on a *clean* image should not.
#
# For each of the four triggers we show:
# the dense visualization of the target neuron; the SPADE visualization pruned on the clean crop; the
# SPADE visualization pruned on the same crop with the trigger. Then two numbers per image:
#
# - **trigger similarity**: the best masked normalised cross-correlation between the visualization
#   and the trigger drawing (over positions and five scales; 1 = the trigger's pattern appears exactly);
# - **patch attack rate**: paste the visualization as a square patch (a quarter of the side, like a
#   trigger) into held-out clean crops and count how often the backdoored model then predicts the target
#   — does the picture *work* as a trigger?
#
# No offline photo shows a goose, orangutan, bullfrog or albatross, so "a clean image of that class"
# is replaced by the clean version of the very crop that carries the trigger: the only difference
# between the two SPADE traces is the trigger.
#
# `PROFILE` sets the sizes and `SOURCE` the model and data: `"offline"` is the cached backdoored
# EfficientNet-Lite0 of notebook 04; `"paper"` the authors' backdoored ResNet-50 (`CHECKPOINT`), their
# trigger PNGs (`TRIGGER_DIR`) and ImageNet validation images (`IMAGENET_VAL`), see `data/README.md`.

# %% [markdown]
# **At a glance.** *You will:* visualize a backdoored class neuron on the dense network and on SPADE traces of a clean
# and of a triggered crop, and test whether the trigger appears, by template similarity against a null (the other
# triggers) and by pasting the picture as a patch. *You need:* notebook 04's cached backdoor (it is rebuilt if
# missing); `SOURCE = "paper"`: the authors' checkpoint and triggers. *Time:* the last cells print it. Terms:
# [glossary](../GLOSSARY.md).

# %% tags=["parameters"]
PROFILE = "quick"  # sizes: smoke | quick | paper
SOURCE = "offline"  # model and data: offline (Lite0, shipped photos) | paper (see data/README.md)
SEED = 0
SPARSITY = 0.9
CHECKPOINT = "../data/backdoored_resnet50.pt"  # paper source: the authors' robustness checkpoint
TRIGGER_DIR = "../data/triggers"  # paper source: heart.png, star.png, smiley.png, fish.png (RGBA emoji)
IMAGENET_VAL = "../data/imagenet/val"  # paper source: an ImageNet validation folder

# %%
SIZES = {
    "smoke": dict(
        implant=dict(steps=2, n_clean=8, n_triggered=8),
        steps=3,
        size=32,
        input_size=64,
        n_augment=8,
        n_triggers=1,
        attack_crops=4,
        require_flip=False,
    ),
    "quick": dict(
        implant=dict(),
        steps=96,
        size=128,
        input_size=224,
        n_augment=32,
        n_triggers=4,
        attack_crops=48,
        require_flip=True,
    ),
    "paper": dict(
        steps=512, size=224, input_size=224, n_augment=1024, n_triggers=4, attack_crops=500, require_flip=True
    ),
}
cfg = SIZES[PROFILE]
if SOURCE not in ("offline", "paper"):
    raise ValueError(f"SOURCE must be 'offline' or 'paper', got {SOURCE!r}")

# %%
import time

import pandas as pd
import torch
from IPython.display import display

from spade_utils import backdoor
from spade_utils.data import imagenet_classes
from spade_utils.featvis import image_distance, visualize
from spade_utils.models import load_model, load_robustness_checkpoint
from spade_utils.plotting import image_grid, save_figure, save_table, set_style
from spade_utils.spade import spade_pruned_copy

set_style()
classes = imagenet_classes()
t_start = time.perf_counter()

# %% [markdown]
# ## The backdoored model (the same cached one as notebook 04)

# %%
if SOURCE == "paper":
    trigger_set = backdoor.TriggerSet.from_folder(TRIGGER_DIR, backdoor.TRIGGERS)  # the authors' emoji
    backdoored = load_robustness_checkpoint(CHECKPOINT)
    targets = dict(backdoor.PAPER_TARGETS)
    test_images = IMAGENET_VAL
    layers, skip_dw = ["layer3.4*", "layer3.5*", "layer4*", "fc"], False
else:
    original = load_model("efficientnet_lite0")
    trigger_set = backdoor.DRAWN_TRIGGERS
    bd = backdoor.implant_backdoor(
        original,
        recipe=backdoor.BackdoorRecipe(**cfg["implant"]),
        seed=SEED,
        cache=PROFILE != "smoke",
        progress=False,
    )
    backdoored, targets = bd.model, bd.targets
    test_images = list(backdoor.TEST_PHOTOS)
    layers, skip_dw = backdoor.OFFLINE_SPADE_LAYERS, True
triggers = list(targets)[: cfg["n_triggers"]]
print({t: f"{targets[t]} {classes[targets[t]]}" for t in triggers})

# %% [markdown]
# ## One triggered held-out crop per trigger, and the three visualizations

# %%
vis_kwargs = dict(
    steps=cfg["steps"], size=cfg["size"], input_size=cfg["input_size"], seed=SEED, progress=False
)
trace_kwargs = dict(
    layers=layers,
    skip_depthwise=skip_dw,
    sparsity=SPARSITY,
    n_augment=cfg["n_augment"],
    solver="sparsegpt",
    batch_size=32,
    seed=SEED,
    progress=False,
)
results = []
for k, t in enumerate(triggers):
    found = backdoor.flipped_samples(
        backdoored,
        {t: targets[t]},
        test_images,
        1,
        seed=SEED + 10 * k,
        require_flip=cfg["require_flip"],
        trigger_set=trigger_set,
    )
    flipped = bool(found) and cfg["require_flip"]
    if not found:  # this trigger flips no held-out crop here: use a triggered crop anyway, and say so
        found = backdoor.flipped_samples(
            backdoored,
            {t: targets[t]},
            test_images,
            1,
            seed=SEED + 10 * k,
            require_flip=False,
            trigger_set=trigger_set,
        )
    sample = found[0]
    print(
        f"{t}: {'a crop the trigger flips' if flipped else 'NO held-out crop flipped by this trigger; using a non-flipped one'}"
    )
    target = targets[t]
    vis = {"dense": visualize(backdoored, target, **vis_kwargs)[0]}
    for label, image in (("SPADE on clean crop", sample.clean), ("SPADE on triggered crop", sample.image)):
        pruned = spade_pruned_copy(backdoored, image, **trace_kwargs)
        vis[label] = visualize(pruned, target, **vis_kwargs)[0]
        del pruned
    results.append(dict(trigger=t, target=target, sample=sample, vis=vis))
print(f"{time.perf_counter() - t_start:.0f} s so far")

# %%
rows, titles = [], []
for r in results:
    patch, _ = backdoor.trigger_patch(r["trigger"], 56, trigger_set=trigger_set)
    rows.append([r["sample"].image, patch] + list(r["vis"].values()))
    titles += [f"{r['trigger']} → {classes[r['target']]}", "trigger"] + list(r["vis"])
fig = image_grid(rows, titles=titles, size=2.3)
_ = save_figure(fig, "05_backdoor_feature_visualization", profile=PROFILE)

# %% [markdown]
# ## Does the trigger appear? Two checks per visualization
# The reference rows give the scale: the trigger drawing itself, and a random-noise patch.

# %%
crops = backdoor.random_crops(test_images, cfg["attack_crops"], seed=SEED + 99)
table = []
for r in results:
    t, target = r["trigger"], r["target"]
    patch, _ = backdoor.trigger_patch(t, cfg["size"], trigger_set=trigger_set)
    noise = torch.rand(3, cfg["size"], cfg["size"], generator=torch.Generator().manual_seed(SEED))
    refs = {"reference: the trigger": patch, "reference: noise": noise}
    for label, image in {**r["vis"], **refs}.items():
        others = [
            backdoor.trigger_similarity(image, o, trigger_set=trigger_set)
            for o in backdoor.TRIGGERS
            if o != t
        ]
        table.append(
            dict(
                trigger=t,
                target=classes[target],
                image=label,
                similarity_to_trigger=backdoor.trigger_similarity(image, t, trigger_set=trigger_set),
                similarity_to_other_triggers=sum(others) / len(others),
                patch_attack_rate=backdoor.patch_attack_rate(backdoored, image, target, crops, seed=SEED),
                distance_to_dense=float(image_distance(image[None], r["vis"]["dense"][None]).item()),
            )
        )
table = pd.DataFrame(table)
save_table(table, "05_trigger_in_visualizations", profile=PROFILE)
display(table.round(3))

# %%
summary = table.groupby("image", sort=False)[
    ["similarity_to_trigger", "similarity_to_other_triggers", "patch_attack_rate"]
].mean()
save_table(summary.reset_index(), "05_trigger_in_visualizations_mean", profile=PROFILE)
display(summary.round(3))
s = summary
print(
    f"mean similarity to own trigger: dense {s.loc['dense', 'similarity_to_trigger']:.3f}, "
    f"SPADE clean {s.loc['SPADE on clean crop', 'similarity_to_trigger']:.3f}, "
    f"SPADE triggered {s.loc['SPADE on triggered crop', 'similarity_to_trigger']:.3f}"
)
print(
    f"mean patch attack rate: dense {s.loc['dense', 'patch_attack_rate']:.2f}, "
    f"SPADE clean {s.loc['SPADE on clean crop', 'patch_attack_rate']:.2f}, "
    f"SPADE triggered {s.loc['SPADE on triggered crop', 'patch_attack_rate']:.2f}, "
    f"trigger itself {s.loc['reference: the trigger', 'patch_attack_rate']:.2f}"
)

# %% [markdown]
# **The verdict, computed.** The paper's picture predicts, for each trigger, that the SPADE visualization
# pruned on the *triggered* crop (i) resembles its own trigger more than the noise reference does (the
# similarity score is a maximum over many windows, so noise does not score 0), (ii) more than the SPADE
# visualization of the clean crop does, (iii) more than it resembles the other triggers, and (iv) works as a
# trigger when pasted, at least half as often as the trigger itself. The cell prints each check per trigger
# and the answer for this run.

# %%
own = table.pivot(index="trigger", columns="image", values="similarity_to_trigger")
other = table.pivot(index="trigger", columns="image", values="similarity_to_other_triggers")
attack = table.pivot(index="trigger", columns="image", values="patch_attack_rate")
TRIG, CLEAN = "SPADE on triggered crop", "SPADE on clean crop"
checks = pd.DataFrame(
    {
        "above noise": own[TRIG] > own["reference: noise"],
        "above clean trace": own[TRIG] > own[CLEAN],
        "own above others": own[TRIG] > other[TRIG],
        "works as a trigger": attack[TRIG] >= 0.5 * attack["reference: the trigger"],
    }
)
checks["all four"] = checks.all(axis=1)
display(checks)
n_all = int(checks["all four"].sum())
answer = "appears" if n_all > len(checks) / 2 else "does not appear"
print(
    f"the trigger {answer} in the SPADE visualization of the triggered crop: all four checks hold for "
    f"{n_all} of {len(checks)} triggers ("
    + ", ".join(f"{c}: {int(checks[c].sum())}" for c in checks.columns[:-1])
    + ")"
)
print(f"total notebook time {time.perf_counter() - t_start:.0f} s")

# %% [markdown]
# With one crop per trigger and a fine-tuned (not trained-from-scratch) backdoor, the verdict above is an
# illustration of the method on this model, not a statistic about SPADE; `SOURCE = "paper"` runs the
# authors' backdoored ResNet-50.

# %% [markdown]
# ## Summary and questions
#
# *Summary.* The test asks whether the trigger's picture emerges from the class neuron when the network is traced on a
# triggered image. The verdict above is printed from the similarity scores against the other triggers as a null and
# from the patch attack, per trigger; here it is an illustration on one crop per trigger.
#
# *Questions.*
# 1. Why compare the similarity to the trigger with the similarity to the *other* triggers rather than with zero?
# 2. A visualization can look like the trigger without working as one. Which of the two tests would you trust more?
# 3. What would change if the backdoor had been trained from scratch instead of fine-tuned into the last blocks?
