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
# # 01 · A polysemantic neuron in two dimensions, and what SPADE does to it
#
# This is the paper's toy example of a polysemantic neuron (SPADE, ICML 2024), rebuilt so that every step can be
# seen.
#
# * **The task.** Points in the square $[0, 9]^2$. The positive class is the union of two regions: a
#   *large* disc (centre (4, 4), radius 2) and a *small* disc (centre (1, 1), radius 0.5). Everything else
#   is negative.
# * **The neuron.** A small ReLU network with a single output neuron learns the task. That one neuron must
#   fire for both regions: it is **polysemantic**, it answers to two unrelated "concepts".
# * **The interpretation.** Feature visualization explains a neuron by searching for the inputs that excite
#   it most: gradient ascent on the neuron's output, from many random starts. Here an input is just a 2-D
#   point, so the "visualizations" are points we can plot. With the robust procedure below they end in the
#   large disc (the per-seed table counts how many): the small region is invisible, although the neuron fires
#   there too.
# * **SPADE.** Take one sample of interest, make many augmented copies of it (here: small Gaussian jitters
#   of the point), record what every pruned layer receives on those copies, and prune each layer so that it
#   still computes the same outputs *on those inputs* (an Optimal-Brain-Surgeon solver). The pruned network
#   is a trace of the computation for that sample. Feature visualization on the trace answers the question
#   "what does the neuron respond to *for this sample*?". With a sample from the small disc, the
#   visualizations move into the small disc.
#
# Everything below is computed by `spade_utils.toy` (data, model, training, the 2-D feature visualization,
# the jitter augmentation) and by the same `spade_trace` engine the ImageNet notebooks use. Every number in
# the text is printed by a cell.

# %% [markdown]
# **At a glance.** *You will:* see why a neuron that responds to two concepts shows only one of them under feature
# visualization; see what a SPADE trace (augment the sample, record each layer's statistics, solve the layer-wise
# problem, swap the sparse weights in) does to that visualization; and count on how many training seeds the trace finds
# the concept the sample belongs to. *You need:* nothing beyond the installed packages; no GPU. *Time:* the last cell
# prints the run time of this profile. Terms are defined in the [glossary](../GLOSSARY.md).

# %% tags=["parameters"]
PROFILE = "quick"
SEEDS = [0, 1, 2, 3, 4]
NUM_THREADS = 1

# %% [markdown]
# Sizes depend on the profile; the method does not. `smoke` only checks that the notebook runs (seconds,
# used by the tests: a tiny, under-trained model whose numbers mean nothing); `quick` is the committed run
# (a few minutes on a 2-core CPU; the last cell prints the run's time);
# `paper` uses more seeds, more visualization points and steps, more
# augmentations and a finer sparsity sweep.

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from spade_utils import toy
from spade_utils.plotting import (
    ToyPanel,
    save_figure,
    save_table,
    set_style,
    sweep_figure,
    toy_panels,
)
from spade_utils.toy_figures import logit_maps, training_points, unit_lines
from spade_utils.trace_steps import record_statistics, solve_layers, swapped_weights
from spade_utils.widgets import interact_or_draw

# %% [markdown]
# The profile's sizes, and the recipe every seed runs (printed: each field is a setting of the toy).

# %%
CONFIGS = {
    "smoke": dict(
        seeds=SEEDS[:1],
        held_out=[1000],
        recipe=dict(
            n_uniform=3000, n_small=600, epochs=3, fv_points=40, fv_steps=25, fv_n_noise=4, n_augment=64
        ),
        sweep=[0.0, 0.5, 0.9],
        solvers=["sparsegpt"],
    ),
    "quick": dict(
        seeds=SEEDS,
        held_out=list(range(1000, 1010)),
        recipe=dict(),
        sweep=[0.0, 0.3, 0.5, 0.7, 0.9, 0.99],
        solvers=["sparsegpt", "obc"],
    ),
    "paper": dict(
        seeds=list(range(10)),
        held_out=list(range(1000, 1030)),
        recipe=dict(fv_points=1000, fv_steps=300, n_augment=1024),
        sweep=[0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99],
        solvers=["sparsegpt", "obc"],
    ),
}
if PROFILE not in CONFIGS:
    raise ValueError(f"PROFILE must be one of {list(CONFIGS)}, got {PROFILE!r}")
