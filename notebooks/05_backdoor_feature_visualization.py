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
# For each of the four triggers we make the dense visualization of the target neuron, the SPADE visualization
# pruned on the clean crop, the SPADE visualization pruned on the same crop with the trigger, and four stronger
# visualizations of the triggered trace (all options of `spade_utils.featvis.visualize`):
#
# - **(a) seeded accentuation**: start from the triggered crop itself and keep the picture near it while raising the
#   logit (feature accentuation, Hamblin et al. 2024): which parts of *this* image does the neuron amplify?
# - **(b) diversity**: a batch of images with Lucent's diversity penalty, so several ways to drive the neuron show;
#   the best of the batch is scored (and its p-value corrected for taking the best);
# - **(c) multi-scale crops**: every step sees a random crop of 30–100% of the canvas, which favours compact,
#   object-like features such as a trigger over textures;
# - **(d) a channel inside the backdoor's blocks**: the channel of the last implanted block whose activation the
#   trigger raises most (on other crops), instead of the class logit;
# - **(e) the paper's 512 steps at 224 px**: the `paper` profile; `quick` uses fewer steps and pixels (printed below).
#
# Each picture is judged two ways:
#
# - **trigger similarity against a null**: the best masked normalised cross-correlation between the picture and the
#   trigger drawing (over positions and five scales; 1 = the trigger's pattern exactly), compared with the same score
#   of pictures *made the same way for other objectives* — random other class neurons (or channels) and the other
#   triggers' target classes. The empirical p-value is the share of that null scoring at least as high.
# - **patch attack rate**: paste the picture as a square patch (a quarter of the side, like a trigger) into held-out
#   clean crops and count how often the backdoored model then predicts the target — does the picture *work* as a
#   trigger?
#
# No offline photo shows a goose, orangutan, bullfrog or albatross, so "a clean image of that class"
# is replaced by the clean version of the very crop that carries the trigger: the only difference
# between the two SPADE traces is the trigger.
#
# `PROFILE` sets the sizes and `SOURCE` the model and data: `"offline"` is the backdoored EfficientNet-Lite0 of
# notebook 04; `"paper"` the authors' backdoored ResNet-50 (`CHECKPOINT`), their trigger PNGs (`TRIGGER_DIR`) and
# ImageNet validation images (`IMAGENET_VAL`), see `data/README.md`.

# %% [markdown]
# **At a glance.** *You will:* visualize a backdoored class neuron on the dense network and on SPADE traces of a clean
# and of a triggered crop, with four stronger visualization recipes, and test whether the trigger appears, by template
# similarity against a null of visualizations of other neurons and by pasting the picture as a patch. *You need:*
# the offline backdoor of notebook 04 (shipped with the package, loaded by `implant_backdoor`); `SOURCE = "paper"`: the authors' checkpoint and triggers.
# *Time:* the last cells print it. Terms: [glossary](../GLOSSARY.md).

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
        null_neurons=1,  # random other neurons per trigger and recipe
        seeded_null_neurons=1,
        diversity_batch=2,
        contrast_crops=2,
    ),
    "quick": dict(
        implant=dict(),
        steps=64,
        size=128,
        input_size=224,
        n_augment=32,
        n_triggers=4,
        attack_crops=48,
        require_flip=True,
        null_neurons=3,
        seeded_null_neurons=2,
        diversity_batch=3,
        contrast_crops=8,
    ),
    "paper": dict(
        steps=512,
        size=224,
        input_size=224,
        n_augment=1024,
        n_triggers=4,
        attack_crops=500,
        require_flip=True,
        null_neurons=16,
        seeded_null_neurons=16,
        diversity_batch=4,
        contrast_crops=64,
    ),
}
cfg = SIZES[PROFILE]
if SOURCE not in ("offline", "paper"):
    raise ValueError(f"SOURCE must be 'offline' or 'paper', got {SOURCE!r}")

