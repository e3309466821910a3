"""Bootstrap intervals (spade_utils.metrics): plain, paired and cluster-aware, against independent computations."""

import inspect

import numpy as np
import pytest
from scipy import stats

from spade_utils.intervals import _cluster_boot_means, bootstrap_ci, paired_bootstrap_diff

# scipy >= 1.15 names the generator `rng`, older releases `random_state`
RNG = "rng" if "rng" in inspect.signature(stats.bootstrap).parameters else "random_state"


# --------------------------------------------------------------------------------------------------
# refusals
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("values", [[1.0, np.nan, 2.0], [np.inf, 0.5], [0.2, -np.inf, 0.3]])
def test_non_finite_values_are_refused(values):
    # these gave (nan, nan, nan) and (inf, 0.5, nan)
    with pytest.raises(ValueError, match="values holds NaN or inf"):
        bootstrap_ci(values)


@pytest.mark.parametrize(
    "n_boot, error",
    [(0, ValueError), (-5, ValueError), (10, ValueError), (1.5, TypeError), (True, TypeError)],
)
def test_degenerate_resampling_counts_are_refused(n_boot, error):
    # n_boot=0 raised an IndexError from numpy; 10 resamples cannot place a 95% interval
    with pytest.raises(error, match="n_boot"):
        bootstrap_ci([0.1, 0.2, 0.3], n_boot=n_boot)
    with pytest.raises(error, match="n_boot"):
        paired_bootstrap_diff([0.1, 0.2, 0.3], [0.0, 0.1, 0.1], n_boot=n_boot)


def test_other_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="at least 2 values"):
        bootstrap_ci([0.4])
    with pytest.raises(ValueError, match="values"):
        bootstrap_ci([])
    with pytest.raises(TypeError, match="values"):
        bootstrap_ci(["a", "b"])
    for level in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="level"):
            bootstrap_ci([0.1, 0.2, 0.3], level=level)
    with pytest.raises(ValueError, match="seed"):
        bootstrap_ci([0.1, 0.2, 0.3], seed=-1)
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci([0.1, 0.2, 0.3], method="normal")
    with pytest.raises(ValueError, match="pair up"):
        paired_bootstrap_diff([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="b holds NaN"):
        paired_bootstrap_diff([0.1, 0.2], [0.1, np.nan])
    with pytest.raises(ValueError, match="clusters has 2 labels"):
        paired_bootstrap_diff([0.1, 0.2, 0.3], [0.0, 0.1, 0.1], clusters=["a", "b"])
    with pytest.raises(ValueError, match="single cluster"):
        paired_bootstrap_diff([0.1, 0.2, 0.3], [0.0, 0.1, 0.1], clusters=["a", "a", "a"])
    with pytest.raises(ValueError, match="missing label"):
        bootstrap_ci([0.1, 0.2, 0.3], clusters=["a", None, "b"])
    with pytest.raises(ValueError, match="percentile"):
        bootstrap_ci([0.1, 0.2, 0.3], clusters=["a", "b", "b"], method="BCa")


# --------------------------------------------------------------------------------------------------
# no clusters: scipy's bootstrap, and a brute-force resampling loop
# --------------------------------------------------------------------------------------------------
def _brute_force_interval(d, n_boot, level, seed):
    rng = np.random.default_rng(seed)
    means = [d[rng.integers(0, d.size, d.size)].mean() for _ in range(n_boot)]
    return np.quantile(means, [(1 - level) / 2, (1 + level) / 2])


def test_plain_interval_is_scipys_and_agrees_with_a_brute_force_loop():
    v = np.random.default_rng(0).gamma(2.0, size=40)
    mean, lo, hi = bootstrap_ci(v, n_boot=4000, seed=5)
    ref = stats.bootstrap(
        (v,), np.mean, n_resamples=4000, method="percentile", **{RNG: np.random.default_rng(5)}
    )
    assert mean == pytest.approx(v.mean())
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    blo, bhi = _brute_force_interval(v, 4000, 0.95, seed=99)  # other draws: agree within Monte-Carlo error
    assert abs(lo - blo) < 0.06 * (hi - lo) and abs(hi - bhi) < 0.06 * (hi - lo)
    assert bootstrap_ci(v, n_boot=4000, seed=5) == (mean, lo, hi)  # seeded
    # BCa is available and brackets the mean too
    _, blo2, bhi2 = bootstrap_ci(v, method="BCa", seed=5)
    assert blo2 < mean < bhi2


def test_paired_difference_without_clusters():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.8, 30)  # a large spread between items that the pairing must cancel
    a, b = base + 0.05 + 0.02 * rng.normal(size=30), base
    diff, lo, hi = paired_bootstrap_diff(a, b, n_boot=4000, seed=3)
    assert diff == pytest.approx(np.mean(a - b))
    ref = stats.bootstrap(
        (a, b),
        lambda x, y, axis: x.mean(axis) - y.mean(axis),
        paired=True,
        n_resamples=4000,
        method="percentile",
        **{RNG: np.random.default_rng(3)},
    )
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    blo, bhi = _brute_force_interval(a - b, 4000, 0.95, seed=7)
    assert abs(lo - blo) < 0.06 * (hi - lo) and abs(hi - bhi) < 0.06 * (hi - lo)
    # far narrower than an unpaired interval of either mean
    _, alo, ahi = bootstrap_ci(a, seed=3)
    assert hi - lo < 0.2 * (ahi - alo)
    # a constant difference gives a point interval
    assert paired_bootstrap_diff(base + 0.1, base) == pytest.approx((0.1, 0.1, 0.1))


