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
# # 07 · The human study (the paper's Table 3), for a class to run
#
# **Participants:** the form below shows a picture a network "imagines" for one of its output neurons (a *feature
# visualization*) and two patches of a photo. Click the patch the picture shows (left or right), or *undecided*.
# Your answers are saved as you click.
#
# *For the teacher.* The SPADE paper asked people which of two image patches a neuron's visualization points to,
# once with visualizations of the dense network and once with visualizations of the photo's SPADE trace, and scored
# the answers against a reference attribution, Score-CAM: *agree* (the patch Score-CAM favours), *disagree*, or
# *undecided* (Table 3). This notebook is that study as a kit:
#
# 1. it builds the trials from the shipped photos (`make figures NB=07` writes them to `results/study/trials/`);
# 2. `make study` serves the form as a web page (Voilà, no code shown; `HOST=0.0.0.0` to let a class network
#    reach it); every click appends one line to `results/study/responses.csv`;
# 3. rerun this notebook to turn the answers into the Table-3 rows with bootstrap intervals; a dry run with
#    simulated participants shows the pipeline before anyone answers. Terms: [glossary](../GLOSSARY.md).

# %% tags=["parameters"]
PROFILE = "quick"  # sizes: smoke | quick | paper
SOURCE = "offline"  # the trials always use the offline network (EfficientNet-Lite0) and the shipped photos
SEED = 0
THREADS = None  # CPU threads for torch (None: torch's default)

# %%
import os