# %%
import os
import time

import numpy as np
import pandas as pd
import torch
from IPython.display import display

from spade_utils import backdoor
from spade_utils.data import imagenet_classes
from spade_utils.featvis import contrast_channels, image_distance, visualize
from spade_utils.models import load_model, load_robustness_checkpoint
from spade_utils.null_distribution import best_of_p_value, null_summary
from spade_utils.plotting import image_grid, save_figure, save_table, set_style
from spade_utils.spade import spade_pruned_copy

# %%
set_style()
classes = imagenet_classes()
t_start = time.perf_counter()

# %% [markdown]
# ## The backdoored model (the same one as notebook 04; offline: the weights shipped with the package)

# %%
if SOURCE == "paper":  # the authors' checkpoint and emoji triggers
    trigger_set = backdoor.TriggerSet.from_folder(TRIGGER_DIR, backdoor.TRIGGERS)
    backdoored, targets = load_robustness_checkpoint(CHECKPOINT), dict(backdoor.PAPER_TARGETS)
else:
    trigger_set = backdoor.DRAWN_TRIGGERS
    bd = backdoor.implant_backdoor(
        load_model("efficientnet_lite0"),
        recipe=backdoor.BackdoorRecipe(**cfg["implant"]),
        seed=SEED,
        cache=PROFILE != "smoke",
        progress=False,
    )
    backdoored, targets = bd.model, bd.targets

# %% [markdown]
# The held-out images, the traced layers, and the layers of recipes (b) and (d) (inside the traced blocks).

# %%
if SOURCE == "paper":
    test_images, layers, skip_dw = IMAGENET_VAL, ["layer3.4*", "layer3.5*", "layer4*", "fc"], False
    channel_layer, diversity_layer = "layer4.2", "layer3.5"
else:
    test_images, layers, skip_dw = list(backdoor.TEST_PHOTOS), backdoor.OFFLINE_SPADE_LAYERS, True
    channel_layer, diversity_layer = "_blocks.15", "_blocks.12"  # the implant trains blocks 8-15
triggers = list(targets)[: cfg["n_triggers"]]
print({t: f"{targets[t]} {classes[targets[t]]}" for t in triggers})
print(
    f"profile {PROFILE}: {cfg['steps']} optimisation steps on a {cfg['size']} px canvas fed at {cfg['input_size']} px "
    f"(the paper: 512 steps at 224 px, the 'paper' profile); traces from {cfg['n_augment']} views at sparsity {SPARSITY}"
)

# %% [markdown]
# ## The recipes
# Every recipe is one call of `visualize` with the options below; the class (or channel) objective is filled in per
# picture. Seeded accentuation starts from the triggered crop; its regulariser weight multiplies the mean squared
# pixel distance to that crop (pixels in [0, 1]) against a logit of order 10.

# %%
INIT_WEIGHT = 100.0  # (a) feature accentuation: pull towards the seed image
DIVERSITY = 30.0  # (b) weight of Lucent's diversity penalty
base = dict(steps=cfg["steps"], size=cfg["size"], input_size=cfg["input_size"], seed=SEED, progress=False)
RECIPES = {
    "SPADE on triggered crop": dict(),
    "(a) seeded accentuation": dict(init_weight=INIT_WEIGHT),  # init= the triggered crop, per trigger
    f"(b) diversity, best of {cfg['diversity_batch']}": dict(
        batch=cfg["diversity_batch"], diversity=DIVERSITY, diversity_layer=diversity_layer
    ),
    "(c) multi-scale crops": dict(transforms="multiscale"),
    f"(d) channel in {channel_layer}": dict(),  # objective = the trigger's channel, per trigger
}
SEEDED, DIVERSE, CHANNEL = list(RECIPES)[1:3] + [list(RECIPES)[4]]
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


