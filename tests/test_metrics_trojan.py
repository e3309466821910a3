"""Trojan AUC, pointing game and bootstrap intervals on maps where the answer is known."""

import numpy as np
import pytest
import torch

from spade_utils.intervals import bootstrap_ci
from spade_utils.metrics import channel_sum, pointing_game, trojan_auc


def _mask(h=32, w=32, box=(5, 15, 8, 20)):
    m = np.zeros((h, w), bool)
    m[box[0] : box[1], box[2] : box[3]] = True
    return m


def test_map_equal_to_mask_scores_one_and_its_negative_zero_when_signed():
    m = _mask()
    assert trojan_auc(m.astype(float), m) == pytest.approx(1.0)
    assert trojan_auc(-m.astype(float), m, mode="signed") == pytest.approx(0.0)
    # the paper takes the better of signed and absolute: the negative map is perfect in magnitude
    assert trojan_auc(-m.astype(float), m, mode="absolute") == pytest.approx(1.0)
    assert trojan_auc(-m.astype(float), m) == pytest.approx(1.0)


def test_constant_and_random_maps_score_one_half():
    m = _mask()
    assert trojan_auc(np.full(m.shape, 3.0), m) == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    aucs = trojan_auc(rng.normal(size=(200, *m.shape)), m, mode="signed")
    assert aucs.shape == (200,)
    assert abs(aucs.mean() - 0.5) < 0.01


def test_auc_matches_pairwise_definition_and_accepts_tensors():
    rng = np.random.default_rng(1)
    m = rng.random((12, 12)) < 0.3
    s = rng.normal(size=(12, 12)).round(1)  # with ties
    pos, neg = s[m], s[~m]
    expected = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        pos.size * neg.size
    )
    assert trojan_auc(torch.tensor(s), torch.tensor(m), mode="signed") == pytest.approx(expected)
    # shifting the mask away from the salient region lowers the score
    blob = np.zeros((32, 32))
    blob[5:15, 8:20] = 1.0
    assert trojan_auc(blob, _mask(box=(20, 30, 20, 30))) < 0.5


def test_batch_with_single_mask_is_broadcast():
    m = _mask()
    maps = np.stack([m.astype(float), np.ones(m.shape), -m.astype(float)])
    np.testing.assert_allclose(trojan_auc(maps, m, mode="signed"), [1.0, 0.5, 0.0])


def test_pointing_game():
    m = _mask()
    s = np.zeros(m.shape)
    s[10, 10] = 5.0  # inside
    assert pointing_game(s, m) == 1.0
    s2 = np.zeros(m.shape)
    s2[30, 30] = 5.0  # outside
    assert pointing_game(s2, m) == 0.0
    s3 = np.zeros(m.shape)
    s3[15, 10] = 5.0  # one row below the box: a hit only with tolerance
    assert pointing_game(s3, m) == 0.0
    assert pointing_game(s3, m, tolerance=1) == 1.0
    neg = -s  # the strongest magnitude is inside, but the signed maximum is the zero background
    assert pointing_game(neg, m, absolute=True) == 1.0
    assert pointing_game(neg, m) < 1.0
    # a constant map scores the mask's area share, not a lucky first pixel
    assert pointing_game(np.ones(m.shape), m) == pytest.approx(m.mean())


def test_channel_sum_and_bad_input():
    a = torch.ones(2, 3, 4, 5)
    assert channel_sum(a).shape == (2, 4, 5)
    assert float(channel_sum(a)[0, 0, 0]) == 3.0
    m = _mask()
    with pytest.raises(ValueError, match="saliency"):
        trojan_auc(np.zeros((2, 3, 32, 32)), m)
    with pytest.raises(ValueError, match="mask"):
        trojan_auc(np.zeros((32, 32)), np.zeros((16, 16), bool))
    with pytest.raises(ValueError, match="mask"):
        trojan_auc(np.zeros((32, 32)), np.zeros((32, 32), bool))  # no trigger pixels
    with pytest.raises(ValueError, match="mode"):
        trojan_auc(m.astype(float), m, mode="max")
    with pytest.raises(TypeError, match="saliency"):
        trojan_auc([[0.0]], m)
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(m.astype(float), m, tolerance=-1)


def test_bootstrap_ci_covers_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.normal(size=20)
    mean, lo, hi = bootstrap_ci(small, seed=0)
    assert lo <= mean <= hi
    assert bootstrap_ci(small, seed=0) == (mean, lo, hi)
    big = rng.normal(size=2000)
    _, lo2, hi2 = bootstrap_ci(big, seed=0)
    assert hi2 - lo2 < hi - lo
    assert lo2 < 0 < hi2
    with pytest.raises(ValueError, match="values"):
        bootstrap_ci([])


def _pairwise_auc(s, m):
    """Independent ROC-AUC: the share of (trigger, background) pixel pairs ordered right, ties one half."""
    pos, neg = s[m], s[~m]
    return ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        pos.size * neg.size
    )


def test_trojan_auc_matches_pairwise_count_in_every_mode():
    rng = np.random.default_rng(3)
    maps = rng.integers(-3, 4, size=(6, 10, 12)).astype(float)  # many ties, both signs
    masks = rng.random((6, 10, 12)) < 0.25
    signed = trojan_auc(maps, masks, mode="signed")
    absolute = trojan_auc(maps, masks, mode="absolute")
    best = trojan_auc(maps, masks)
    for i in range(6):
        assert signed[i] == pytest.approx(_pairwise_auc(maps[i], masks[i]))
        assert absolute[i] == pytest.approx(_pairwise_auc(np.abs(maps[i]), masks[i]))
        assert best[i] == pytest.approx(max(signed[i], absolute[i]))


def _pointing_brute_force(s, m, tolerance):
    h, w = s.shape
    tops = [(r, c) for r in range(h) for c in range(w) if s[r, c] == s.max()]
    hits = 0
    for r, c in tops:
        near = m[max(0, r - tolerance) : r + tolerance + 1, max(0, c - tolerance) : c + tolerance + 1]
        hits += bool(near.any())
    return hits / len(tops)


@pytest.mark.parametrize("tolerance", [0, 1, 2])
@pytest.mark.parametrize("absolute", [False, True])
def test_pointing_game_matches_a_brute_force_loop(tolerance, absolute):
    rng = np.random.default_rng(tolerance + 10 * absolute)
    maps = rng.integers(-2, 3, size=(8, 9, 11)).astype(float)  # ties at the maximum are common
    masks = np.zeros((8, 9, 11), bool)
    for i in range(8):
        r, c = rng.integers(0, 7), rng.integers(0, 9)
        masks[i, r : r + 2, c : c + 3] = True
    got = pointing_game(maps, masks, tolerance=tolerance, absolute=absolute)
    for i in range(8):
        s = np.abs(maps[i]) if absolute else maps[i]
        assert got[i] == pytest.approx(_pointing_brute_force(s, masks[i], tolerance))


def test_empty_maps_and_bad_tolerance_are_refused():
    m = _mask()
    with pytest.raises(ValueError, match="saliency is empty"):
        trojan_auc(np.zeros((0, 32, 32)), m)
    with pytest.raises(ValueError, match="saliency is empty"):
        pointing_game(np.zeros((0, 32, 32)), m)
    with pytest.raises(TypeError, match="tolerance"):
        pointing_game(m.astype(float), m, tolerance=1.5)