CFG = CONFIGS[PROFILE]
if NUM_THREADS:
    torch.set_num_threads(NUM_THREADS)
set_style()
plt.rcParams["figure.dpi"] = 72  # inline copies small; saved figures keep the house resolution
RECIPE = toy.ToyRecipe().replace(**CFG["recipe"])
T0 = time.perf_counter()
RECIPE

# %% [markdown]
# ## 1 · The data and the network
#
# The training set is uniform over the square plus extra points around the small disc: the small disc is
# 1% of the square, and without the extra points a network can ignore it and still be 99% accurate. The
# network is a ReLU MLP with three hidden layers of `RECIPE.hidden` units (a fixed rescaling of the square to
# $[-1, 1]^2$ comes first), trained with Adam on binary cross-entropy. Its output neuron has **no bias**: a
# positive answer must be carried by active hidden units. (With a bias, a network can answer "positive"
# inside the large disc by switching every unit off and letting the bias speak; a trace taken there has
# nothing left to keep.) All settings are the fields of `RECIPE`, printed above.

# %%
X, y = toy.make_dataset(RECIPE.n_uniform, RECIPE.n_small, seed=CFG["seeds"][0])
fig = training_points(X, y, box=toy.BOX, regions=toy.REGIONS)
plt.show()

# %% [markdown]
# We train one model per seed (data, initialisation and batches all come from the seed) and run the whole
# experiment on each: the dense feature visualization and the two SPADE scenarios. `run_seed` returns the
# model's held-out accuracy, its recall inside each disc, and for each panel the share of the
# visualization points that lands in each disc.

# %%
rows, panel_points, models = [], {}, {}
for seed in CFG["seeds"]:
    row, pts, model = toy.run_seed(RECIPE, seed)
    rows.append(row)
    panel_points[seed], models[seed] = pts, model
per_seed = pd.DataFrame(rows)
print(f"{len(per_seed)} seeds in {time.perf_counter() - T0:.0f} s")

# %% [markdown]
# ### The neuron really is polysemantic
#
# Held-out accuracy (fresh uniform points) and recall inside each disc, per seed. The issue asks for at least
# 98% accuracy and 90% recall in the small disc.

# %%
per_seed[["seed", "accuracy", "recall_large", "recall_small"]].style.format(precision=3).hide(axis="index")

# %% [markdown]
# The logit over the whole square (colour on a symmetric log scale) shows the two regions the neuron
# responds to (first seed):

# %%
grid = torch.linspace(*toy.BOX, 181)
G = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)


def logit_map(net):
    with torch.no_grad():
        return toy.logit(net, G).reshape(181, 181).numpy()


seed0 = CFG["seeds"][0]
fig = logit_maps(
    {f"dense model, seed {seed0}\n(black line: decision boundary)": logit_map(models[seed0])},
    box=toy.BOX,
    regions=toy.REGIONS,
    boundary=True,
)
plt.show()

# %% [markdown]
# ## 2 · Feature visualization in 2-D, and why it misses the small disc
#
# The visualization starts from `fv_points` points spread uniformly over the square and climbs the logit.
# Like image feature visualization, it is made *robust to transformations*: the objective at a point is the
# logit averaged over random jitters of the point. The jitter's scale is annealed, wide at first (so every
# start feels the whole landscape and none is stranded on a flat stretch or a tiny bump) and narrow at the
# end (so the points settle on the maximum). The small disc is a small, narrow bump: under the wide jitter
# it is washed out by the low logits around it, while the large disc dominates. So the visualization of
# the dense neuron shows only the large region. That is a property of this robust procedure, not of every
# maximising method: plain gradient ascent without the jitter (the control below) leaves the starts that lie
# near the small disc on its bump, and the control's table says how many.
#
# ## 3 · SPADE on one sample
#
# A sample of interest, say the point $s=(1, 1)$ in the small disc, is augmented into `n_augment` jittered
# copies $s + \sigma\varepsilon$ with $\sigma$ = `RECIPE.aug_std`, comparable to the small disc's radius, so
# the copies cover the small disc and its rim. Each pruned layer (`RECIPE.layers`: the hidden-to-hidden
# layers and the output; the first layer sees only the two coordinates and is left dense) is replaced by a
# sparse layer that reproduces its outputs on those copies, with the exact OBS solver (`RECIPE.solver`) at
# `RECIPE.sparsity`. Hidden units that never fire on the copies
# lose their outgoing weights at once (they contribute nothing there), and the solver removes the weakest
# remaining connections while compensating with the others. What is left is the part of the network that
# computes the answer *for this sample*.
#
# Scenario 1 takes the sample at the centre of the large disc, scenario 2 at the centre of the small disc.
# The feature visualization is then run, unchanged, on the two pruned copies.