def render(model, objective, recipe, sample=None):
    """The recipe's pictures (B, 3, size, size) of one objective; the seeded recipe starts from the triggered crop."""
    extra = dict(RECIPES[recipe])
    if recipe == SEEDED:
        extra["init"] = sample.image
    return visualize(model, objective, **base, **extra)


# %% [markdown]
# ## One triggered held-out crop per trigger, and its pictures
# The channel for recipe (d) is the one of the last implanted block whose mean activation the trigger raises most on
# other triggered crops (`contrast_channels`, triggered minus clean), so it is chosen without the crop it is traced on.


# %%
def triggered_crops(t, n, seed, require_flip):
    """``n`` held-out crops with trigger ``t`` pasted (those it flips to its target, with ``require_flip``)."""
    return backdoor.flipped_samples(
        backdoored,
        {t: targets[t]},
        test_images,
        n,
        seed=seed,
        require_flip=require_flip,
        trigger_set=trigger_set,
    )


def one_triggered_crop(k, t):
    """The crop a trace is built on, and whether the trigger flips it (if it flips none, a triggered crop anyway)."""
    found = triggered_crops(t, 1, SEED + 10 * k, cfg["require_flip"])
    if found:
        return found[0], cfg["require_flip"]
    return triggered_crops(t, 1, SEED + 10 * k, False)[0], False


def trigger_channel(k, t):
    """The channel of ``channel_layer`` the trigger raises most on other crops (triggered minus clean)."""
    others = triggered_crops(t, cfg["contrast_crops"], SEED + 1000 + k, False)
    triggered, clean = torch.stack([o.image for o in others]), torch.stack([o.clean for o in others])
    contrast = contrast_channels(backdoored, channel_layer, triggered, clean)
    return int(contrast.argmax()), contrast


# %%
results = []
for k, t in enumerate(triggers):
    sample, flipped = one_triggered_crop(k, t)
    print(
        f"{t}: {'a crop the trigger flips' if flipped else 'NO held-out crop flipped by this trigger; using another'}"
    )
    channel, contrast = trigger_channel(k, t)
    target, trace = targets[t], spade_pruned_copy(backdoored, sample.image, **trace_kwargs)
    vis = {
        "dense": visualize(backdoored, target, **base),
        "SPADE on clean crop": visualize(
            spade_pruned_copy(backdoored, sample.clean, **trace_kwargs), target, **base
        ),
    }
    for recipe in RECIPES:
        objective = f"{channel_layer}:{channel}" if recipe == CHANNEL else target
        vis[recipe] = render(trace, objective, recipe, sample)
    results.append(
        dict(
            trigger=t,
            target=target,
            sample=sample,
            channel=channel,
            n_channels=len(contrast),
            trace=trace,
            vis=vis,
        )
    )
    print(
        f"  channel {channel_layer}:{channel} (trigger raises it by {contrast.max():.2f}, median {contrast.median():.2f})"
    )
print(f"{time.perf_counter() - t_start:.0f} s so far")

# %% [markdown]
# ## The null: the same recipes aimed at other neurons
# For each trigger and recipe, the null holds pictures made the same way on the same network for objectives unrelated
# to that trigger: random other class neurons (recipe (d): random other channels of the same block) and the other
# triggers' target classes. Random-start pictures of the triggered traces are pooled over the four traces (each is a
# SPADE trace of a triggered crop); the seeded recipe's null is made from the same seed crop, since its pictures keep
# much of the crop. The clean-trace row is compared with the triggered traces' pool, the dense row with random class
# neurons of the dense network; the diversity recipe's best-of-batch score with the plain recipe's pool, its p-value
# corrected for the best of the batch (Šidák).

# %%
rng = np.random.default_rng(SEED)
unrelated = np.setdiff1d(np.arange(len(classes)), list(targets.values()))
null_images = {}  # (trigger or "dense", recipe) -> (N, 3, size, size): pictures of unrelated objectives
null_images["dense"] = torch.cat(
    [visualize(backdoored, int(c), **base) for c in rng.choice(unrelated, cfg["null_neurons"], replace=False)]
)

