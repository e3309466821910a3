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
# # Exercises for notebook 01 · the three steps of a SPADE trace, on the 2-D toy
#
# A SPADE trace of one sample takes three steps: **augment** the sample into many views, **record** each layer's
# input statistics on those views, and **prune** each layer so that it keeps computing the same outputs on them,
# measured by the layer-wise loss. You write each step as a small function (about 10 minutes each).
#
# How to work: fill in each function where it says `raise NotImplementedError`, then run the cell below it. The
# check runs your function on fixed and random cases against the library's implementation and, when something
# is off, names the likely mistake. The worked version of each step is notebook
# [01](../notebooks/01_toy_polysemantic_2d.ipynb) (section 3, "SPADE on one sample"), which calls the library;
# model solutions are in [`solutions.py`](solutions.py) (try first).

# %%
import importlib

import torch

from spade_utils import exercises, toy
from spade_utils.hessian import HessianRecorder

# %% tags=["parameters"]
SOLUTIONS = False  # True loads the model solutions (the tests run the notebook that way)

# %%
solutions = importlib.import_module("solutions") if SOLUTIONS else None

# %% [markdown]
# ## Task 1 · Augment: Gaussian views of one point
#
# The toy's augmentation makes `n` noisy copies of a 2-D `sample`: `sample + std * z`, with `z` standard normal,
# one independent value per view and per coordinate. Draw the noise from the `generator` you are given, so that a
# seeded generator always gives the same views.
#
# *Hints.* `torch.randn(n, 2, generator=generator)` draws the noise; broadcasting adds a shape-(2,) sample to
# every row of an (n, 2) tensor. `std` is a standard deviation, not a variance.


# %%
def jitter(sample: torch.Tensor, n: int, std: float, generator: torch.Generator) -> torch.Tensor:
    """(2,) sample -> (n, 2) views."""
    raise NotImplementedError("Task 1: return sample + std * (standard normal noise of shape (n, 2))")


# %%
if SOLUTIONS:
    jitter = solutions.jitter
exercises.check_jitter(jitter)
print("Task 1 (jitter): passed")

# %% [markdown]
# ## Task 2 · Record: the layer-input statistics H
#
# Every pruned layer sees input vectors `x` of length `d` (for a Linear layer: the last dimension of its input,
# whatever the leading dimensions are). SPADE's solvers need their statistics
#
# $$H = \frac{2}{n} \sum_{\text{positions}} x\, x^\top \qquad (d \times d),$$
#
# where `n` is the number of vectors, i.e. the product of *all* leading dimensions. The factor 2 makes H the
# Hessian of the mean squared output error, the quantity the pruning keeps small.
#
# *Hints.* Flatten first: `X = x.reshape(-1, d)` has one vector per row, so the sum of outer products is
# `X.T @ X`. Do not subtract the mean: H is a second moment, not a covariance.


# %%
def gram(x: torch.Tensor) -> torch.Tensor:
    """(..., d) layer inputs -> (d, d) statistics H = (2/n) sum x x^T."""
    raise NotImplementedError("Task 2: flatten the leading dims, then (2/n) X^T X")


# %%
if SOLUTIONS:
    gram = solutions.gram
exercises.check_gram(gram)
print("Task 2 (gram): passed")

# %% [markdown]
# **See it.** Your two functions make a trace's statistics: jitter one toy point, run the views through a toy
# network, and compare your H of the second layer's inputs with the one the library's recorder accumulates.

# %%
model = toy.make_mlp(hidden=(8, 8), seed=0)
views = jitter(torch.tensor([0.5, -1.0]), 256, 0.5, torch.Generator().manual_seed(0))
captured = {}
hook = model.fc2.register_forward_hook(lambda module, inputs, output: captured.update(x=inputs[0].detach()))
with torch.no_grad(), HessianRecorder({"fc2": model.fc2}) as recorder:
    model(views)
hook.remove()
H_yours, H_library = gram(captured["x"]), recorder.hessians()["fc2"]
print(
    f"H of fc2's inputs: {tuple(H_yours.shape)}, largest difference from the recorder's: "
    f"{float((H_yours - H_library).abs().max()):.2e}"
)

# %% [markdown]
# ## Task 3 · Prune: the layer-wise loss
#
# A layer with weights `W` (rows x d) is replaced by a sparse `W_sparse`. How much does its output change on the
# recorded inputs? With `dW = W - W_sparse` and H from task 2, the mean over the inputs of `||dW x||^2` is
#
# $$\mathcal{L} = \tfrac12\, \operatorname{tr}\!\left(dW\, H\, dW^\top\right).$$
#
# This is the loss every solver of notebook 02 minimises. Return it as a Python float.
#
# *Hints.* `torch.trace(dW @ H @ dW.T)`; or, without forming the rows x rows matrix, `((dW @ H) * dW).sum()`. The
# 1/2 cancels the 2 in H.


# %%
def reconstruction_loss(W: torch.Tensor, W_sparse: torch.Tensor, H: torch.Tensor) -> float:
    """(rows, d), (rows, d), (d, d) -> tr(dW H dW^T) / 2."""
    raise NotImplementedError("Task 3: dW = W - W_sparse; return tr(dW H dW^T) / 2 as a float")


# %%
if SOLUTIONS:
    reconstruction_loss = solutions.reconstruction_loss
exercises.check_reconstruction_loss(reconstruction_loss)
print("Task 3 (reconstruction_loss): passed")

# %% [markdown]
# **See it.** The loss is the mean squared change of the layer's output on the views: prune half of fc2's
# weights by magnitude and compare your loss with the change measured by running the layer.

# %%
W = model.fc2.weight.detach()
W_half = torch.where(W.abs() >= W.abs().median(), W, torch.zeros_like(W))
x = captured["x"]
measured = float(((x @ (W - W_half).T) ** 2).sum(dim=1).mean())
print(f"loss from H: {reconstruction_loss(W, W_half, H_library):.6f}   measured on the views: {measured:.6f}")