# %%
passing = per_seed.loc[per_seed["passes"], "seed"].tolist()
SHOW = passing[0] if passing else seed0
print(f"seeds meeting every target: {passing}; the figure below shows seed {SHOW}")


BG = toy.uniform_points(2000, seed=99)  # light background: negatives grey, positives blue
GEOMETRY = dict(regions=toy.REGIONS, box=toy.BOX, background=(BG, toy.labels(BG).bool()))


def three_panels(pts, seed):
    """The panels of one seed: dense, then the trace of each scenario with its sample."""
    return [ToyPanel(f"dense (seed {seed})", pts["dense"])] + [
        ToyPanel(f"SPADE, {name}", pts[name], sample=centre) for name, (centre, _) in toy.SCENARIOS.items()
    ]


fig = toy_panels([three_panels(panel_points[SHOW], SHOW)], size=4.0, **GEOMETRY)
save_figure(fig, "01_toy_three_panels", profile=PROFILE)
plt.show()

# %% [markdown]
# ### The steps, one cell each
#
# `toy.trace` is the engine's `spade_pruned_copy`, the function the ImageNet notebooks use. Here are its steps for
# scenario 2 of the seed shown, with the engine's public pieces (`spade_utils.trace_steps`): the panel above is
# what they produce.

# %%
centre, region = toy.SCENARIOS["scenario 2"]
sample = torch.tensor([centre])
net = models[SHOW]
augment = toy.make_jitter(RECIPE.aug_std)  # 1. augment: Gaussian copies s + sigma * eps of the sample
views = augment(sample, RECIPE.n_augment, torch.Generator().manual_seed(SHOW))
print(f"1. {len(views)} views of {centre}; share inside the small disc: {toy.share_in(views, 'small'):.2f}")

named = dict(net.named_modules())
layers = {name: named[name] for name in RECIPE.layers}
stats = record_statistics(  # 2. each pruned layer's statistics H = (2/n) X X^T on the views
    net, layers, sample, augment, RECIPE.n_augment, batch_size=RECIPE.n_augment, seed=SHOW, progress=False
)[RECIPE.n_augment]
print("2. H of " + ", ".join(f"{n} {tuple(h.shape)}" for n, h in stats.items()))

sparse, records = solve_layers(
    net, stats, RECIPE.sparsity, solver=RECIPE.solver
)  # 3. the layer-wise problems
display(records[["layer", "shape", "achieved_sparsity", "rel_error"]].round(4))

with swapped_weights(layers, sparse):  # 4. swap the sparse weights in (the dense ones return afterwards)
    steps_points = toy.visualize(net, RECIPE, SHOW)  # 5. visualize, unchanged
print(
    f"5. share of visualization points in the small disc: {toy.share_in(steps_points, region):.2f}; "
    f"identical to the panel above: {torch.equal(steps_points, panel_points[SHOW]['scenario 2'])}"
)

# %% [markdown]
# ### Every seed, the same recipe
#
# The share of the visualization points inside each disc, per panel and seed, against the targets:
# dense ≥ 90% in the large disc and ≤ 5% in the small one; scenario 1 ≥ 90% in the large disc; scenario 2
# ≥ 70% in the small disc. `passes` is true when the seed meets all of them (and the accuracy targets).