# %%
for r in results:
    t, trace, sample = r["trigger"], r["trace"], r["sample"]
    picked = rng.choice(unrelated, cfg["null_neurons"], replace=False)
    chosen = [q["channel"] for q in results]
    channels = rng.choice(
        np.setdiff1d(np.arange(r["n_channels"]), chosen), cfg["null_neurons"], replace=False
    )
    null_images[t, "SPADE on triggered crop"] = torch.cat(
        [render(trace, int(c), "SPADE on triggered crop") for c in picked]
    )
    null_images[t, "(c) multi-scale crops"] = torch.cat(
        [render(trace, int(c), "(c) multi-scale crops") for c in picked]
    )
    null_images[t, CHANNEL] = torch.cat([render(trace, f"{channel_layer}:{c}", CHANNEL) for c in channels])
    seeded_objectives = [int(c) for c in picked[: cfg["seeded_null_neurons"]]]
    seeded_objectives += [targets[o] for o in triggers if o != t]  # the other triggers' targets, on this seed
    null_images[t, SEEDED] = torch.cat([render(trace, c, SEEDED, sample) for c in seeded_objectives])
    r.pop("trace")
print(
    f"{sum(len(v) for v in null_images.values())} null pictures; {time.perf_counter() - t_start:.0f} s so far"
)

# %% [markdown]
# ## Why the similarity score is never near 0: its floor
# The score is a *maximum* of a correlation over every position and five sizes of the trigger. For an image of
# independent noise, one window's correlation with the trigger's n = 3 × (mask pixels) values is roughly normal with
# spread 1/√n, and the maximum of N such windows lies near √(2 ln N / n) — tens of thousands of windows of a few hundred
# pixels give 0.1–0.2. Feature visualizations are smooth (neighbouring pixels agree, so fewer independent values per
# window) and colourful, and score higher still. That is why each score is read against a null of pictures made the same
# way, not against 0. The cell compares the measured noise score with that estimate at the smallest trigger size.

# %%
noise = torch.rand(3, cfg["size"], cfg["size"], generator=torch.Generator().manual_seed(SEED))
for t in triggers:
    side = max(3, round(0.15 * cfg["size"]))
    n_values = 3 * int(trigger_set.patch(t, side)[1].sum())
    n_windows = (cfg["size"] - side + 1) ** 2
    estimate = np.sqrt(2 * np.log(n_windows) / n_values)
    print(
        f"{t}: uniform noise scores {backdoor.trigger_similarity(noise, t, trigger_set=trigger_set):.2f}; "
        f"at the smallest size ({side} px, n = {n_values} values, N = {n_windows} windows) "
        f"√(2 ln N / n) = {estimate:.2f}"
    )

# %% [markdown]
# ## Scores, nulls and patch attacks, per trigger
# `score` is the similarity to the picture's own trigger, `null_mean` and `null_p95` the null's mean and 95th
# percentile, `p_value` the share of the null at least as high (add-one estimate); `p_floor` the smallest p-value its
# null of `n_null` pictures allows, 1/(n+1) (Šidák-corrected for a best of `best_of`): a score above every null picture
# gets exactly `p_floor`. The reference rows (the triggered crop, which seeds recipe (a), the trigger drawing, uniform
# noise) give the scale.

# %%
crops = backdoor.random_crops(test_images, cfg["attack_crops"], seed=SEED + 99)


def similarity(image, t):
    return backdoor.trigger_similarity(image, t, trigger_set=trigger_set)


