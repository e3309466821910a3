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
# # Exercises for notebook 04 · scoring a saliency map against a backdoor trigger
#
# Notebook 04 asks whether saliency maps of a backdoored network point at the trigger, and whether SPADE makes them
# point better. It needs a score for one map and the trigger's pixel mask. You write the three scores it uses
# (about 10 minutes each): the **Trojan AUC**, the **pointing game**, and the paper's **best-of-signs** Trojan AUC.
# No network is needed here: the maps are small synthetic arrays.
#
# Fill in each `raise NotImplementedError` and run the check below it; a failing check names the likely mistake.
# The scores in use are in notebook [04](../notebooks/04_backdoor_saliency.ipynb), section 3 and "Pointing
# game"; model solutions are in [`solutions.py`](solutions.py).

# %%
import importlib

import torch

from spade_utils import exercises, metrics

# %% tags=["parameters"]
SOLUTIONS = False  # True loads the model solutions (the tests run the notebook that way)

# %%
solutions = importlib.import_module("solutions") if SOLUTIONS else None

# %% [markdown]
# ## Task 1 · Trojan AUC
#
# Treat every pixel as a sample: trigger pixels (`mask` True) are the positives, the map's value is the score. The
# Trojan AUC is the ROC-AUC: the probability that a random trigger pixel scores higher than a random other pixel,
# a **tie counting one half**. A map equal to the mask scores 1, a constant map 0.5.
#
# *Hints.* `sklearn.metrics.roc_auc_score(mask.reshape(-1).numpy(), saliency.reshape(-1).numpy())` does it; or
# compare every (trigger, background) pair by broadcasting: `a = s[mask][:, None]`, `b = s[~mask][None, :]`.


# %%
def trojan_auc(saliency: torch.Tensor, mask: torch.Tensor) -> float:
    """(H, W) map, (H, W) bool trigger mask -> pixel ROC-AUC (ties count one half)."""
    raise NotImplementedError("Task 1: the ROC-AUC of the pixels' scores with the mask as labels")


# %%
if SOLUTIONS:
    trojan_auc = solutions.trojan_auc
exercises.check_trojan_auc(trojan_auc)
print("Task 1 (trojan_auc): passed")

# %% [markdown]
# ## Task 2 · The pointing game
#
# A cruder score: does the map's highest pixel lie on the trigger? 1 if yes, 0 if no. When several pixels share
# the maximum, score the share of them that lie on the trigger (so a constant map scores the trigger's area share,
# not a lucky first pixel).
#
# *Hints.* `top = saliency == saliency.max()`; count `top & mask` against `top`.


# %%
def pointing_game(saliency: torch.Tensor, mask: torch.Tensor) -> float:
    """(H, W) map, (H, W) bool trigger mask -> share of the maximal pixels on the trigger."""
    raise NotImplementedError("Task 2: the share of the map's maximal pixels that lie on the mask")


# %%
if SOLUTIONS:
    pointing_game = solutions.pointing_game
exercises.check_pointing_game(pointing_game)
print("Task 2 (pointing_game): passed")

# %% [markdown]
# ## Task 3 · The paper's Trojan AUC: signed or magnitude
#
# Some saliency methods mark what matters with large *negative* values. The SPADE paper (§5.2) therefore scores a
# map by the better of two AUCs: of the map itself and of its magnitude `|saliency|`.
#
# *Hints.* Reuse your `trojan_auc`. The alternative to the signed map is its magnitude, not its negation.


# %%
def best_trojan_auc(saliency: torch.Tensor, mask: torch.Tensor) -> float:
    """(H, W) map, (H, W) bool mask -> max(AUC(saliency), AUC(|saliency|))."""
    raise NotImplementedError("Task 3: the larger of the AUCs of the map and of its magnitude")


# %%
if SOLUTIONS:
    best_trojan_auc = solutions.best_trojan_auc
exercises.check_best_trojan_auc(best_trojan_auc)
print("Task 3 (best_trojan_auc): passed")

# %% [markdown]
# **See it.** A synthetic 32 x 32 "saliency map": noise, plus a response of growing strength on a 6 x 6 trigger in
# the corner, negative as some methods give it. The signed AUC falls below 0.5 as the response grows, the magnitude's
# rises towards 1, and the pointing game needs a strong response; the library's `metrics.trojan_auc` agrees with
# yours.

# %%
g = torch.Generator().manual_seed(0)
mask = torch.zeros(32, 32, dtype=torch.bool)
mask[24:30, 24:30] = True
noise = torch.randn(32, 32, generator=g)
print("strength  signed AUC  best AUC  pointing  library best")
for strength in (0.0, 0.5, 1.0, 2.0, 4.0):
    s = noise - strength * mask
    print(
        f"{strength:8.1f}  {trojan_auc(s, mask):10.3f}  {best_trojan_auc(s, mask):8.3f}  "
        f"{pointing_game(s.abs(), mask):8.2f}  {metrics.trojan_auc(s, mask):11.3f}"
    )