# --------------------------------------------------------------------------------------------------
# clusters: the resampling distribution against its closed form, and coverage
# --------------------------------------------------------------------------------------------------
def test_cluster_resampling_variance_matches_the_two_stage_formula():
    # G clusters of m items. Draw G clusters with replacement, then m items with replacement within each:
    # Var*(mean) = (s_B^2 + mean_c s_c^2 / m) / G, with s_B^2 the (1/G) variance of the cluster means and s_c^2
    # the (1/m) variance inside cluster c; without the second stage it is s_B^2 / G.
    rng = np.random.default_rng(2)
    g, m = 7, 5
    d = (rng.normal(size=(g, 1)) + 0.5 * rng.normal(size=(g, m))).ravel()
    codes = np.repeat(np.arange(g), m)
    rng.shuffle(order := np.arange(d.size))  # cluster members need not be contiguous
    d, codes = d[order], codes[order]
    cm = np.array([d[codes == c].mean() for c in range(g)])
    within = np.array([d[codes == c].var() for c in range(g)])
    two_stage = (cm.var() + within.mean() / m) / g
    means = _cluster_boot_means(d, codes, 40000, np.random.default_rng(0), within=True)
    assert means.mean() == pytest.approx(d.mean(), abs=0.01)
    assert means.var() == pytest.approx(two_stage, rel=0.04)
    clusters_only = _cluster_boot_means(d, codes, 40000, np.random.default_rng(0), within=False)
    assert clusters_only.var() == pytest.approx(cm.var() / g, rel=0.04)
    # one item per cluster is the plain bootstrap: Var* = var(d) / n
    singles = _cluster_boot_means(d, np.arange(d.size), 40000, np.random.default_rng(0))
    assert singles.var() == pytest.approx(d.var() / d.size, rel=0.04)


def test_unequal_clusters_match_a_brute_force_two_stage_loop():
    rng = np.random.default_rng(4)
    sizes = [1, 3, 6, 2, 4]
    d = np.concatenate([rng.normal(loc=rng.normal(), size=s) for s in sizes])
    labels = np.repeat(["p0", "p1", "p2", "p3", "p4"], sizes)
    loop_rng = np.random.default_rng(11)
    groups = [d[labels == k] for k in np.unique(labels)]
    loop = []
    for _ in range(6000):
        picks = [groups[j] for j in loop_rng.integers(0, len(groups), len(groups))]
        loop.append(np.concatenate([p[loop_rng.integers(0, p.size, p.size)] for p in picks]).mean())
    mean, lo, hi = bootstrap_ci(d, clusters=labels, n_boot=6000, seed=1)
    llo, lhi = np.quantile(loop, [0.025, 0.975])
    assert mean == pytest.approx(d.mean())
    assert abs(lo - llo) < 0.06 * (hi - lo) and abs(hi - lhi) < 0.06 * (hi - lo)


def test_cluster_interval_covers_where_the_naive_one_does_not():
    # paired differences with a per-photo effect: items of one photo share it, so an interval that treats
    # them as independent is too narrow. True mean difference 0.1.
    rng = np.random.default_rng(0)
    g, m, trials = 12, 6, 150
    labels = np.repeat(np.arange(g), m)
    covered_cluster = covered_naive = 0
    for t in range(trials):
        photo = rng.normal(scale=0.1, size=g)[labels]
        b = rng.uniform(0.2, 0.8, g * m)
        a = b + 0.1 + photo + rng.normal(scale=0.02, size=g * m)
        _, lo, hi = paired_bootstrap_diff(a, b, labels, n_boot=400, seed=t)
        covered_cluster += lo <= 0.1 <= hi
        _, lo, hi = paired_bootstrap_diff(a, b, n_boot=400, seed=t)
        covered_naive += lo <= 0.1 <= hi
    assert covered_cluster / trials >= 0.85
    assert covered_naive / trials <= 0.6
