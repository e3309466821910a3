import numpy as np
import pytest
import torch

from spade_utils.null_distribution import best_of_p_value, empirical_p_value, null_summary


def brute_force_p(score, null):
    count = 0
    for value in null:
        if value >= score:
            count += 1
    return (count + 1) / (len(null) + 1)


@pytest.mark.parametrize("seed", range(5))
def test_p_value_equals_a_brute_force_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    null = rng.integers(0, 6, size=int(rng.integers(1, 40))).astype(float)  # many ties
    for score in (-1.0, 0.0, 2.0, 2.5, 5.0, 9.0):
        assert empirical_p_value(score, null) == pytest.approx(brute_force_p(score, list(null)))
    assert empirical_p_value(10.0, torch.tensor(null)) == pytest.approx(1 / (len(null) + 1))


def test_p_value_is_uniform_when_score_and_null_come_from_one_distribution():
    """Validity: under exchangeability P(p <= a) <= a; the add-one estimate is exact at a = k / (n + 1)."""
    rng = np.random.default_rng(0)
    n, trials = 19, 4000
    draws = rng.normal(size=(trials, n + 1))
    ps = np.array([empirical_p_value(d[0], d[1:]) for d in draws])
    assert abs(np.mean(ps <= 0.05) - 0.05) < 0.015
    assert abs(np.mean(ps <= 0.5) - 0.5) < 0.03


def test_best_of_matches_a_simulated_maximum():
    rng = np.random.default_rng(1)
    null = rng.normal(size=200_000)
    threshold = 1.5
    p1 = float(np.mean(null >= threshold))
    simulated = float(np.mean(null.reshape(-1, 4).max(1) >= threshold))
    assert best_of_p_value(p1, 4) == pytest.approx(simulated, abs=0.01)
    assert best_of_p_value(0.3, 1) == 0.3


def test_summary_numbers():
    null = np.arange(20.0)  # 0..19
    s = null_summary(18.0, null)
    assert s["null_mean"] == pytest.approx(9.5)
    assert s["null_p95"] == pytest.approx(np.percentile(null, 95))
    assert s["p_value"] == pytest.approx(3 / 21) and s["n_null"] == 20 and s["score"] == 18.0
    assert null_summary(18.0, null, best_of=2)["p_value"] == pytest.approx(1 - (1 - 3 / 21) ** 2)


@pytest.mark.parametrize(
    "call, err, word",
    [
        (lambda: empirical_p_value(1.0, []), ValueError, "null"),
        (lambda: empirical_p_value(float("nan"), [1.0]), ValueError, "score"),
        (lambda: empirical_p_value("1", [1.0]), TypeError, "score"),
        (lambda: empirical_p_value(1.0, [1.0, float("inf")]), ValueError, "null"),
        (lambda: empirical_p_value(1.0, "abc"), TypeError, "null"),
        (lambda: best_of_p_value(1.5, 2), ValueError, "p_value"),
        (lambda: best_of_p_value(0.5, 0), ValueError, "m"),
        (lambda: null_summary(1.0, [1.0], best_of=0), ValueError, "best_of"),
    ],
)
def test_bad_arguments_are_refused(call, err, word):
    with pytest.raises(err, match=word):
        call()