def null_scores(t, recipe):
    """Similarities to trigger t's template of the null pictures for (t, recipe), as described above."""
    if recipe == "dense":
        pool = list(null_images["dense"])
    elif recipe == SEEDED:
        return [similarity(x, t) for x in null_images[t, SEEDED]]
    else:
        key = {"SPADE on clean crop": "SPADE on triggered crop", DIVERSE: "SPADE on triggered crop"}.get(
            recipe, recipe
        )
        pool = [x for o in triggers for x in null_images[o, key]]
    pool += [x for q in results if q["trigger"] != t for x in q["vis"][recipe]]  # the other triggers' targets
    return [similarity(x, t) for x in pool]


# %%
def pictures_of(r):
    """Trigger ``r``'s pictures: every recipe's, then the reference rows (seed crop, trigger drawing, noise)."""
    patch, _ = backdoor.trigger_patch(r["trigger"], cfg["size"], trigger_set=trigger_set)
    seed_crop = torch.nn.functional.interpolate(
        r["sample"].image[None], size=(cfg["size"], cfg["size"]), mode="bilinear", antialias=True
    ).clamp(0, 1)
    return {
        **r["vis"],
        "reference: the triggered crop": seed_crop,  # the seed of recipe (a)
        "reference: the trigger": patch[None],
        "reference: noise": noise[None],
    }


# %%
def score_row(r, label, images):
    """The table's row of one picture (the best of a diversity batch; the only picture otherwise)."""
    t, target = r["trigger"], r["target"]
    scores = [similarity(x, t) for x in images]
    best = int(np.argmax(scores))
    image, row = images[best], dict(trigger=t, target=classes[target], image=label)
    if not label.startswith("reference"):
        row.update(null_summary(scores[best], null_scores(t, label), best_of=len(images)))
        row.update(best_of=len(images), p_floor=best_of_p_value(1 / (row["n_null"] + 1), len(images)))
    row.update(
        similarity_to_trigger=scores[best],
        similarity_to_other_triggers=float(
            np.mean([similarity(image, o) for o in backdoor.TRIGGERS if o != t])
        ),
        patch_attack_rate=backdoor.patch_attack_rate(backdoored, image, target, crops, seed=SEED),
        distance_to_dense=float(image_distance(image[None], r["vis"]["dense"][:1]).item()),
    )
    r.setdefault("shown", {})[label] = image
    return row


# %%
table = [score_row(r, label, images) for r in results for label, images in pictures_of(r).items()]
table = pd.DataFrame(table).drop(columns="score")
save_table(table, "05_trigger_in_visualizations", profile=PROFILE)
display(table.round(3))

# %%
rows, titles = [], []
for r in results:
    t = r["trigger"]
    patch, _ = backdoor.trigger_patch(t, 56, trigger_set=trigger_set)
    rows.append([r["sample"].image, patch] + [r["shown"][label] for label in r["vis"]])
    titles += [f"{t} → {classes[r['target']]}", "trigger"]
    for label in r["vis"]:
        row = table[(table.trigger == t) & (table.image == label)].iloc[0]
        titles.append(
            f"{label}\nsim {row.similarity_to_trigger:.2f} (null p95 {row.null_p95:.2f}), p {row.p_value:.2f}"
        )
fig = image_grid(rows, titles=titles, size=2.4)
for ax in fig.axes:
    ax.title.set_fontsize(7)
_ = save_figure(fig, "05_backdoor_feature_visualization", profile=PROFILE)

# %% [markdown]
# ## The measured answer
# The mean over triggers is kept for the README; the answer is read per trigger from the p-values, the paired
# comparison of the two traces and the patch attacks.

# %%
summary = table.groupby("image", sort=False)[
    ["similarity_to_trigger", "similarity_to_other_triggers", "patch_attack_rate"]
].mean()
save_table(summary.reset_index(), "05_trigger_in_visualizations_mean", profile=PROFILE)
display(summary.round(3))