# %%
cols = [
    "seed",
    "accuracy",
    "recall_small",
    "dense_in_large",
    "dense_in_small",
    "s1_in_large",
    "s2_in_small",
    "passes",
]
save_table(per_seed, "01_toy_per_seed", profile=PROFILE)
print(f"{int(per_seed['passes'].sum())} of {len(per_seed)} seeds meet every target")
per_seed[cols].style.format(precision=3).hide(axis="index")

# %% [markdown]
# Why the annealed jitter matters: the same dense models visualized by plain gradient ascent (no jitter,
# same starts, same steps). Starts that happen to lie near the small disc climb its bump and stay there.

# %%
plain = RECIPE.replace(fv_noise=0.0)
no_jitter = pd.DataFrame(
    [
        {
            "seed": s,
            "dense_in_small, no jitter": toy.share_in(toy.visualize(models[s], plain, s), "small"),
            "dense_in_small, annealed jitter": per_seed.set_index("seed").loc[s, "dense_in_small"],
        }
        for s in CFG["seeds"]
    ]
)
no_jitter.style.format(precision=3).hide(axis="index")

# %%
fig = toy_panels([three_panels(panel_points[s], s) for s in CFG["seeds"]], size=3.0, **GEOMETRY)
save_figure(fig, "01_toy_all_seeds", profile=PROFILE)
plt.show()

# %% [markdown]
# ### Seeds this notebook never showed before
#
# The seeds above are the ones every earlier run of this notebook used, so the recipe may fit them by chance. An
# earlier run also looked at the next ten seeds, and changes to the recipe were tried on a separate set of tuning
# seeds (the cell prints both ranges); none of those changes met every target on enough tuning seeds to be adopted,
# so the recipe is the one above. Here the same recipe runs on fresh seeds (`CFG["held_out"]`) that nobody looked at
# while choosing it, with the targets each seed misses. For each trace the table also says whether the trace's own
# logit peaks inside the sample's region (`s2_peak_in_small`: the grid maximum of the scenario-2 trace, from
# `toy.logit_peak`); that separates a trace that lost the small disc from a visualization that missed it.

# %%
SEEN_BEFORE, TUNING = list(range(5, 15)), list(range(100, 130))  # looked at while the recipe was studied
print(
    f"recipe shown on seeds {CFG['seeds']}; seeds {SEEN_BEFORE[0]}-{SEEN_BEFORE[-1]} seen in an earlier run; "
    f"changes tried on tuning seeds {TUNING[0]}-{TUNING[-1]}; fresh seeds here: {CFG['held_out']}"
)
if set(CFG["held_out"]) & set(CFG["seeds"] + SEEN_BEFORE + TUNING):
    raise ValueError("CFG['held_out'] must not contain a seed the recipe was shown or tuned on")
held = pd.DataFrame([toy.run_seed(RECIPE, s)[0] for s in CFG["held_out"]])
held["unmet targets"] = [", ".join(toy.unmet_targets(r)) or "-" for r in held.to_dict("records")]
save_table(held, "01_toy_held_out_seeds", profile=PROFILE)
print(f"{int(held['passes'].sum())} of {len(held)} held-out seeds meet every target")
print("targets missed, and by how many held-out seeds:")
print(
    pd.Series([t for r in held["unmet targets"] if r != "-" for t in r.split(", ")])
    .value_counts()
    .to_string()
)
missed_s2 = held[held["s2_in_small"] < toy.TARGETS["s2_in_small"]]
if len(missed_s2):
    print(
        f"of the {len(missed_s2)} held-out seeds that miss s2_in_small, the scenario-2 trace's own logit still peaks "
        f"inside the small disc on {int(missed_s2['s2_peak_in_small'].sum())}; their visualization points end in "
        f"the large disc on average {missed_s2['s2_in_large'].mean():.0%} of the time and elsewhere in the square "
        f"{1 - missed_s2['s2_in_large'].mean() - missed_s2['s2_in_small'].mean():.0%}"
    )
held[["seed", *toy.TARGETS, "s2_in_large", "s2_peak_in_small", "unmet targets"]].style.format(
    precision=2
).hide(axis="index")