# a Voilà server cannot pass notebook parameters: `make study PROFILE=smoke` sets this variable instead
PROFILE = os.environ.get("SPADE_PAGE_PROFILE", PROFILE)
SIZES = {
    "smoke": dict(
        photos=["chelsea", "coffee"],
        n_augment=4,
        solver="magnitude",
        layers=["_fc"],
        vis_steps=2,
        vis_size=64,
        cam_channels=8,
        simulated=5,
        n_boot=200,
    ),
    "quick": dict(
        photos=["chelsea", "coffee", "rocket", "astronaut", "grace_hopper", "china"],
        n_augment=32,
        solver="sparsegpt",
        layers=["_conv_head", "_fc"],
        vis_steps=48,
        vis_size=128,
        cam_channels=128,
        simulated=20,
        n_boot=2000,
    ),
    "paper": dict(
        photos=["chelsea", "coffee", "rocket", "astronaut", "grace_hopper", "china", "flower", "motorcycle"],
        n_augment=256,
        solver="sparsegpt",
        layers=["_blocks.13.*", "_blocks.14.*", "_blocks.15.*", "_conv_head", "_fc"],
        vis_steps=256,
        vis_size=224,
        cam_channels=None,  # Score-CAM over every channel, as the paper defines it
        simulated=20,
        n_boot=5000,
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
import torch
from IPython.display import display

from spade_utils import human_study as hs
from spade_utils.explorer import serving_page
from spade_utils.plotting import results_dir, save_figure, save_table, set_style

set_style()
T0 = time.perf_counter()
STUDY = results_dir(PROFILE) / "study"
TRIALS, RESPONSES = STUDY / "trials", STUDY / "responses.csv"
SERVING = serving_page()  # the participants' page: only the form runs

# %% [markdown]
# ## The form

# %%
if SERVING:
    if (TRIALS / "trials.csv").is_file():
        display(hs.study_form(hs.load_trials(TRIALS), RESPONSES))
    else:
        print("No trials yet: the teacher runs `make figures NB=07` first, then reloads this page.")
else:
    print("The form is served by `make study`; below, the trials are built and the answers analysed.")

# %% [markdown]
# ## 1 · The trials
#
# For each photo: the dense network's top-1 class is the neuron. Score-CAM of that class on the dense network is the
# reference: the photo is cut into a 3 × 3 grid and the cells with the highest and the lowest mean Score-CAM become
# the two patches (which one goes left is drawn at random). The neuron is visualized twice: on the dense network and
# on the photo's SPADE trace (same seed), so each photo gives one dense and one SPADE trial.

# %%
if not SERVING:
    from spade_utils.data import denormalize, preprocess, sample_image
    from spade_utils.featvis import visualize
    from spade_utils.models import load_model
    from spade_utils.spade import spade_pruned_copy

    model = load_model("efficientnet_lite0")
    TRACE = dict(
        layers=cfg["layers"],
        sparsity=0.9,
        n_augment=cfg["n_augment"],
        solver=cfg["solver"],
        skip_depthwise=True,
        batch_size=32,
        seed=SEED,
        progress=False,
    )

# %% [markdown]
# Per photo: the dense class, the Score-CAM reference, the photo's trace, and the neuron visualized on both networks.

# %%
if not SERVING:
    photos, references, targets, visualizations, seconds = {}, {}, {}, {}, {}
    for name in cfg["photos"]:
        t = time.perf_counter()
        x = preprocess(sample_image(name))
        with torch.no_grad():
            targets[name] = int(model(x).argmax())
        photos[name] = denormalize(x)[0].clamp(0, 1)
        references[name] = hs.score_cam(model, x, targets[name], channels=cfg["cam_channels"])
        pruned = spade_pruned_copy(model, sample_image(name), **TRACE)
        for condition, net in (("dense", model), ("SPADE", pruned)):
            visualizations[name, condition] = visualize(
                net, targets[name], steps=cfg["vis_steps"], size=cfg["vis_size"], seed=SEED, progress=False
            )[0]
        seconds[name] = time.perf_counter() - t

# %%
if not SERVING:
    trials = hs.make_trials(photos, references, visualizations, targets, seed=SEED)
    hs.save_trials(TRIALS, trials)
    print(
        f"{len(trials)} trials from {len(photos)} photos, {sum(seconds.values()) / len(photos):.0f} s per photo "
        f"(Score-CAM over {cfg['cam_channels'] or 'all'} channels, a trace, two visualizations)"
    )

# %% [markdown]
# What a participant sees, one row per trial, and (last column, never shown to them) the side Score-CAM favours:

# %%
if not SERVING:
    from spade_utils.data import imagenet_classes
    from spade_utils.study_figures import trials_figure

    fig = trials_figure(trials, photos, references, imagenet_classes())
    with plt.rc_context({"savefig.dpi": 60}):  # photos and visualizations compress badly: keep the file small
        save_figure(fig, "07_trials", profile=PROFILE)
    fig.set_dpi(60)
    plt.show()

# %% [markdown]
# ## 2 · A dry run: simulated participants
#
# Before a class answers, simulated participants check the pipeline: form rows -> CSV -> table. Each one cannot see
# the visualizations; they read the Score-CAM value of each patch through Gaussian noise and answer *undecided*
# when the two look alike (`human_study.simulated_answers`). So their dense and SPADE rows should agree, and the
# shares should match the exact expectation printed beside them; a real class's difference between the rows is
# what the study measures.

# %%
if not SERVING:
    NOISE, MARGIN = {"dense": 0.3, "SPADE": 0.3}, 0.1
    simulated_csv = STUDY / "simulated_responses.csv"
    simulated_csv.unlink(missing_ok=True)
    for p in range(cfg["simulated"]):
        answers = hs.simulated_answers(trials, noise=NOISE, margin=MARGIN, seed=SEED * 1000 + p)
        for t, answer in zip(trials, answers, strict=True):
            hs.append_response(simulated_csv, f"simulated-{p:02d}", t, answer, 0.0)
    simulated = hs.table3(hs.read_responses(simulated_csv), n_boot=cfg["n_boot"], seed=SEED)
    save_table(simulated, "07_table3_simulated", profile=PROFILE)
    expected = hs.expected_outcomes(trials, noise=NOISE, margin=MARGIN).set_index("condition")
    shown = hs.format_table3(simulated)
    for name in hs.OUTCOMES:
        shown[f"{name} expected"] = [f"{100 * expected.loc[c, name]:.0f}%" for c in simulated.condition]
    display(shown)

# %% [markdown]
# How far the simulated shares land from their expectation, and the paired difference (expected 0).

# %%
if not SERVING:
    worst = max(
        abs(simulated.set_index("condition").loc[c, n] - expected.loc[c, n])
        for c in simulated.condition
        for n in hs.OUTCOMES
    )
    diff, low, high, pairs = hs.agreement_difference(
        hs.read_responses(simulated_csv), n_boot=cfg["n_boot"], seed=SEED
    )
    print(
        f"{cfg['simulated']} simulated participants x {len(trials)} trials: every share within "
        f"{100 * worst:.1f} points of its expectation; SPADE - dense agreement {100 * diff:+.1f} "
        f"[{100 * low:+.1f}, {100 * high:+.1f}] points over {pairs} pairs (expected 0: they do not see the pictures)"
    )

# %% [markdown]
# ## 3 · Your class's answers: the Table-3 rows
#
# Each row: the share of answers that were undecided, agreed with Score-CAM, or disagreed, with a 95% bootstrap
# interval that resamples participants, then their answers (one person's answers are not independent). The paper's
# claim to test: SPADE visualizations are matched to the reference patch more often than dense ones; the paired
# difference (the same person on the same photo, dense vs SPADE) says whether this class's answers support it.

# %%
if not SERVING:
    if RESPONSES.is_file():
        answers = hs.read_responses(RESPONSES)
        table = hs.table3(answers, n_boot=cfg["n_boot"], seed=SEED)
        save_table(table, "07_table3_class", profile=PROFILE)
        display(hs.format_table3(table))
        rows = table.set_index("condition")
        if {"dense", "SPADE"} <= set(rows.index):
            print(
                f"agreement with Score-CAM: SPADE {100 * rows.loc['SPADE', 'agree']:.0f}% vs dense "
                f"{100 * rows.loc['dense', 'agree']:.0f}% ({answers.participant.nunique()} participants)"
            )
            diff, low, high, pairs = hs.agreement_difference(answers, n_boot=cfg["n_boot"], seed=SEED)
            verdict = (
                "SPADE higher: supports the paper's claim"
                if low > 0
                else "dense higher: against the paper's claim"
                if high < 0
                else "the interval includes 0: this class cannot tell them apart"
            )
            print(
                f"paired on the same photo and person: SPADE - dense {100 * diff:+.1f} [{100 * low:+.1f}, "
                f"{100 * high:+.1f}] points ({pairs} pairs); {verdict}"
            )
    else:
        print(
            "No answers yet: serve the form with `make study` and let the class answer, then rerun this notebook."
        )

# %%
if not SERVING:
    print(f"profile {PROFILE}: notebook ran in {time.perf_counter() - T0:.0f} s")

# %% [markdown]
# ## Questions
#
# 1. Score-CAM decides which patch is "correct". What would change if the reference were another attribution
#    (Grad-CAM, Integrated Gradients)? Which choice would favour SPADE unfairly?
# 2. Why resample participants rather than single answers for the intervals?
# 3. The simulated participants never look at the visualizations. Which of their results would change if they did,
#    and how would you simulate that?
# 4. How many participants would you need to detect a 10-point difference in agreement between the two rows?
