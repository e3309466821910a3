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
# # Exercises for notebook 02 · pruning solvers from scratch
#
# You build the two ideas behind SPADE's solvers: **magnitude pruning** (the baseline that looks at the weights
# alone) and the **Optimal Brain Surgeon** step (which looks at the layer's input statistics H and compensates the
# remaining weights), then the inverse-Hessian update that lets OBS run again. Greedy OBS is those two pieces in a
# loop; the last cell compares your loop with the true optimum found by trying every mask. About 10 minutes each.
#
# Fill in each `raise NotImplementedError` and run the check below it; a failing check names the likely mistake.
# The derivations and the engine's code are in notebook [02](../notebooks/02_pruning_solvers.ipynb), section 1,
# "The layer-wise problem"; model solutions are in [`solutions.py`](solutions.py).

# %%
import importlib

import torch

from spade_utils import exercises
from spade_utils.bruteforce import best_loss_per_count

# %% tags=["parameters"]
SOLUTIONS = False  # True loads the model solutions (the tests run the notebook that way)

# %%
solutions = importlib.import_module("solutions") if SOLUTIONS else None

# %% [markdown]
# ## Task 1 · Magnitude pruning
#
# Zero exactly `k = round(sparsity * W.numel())` weights, those with the smallest `|w|` over the **whole** matrix
# (not row by row), and keep the others unchanged. Return a new tensor; leave `W` as it is.
#
# *Hints.* `W.abs().reshape(-1).argsort()[:k]` are the flat indices to zero; `out.reshape(-1)[idx] = 0` writes
# through a view of a clone. Mind `round` versus `int` (which truncates), and ties: a threshold such as
# `|w| <= t` zeroes every weight tied with the k-th smallest.


# %%
def magnitude_prune(W: torch.Tensor, sparsity: float) -> torch.Tensor:
    """(rows, cols) weights -> a copy with round(sparsity * numel) smallest-|w| entries set to 0."""
    raise NotImplementedError("Task 1: zero the k smallest |w|, k = round(sparsity * W.numel())")


# %%
if SOLUTIONS:
    magnitude_prune = solutions.magnitude_prune
exercises.check_magnitude_prune(magnitude_prune)
print("Task 1 (magnitude_prune): passed")

# %% [markdown]
# ## Task 2 · One Optimal-Brain-Surgeon step
#
# For one row `w` (length d) of a layer with statistics H, removing weight `j` and refitting the others optimally
# costs `w_j^2 / (2 [H^-1]_jj)` (Hassibi & Stork 1993). One OBS step:
#
# 1. among the entries not yet pruned (`pruned[j]` False), choose `j` with the smallest `w_j^2 / [H^-1]_jj`;
# 2. compensate: `w_new = w - (w_j / [H^-1]_jj) * H_inv[:, j]`, then set `w_new[j] = 0` exactly (rounding leaves
#    about 1e-17) and keep the already-pruned entries at 0;
# 3. return `(j, w_new, loss_increase)` with `loss_increase = w_j^2 / (2 [H^-1]_jj)` as a float.
#
# `H_inv` is the inverse of H restricted to the unpruned inputs (its rows and columns at pruned inputs are zero).
#
# *Hints.* `torch.diagonal(H_inv)`; give pruned entries the score `inf` with `torch.where` before `argmin`. Do not
# modify `w` in place: `w - ...` makes a new tensor.


# %%
def obs_step(w: torch.Tensor, H_inv: torch.Tensor, pruned: torch.Tensor) -> tuple[int, torch.Tensor, float]:
    """(d,), (d, d), (d,) bool -> (j, w_new (d,), loss increase)."""
    raise NotImplementedError(
        "Task 2: score w**2 / diag(H_inv) over the unpruned, remove the best, compensate"
    )


# %%
if SOLUTIONS:
    obs_step = solutions.obs_step
exercises.check_obs_step(obs_step)
print("Task 2 (obs_step): passed")

# %% [markdown]
# ## Task 3 · Removing an input from H^-1
#
# After weight j is gone, the next step needs the inverse of H *without* row and column j. It comes from the
# current inverse in one rank-one update (Optimal Brain Compression, Frantar et al. 2022, Eq. 4):
#
# $$H^{-1}_{\text{new}} = H^{-1} - \frac{H^{-1}_{:,j}\, H^{-1}_{j,:}}{[H^{-1}]_{jj}}.$$
#
# Row and column j of the result are zero, and the rest equals `inv(H)` with row and column j deleted. Keep the
# shape d x d.
#
# *Hints.* `torch.outer(a, b)` is `a b^T`.


# %%
def hinv_downdate(H_inv: torch.Tensor, j: int) -> torch.Tensor:
    """(d, d) inverse Hessian -> (d, d) inverse Hessian without input j."""
    raise NotImplementedError("Task 3: subtract the outer product of column j and row j, over [H_inv]_jj")


# %%
if SOLUTIONS:
    hinv_downdate = solutions.hinv_downdate
exercises.check_hinv_downdate(hinv_downdate)
print("Task 3 (hinv_downdate): passed")

# %% [markdown]
# **See it: greedy OBS against the optimum.** Your two functions in a loop prune one row of 8 weights, one weight
# at a time. For each number of zeros, the brute force (`spade_utils.bruteforce`) tries every mask with optimal
# refitting. One removal is always optimal; later, greedy choices can cost a little more than the best mask.

# %%
g = torch.Generator().manual_seed(0)
X = (
    torch.randn(8, 40, generator=g, dtype=torch.float64)
    * torch.linspace(0.3, 2.0, 8, dtype=torch.float64)[:, None]
)
H = 2 / X.shape[1] * X @ X.T
w0 = torch.randn(8, generator=g, dtype=torch.float64)
best = best_loss_per_count(w0, H)
w, H_inv, pruned, total = w0, torch.linalg.inv(H), torch.zeros(8, dtype=torch.bool), 0.0
w_magnitude = w0.clone()
print("zeros  greedy OBS   optimum   magnitude (no refit)")
for count in range(1, 8):
    j, w, increase = obs_step(w, H_inv, pruned)
    H_inv, total = hinv_downdate(H_inv, j), total + increase
    pruned[j] = True
    dw = w0 - magnitude_prune(w0.unsqueeze(0), count / 8)[0]
    print(f"{count:5d}  {total:10.4f}  {float(best[count]):8.4f}   {float(dw @ H @ dw) / 2:10.4f}")