# %% [markdown]
# How to read the misses. `recall_small` means the network itself never learned the small disc (training put no
# unit there), so there is nothing specific for a trace to keep. `s1_in_large` means the large-disc trace lost part of
# its basin. `s2_in_small` is the common miss, and the `s2_peak_in_small` column says what kind it is: when it is true,
# the trace did its job (its highest logit in the whole square is in the small disc), but the visualization did not
# find that peak. The trace only has to agree with the network near its sample; elsewhere it keeps slopes of the
# hidden units it kept, and when one of them rises over a broad stretch (towards a corner, a ridge between the discs,
# or the large disc), the annealed jitter, which starts wide so that the dense visualization ignores narrow bumps,
# carries most starts up that broad rise instead of onto the narrow peak at the sample. It is the same property
# that hides the small disc in the dense panel, and it is why changing the sparsity, the solver, the augmentation
# width or the jitter schedule moved the misses between seeds rather than removing them on the tuning seeds. The
# count printed above is this recipe's honest success rate on seeds it was not chosen with.

# %% [markdown]
# ## 4 · How much to prune? A sparsity sweep, both solvers
#
# At sparsity 0 the "trace" is the dense model. As sparsity rises, the trace keeps less of what other inputs
# need. Below: for each scenario, the share of visualization points that land in the sample's own region,
# for SparseGPT (the fast, one-pass solver; the paper's FastSPADE) and exact OBS (`obc`), on seed `SHOW`.

# %%
sweep, sweep_points = toy.sparsity_sweep(
    models[SHOW], RECIPE, CFG["sweep"], CFG["solvers"], seed=SHOW, keep_points=True
)
save_table(sweep, "01_toy_sparsity_sweep", profile=PROFILE)
fig = sweep_figure(
    sweep,
    x="sparsity",
    y="share_in_region",
    hue="scenario",  # one colour per scenario, one line style per solver
    style="solver",
    hue_labels={name: f"{name} ({region} disc)" for name, (_, region) in toy.SCENARIOS.items()},
    xlabel="sparsity of the pruned layers (dotted: the recipe's)",
    ylabel="share of visualization points\nin the sample's region",
    ylim=(0, 1),
    reference=RECIPE.sparsity,
    title=f"sparsity sweep (seed {SHOW})",
)
save_figure(fig, "01_toy_sparsity_sweep", profile=PROFILE)
plt.show()
sweep.pivot_table(index="sparsity", columns=["scenario", "solver"], values="share_in_region").round(3)

# %% [markdown]
# ## 5 · Which hidden units survive?
#
# A unit survives a trace when it still has nonzero weights in and out. The table counts survivors per
# layer; the plots draw each first-layer unit as the line where it switches on, grey for the units a trace
# cut off and coloured for those it kept. The two traces keep different parts of the same network: the
# scenario-2 trace keeps the lines that carve out the small disc.

# %%
traces = {
    name: toy.trace(models[SHOW], torch.tensor([c]), RECIPE, seed=SHOW)
    for name, (c, _) in toy.SCENARIOS.items()
}
survivors = pd.concat(
    [toy.surviving_units(models[SHOW]).assign(model="dense")]
    + [toy.surviving_units(net).assign(model=name) for name, net in traces.items()]
)
counts = survivors.groupby(["model", "layer"])["alive"].sum().unstack("layer")
both = (
    (
        survivors[survivors.model == "scenario 1"].set_index(["layer", "unit"])["alive"]
        & survivors[survivors.model == "scenario 2"].set_index(["layer", "unit"])["alive"]
    )
    .groupby("layer")
    .sum()
)
counts.loc["kept by both scenarios"] = both
save_table(counts.reset_index(), "01_toy_surviving_units", profile=PROFILE)
counts

# %%
lines = toy.first_layer_lines(models[SHOW]).numpy()
nets = {"dense": models[SHOW], **traces}
fig = unit_lines(
    {
        name: (lines, toy.surviving_units(net).query("layer == 'fc1'")["alive"].to_numpy())
        for name, net in nets.items()
    },
    box=toy.BOX,
    regions=toy.REGIONS,
    markers={name: toy.SCENARIOS[name][0] for name in nets if name in toy.SCENARIOS},
)
save_figure(fig, "01_toy_surviving_units", profile=PROFILE)
plt.show()