# %%
pictures = table[~table.image.str.startswith("reference")]
on_trace = pictures[pictures.image.isin(list(RECIPES))]
at_floor = on_trace[on_trace.p_value <= on_trace.p_floor + 1e-12]
controls = pictures[~pictures.image.isin(list(RECIPES))]
print(
    f"{len(at_floor)} of {len(on_trace)} (trigger, recipe) tests on the triggered traces score above every picture of "
    f"their null (p at its floor); chance alone expects {on_trace.p_floor.sum():.1f}. The controls (dense, clean-crop "
    f"trace): {int((controls.p_value <= controls.p_floor + 1e-12).sum())} of {len(controls)}, chance "
    f"{controls.p_floor.sum():.1f}. These nulls of {int(on_trace.n_null.min())}–{int(on_trace.n_null.max())} pictures "
    f"cannot give p below {on_trace.p_floor.min():.3f}; p ≤ 0.05 needs at least 19."
)
for _, q in at_floor.iterrows():
    print(
        f"  above its whole null: {q.trigger} / {q.image}: score {q.similarity_to_trigger:.2f}, "
        f"null mean {q.null_mean:.2f}, null p95 {q.null_p95:.2f}, p {q.p_value:.3f}"
    )

# %%
own = table.pivot(index="trigger", columns="image", values="similarity_to_trigger")
gap = own["SPADE on triggered crop"] - own["SPADE on clean crop"]
attack = table.pivot(index="trigger", columns="image", values="patch_attack_rate")
seeded = table[table.image == SEEDED]
print(
    f"the triggered-crop trace is more trigger-like than the clean-crop trace for {int((gap > 0).sum())} of {len(gap)} "
    "triggers (differences " + ", ".join(f"{t} {d:+.2f}" for t, d in gap.items()) + ")"
)
print(
    f"seeded accentuation (a) keeps the trigger its seed carries: similarity {own[SEEDED].mean():.2f} on average, "
    f"the crop itself {own['reference: the triggered crop'].mean():.2f}, the same recipe aimed at other neurons "
    f"{seeded.null_mean.mean():.2f}; pasted as a patch it flips {attack[SEEDED].mean():.0%} of crops, the crop itself "
    f"{attack['reference: the triggered crop'].mean():.0%}"
)
random_start = pictures[pictures.image != SEEDED]
best = random_start.loc[random_start.patch_attack_rate.idxmax()]
print(
    f"patch attack: the best random-start picture is {best.trigger} / {best.image} at {best.patch_attack_rate:.0%} of "
    f"{cfg['attack_crops']} crops; the triggers themselves {attack['reference: the trigger'].min():.0%}–"
    f"{attack['reference: the trigger'].max():.0%}, noise {attack['reference: noise'].max():.0%} at most"
)
print(
    f"total notebook time {time.perf_counter() - t_start:.0f} s "
    f"(load average over the last 15 min: {os.getloadavg()[2]:.1f} on {os.cpu_count()} cores)"
)

# %% [markdown]
# One crop per trigger, a fine-tuned (not trained-from-scratch) backdoor and a few null pictures per recipe: the
# numbers above describe this model and these crops, not SPADE in general; `SOURCE = "paper"` runs the authors'
# backdoored ResNet-50, and `PROFILE = "paper"` the paper's 512 steps at 224 px with larger nulls.

# %% [markdown]
# ## Summary and questions
#
# *Summary.* The test asks whether the trigger's picture emerges from the class neuron when the network is traced on a
# triggered image. Each picture's trigger similarity is read against a null of pictures made the same way for other
# neurons (the score's floor is far above 0), and each picture is pasted as a patch to see whether it works as a
# trigger; the printed lines above are the answer for this run.
#
# *Questions.*
# 1. Why is a similarity score of 0.5 not evidence by itself? What sets the floor, and what does the null add?
# 2. The seeded recipe starts from an image that already shows the trigger. What must its null contain for a low
#    p-value to mean something?
# 3. A visualization can look like the trigger without working as one. Which of the two tests would you trust more?
# 4. What would change if the backdoor had been trained from scratch instead of fine-tuned into the last blocks?
