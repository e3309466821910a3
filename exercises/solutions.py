"""Model solutions of the exercises in this folder, one function per exercise (the names of
``spade_utils.exercises.CHECKS``). The exercise notebooks load them when run with ``SOLUTIONS = True``
(that is how the tests run them); the regular notebooks in ``notebooks/`` show the same steps through the
library. Try the exercises before reading this file.
"""

import torch
from sklearn.metrics import roc_auc_score


# ---- notebook 01 ------------------------------------------------------------------------------------
def jitter(sample, n, std, generator):
    """n Gaussian views of one 2-D point: sample + std * z, z ~ N(0, I), drawn from `generator`."""
    return sample + std * torch.randn(n, 2, generator=generator, dtype=sample.dtype)


def gram(x):
    """H = (2/n) sum over all leading positions of x x^T: (..., d) -> (d, d)."""
    X = x.reshape(-1, x.shape[-1])
    return 2.0 / X.shape[0] * X.T @ X


def reconstruction_loss(W, W_sparse, H):
    """tr(dW H dW^T) / 2 with dW = W - W_sparse: the mean over the inputs of ||(W - W') x||^2."""
    dW = W - W_sparse
    return float(torch.trace(dW @ H @ dW.T) / 2)


# ---- notebook 02 ------------------------------------------------------------------------------------
def magnitude_prune(W, sparsity):
    """Zero the round(sparsity * numel) weights of smallest |w| over the whole matrix."""
    k = round(sparsity * W.numel())
    out = W.clone()
    idx = W.abs().reshape(-1).argsort()[:k]
    out.reshape(-1)[idx] = 0.0
    return out


def obs_step(w, H_inv, pruned):
    """One OBS removal: the unpruned j with least w_j^2 / [H^-1]_jj, the compensated w, the loss increase."""
    d = torch.diagonal(H_inv)
    score = torch.where(pruned, torch.full_like(w, float("inf")), w**2 / d)
    j = int(score.argmin())
    w_new = w - w[j] / d[j] * H_inv[:, j]
    w_new[j] = 0.0
    w_new[pruned] = 0.0
    return j, w_new, float(w[j] ** 2 / (2 * d[j]))


def hinv_downdate(H_inv, j):
    """Remove input j from the inverse Hessian: H_inv - H_inv[:, j] H_inv[j, :] / [H_inv]_jj."""
    return H_inv - torch.outer(H_inv[:, j], H_inv[j, :]) / H_inv[j, j]


# ---- notebook 04 ------------------------------------------------------------------------------------
def trojan_auc(saliency, mask):
    """Pixel ROC-AUC of the map against the trigger mask (ties count one half)."""
    return float(roc_auc_score(mask.reshape(-1).numpy(), saliency.reshape(-1).numpy()))


def pointing_game(saliency, mask):
    """Share of the map's maximal pixels that lie on the trigger (1 or 0 when the maximum is unique)."""
    top = saliency == saliency.max()
    return int((top & mask).sum()) / int(top.sum())


def best_trojan_auc(saliency, mask):
    """The paper's Trojan AUC: the larger of the AUCs of the map and of its magnitude."""
    return max(trojan_auc(saliency, mask), trojan_auc(saliency.abs(), mask))