# %% [markdown]
# The logit of each trace over the whole square shows what the visualization climbs. Each trace agrees with
# the dense model around its sample (that is all the solver was asked to do) and is free elsewhere.

# %%
fig = logit_maps(
    {f"logit: {name}": logit_map(net) for name, net in {"dense": models[SHOW], **traces}.items()},
    box=toy.BOX,
    regions=toy.REGIONS,
)
save_figure(fig, "01_toy_trace_logits", profile=PROFILE)
plt.show()

# %% [markdown]
# ## 6 · Try it: a slider over sparsity
#
# Run the notebook live to move the slider; it redraws the three panels from the sweep above (solver
# chosen in the dropdown). With no front end attached (papermill, `nbconvert --execute`, the tests) the cell
# draws the same figure once, at the swept sparsity closest to the recipe's: headless notebook clients can
# hang on widget messages, so `interact_or_draw` only creates widgets when a front end will show them.

# %%
SWEEP = [float(s) for s in CFG["sweep"]]
START = min(SWEEP, key=lambda v: abs(v - RECIPE.sparsity))  # the swept sparsity closest to the recipe's


def show_sparsity(sparsity=START, solver=CFG["solvers"][-1]):
    pts = {"dense": panel_points[SHOW]["dense"]}
    for name in toy.SCENARIOS:
        pts[name] = sweep_points[(solver, name, sparsity)]
    fig = toy_panels([three_panels(pts, SHOW)], size=4.0, **GEOMETRY)
    fig.suptitle(f"sparsity {sparsity:.2f}, {solver}")
    plt.show()


view = interact_or_draw(show_sparsity, sparsity=SWEEP, solver=CFG["solvers"])

# %% [markdown]
# ## What this shows, and what it does not
#
# * A single output neuron can serve two unrelated regions, and feature visualization of that neuron shows
#   only the dominant one.
# * A SPADE trace for a sample keeps the part of the network that computes the answer for that sample; the
#   same visualization run on the trace shows the region the sample belongs to, for most seeds (the per-seed
#   table above says which ones, with every number).
# * The toy needs care, and that is a finding rather than a footnote. With a bias on the output neuron, a
#   network can represent the inside of the large disc as "every unit off", and the trace of a point there
#   is a constant. Without the annealed jitter, starts near the small disc stay there in the dense panel (the
#   table just above the all-seeds figure). The augmentation scale is a trade-off: too small, and the trace of
#   a point deep inside the large disc sees only a flat plateau; too large, and the trace of the small-disc
#   point also copies the slope that leads towards the large disc.
# * When scenario 2 fails, it is usually the visualization, not the trace, that fails: the trace's own logit still
#   peaks in the small disc (the held-out table's `s2_peak_in_small`), but the trace also keeps a broad rise elsewhere
#   (towards the large disc, a ridge or a corner of the square: the all-seeds figure shows where each seed ends), and
#   the wide-then-narrow jitter climbs the broad rise. Whether such a rise survives depends on how a seed's training
#   shared hidden units between the two regions, not on the solver; the `paper` profile runs more seeds of the same
#   recipe.

# %%
print(f"total time: {time.perf_counter() - T0:.0f} s ({PROFILE} profile)")

# %% [markdown]
# ## Summary and questions
#
# *Summary.* A class unit that two regions drive is visualized as whichever region the optimisation finds first; a
# trace built on views of one sample keeps the connections that sample uses, so the same visualization run on the trace
# can land on the sample's own region. The per-seed tables above say on how many seeds that happened here.
#
# *Questions.*
# 1. Why does the dense visualization favour one disc? What would make it favour the other?
# 2. The augmentation is Gaussian jitter of a fixed width. What should happen to the trace if the width were much
#    smaller than the small disc, or much larger than the square?
# 3. Why prune per sample instead of once for the whole dataset? What would a single global sparse network show?
# 4. Pick a seed on which the trace fails. What do its hidden units do differently from a seed that succeeds?
