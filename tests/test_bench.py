"""The benchmarks' statistics (jaxgan.bench): the interval given for a median overhead."""

import numpy as np
import pytest
from scipy import stats

from jaxgan import bench


@pytest.mark.parametrize("n", [6, 7, 10, 25, 40, 61, 100])
def test_the_median_interval_is_the_narrowest_pair_of_order_statistics_with_95_percent_coverage(n):
    x = np.random.default_rng(n).permutation(np.arange(n, dtype=np.float64))  # x_(i) = i - 1
    lo, hi = bench.median_interval(x)
    j = int(lo) + 1  # lo = x_(j)
    assert hi == n - j  # = x_(n + 1 - j): symmetric ranks
    coverage = lambda j: 1.0 - 2.0 * stats.binom.cdf(j - 1, n, 0.5)
    assert coverage(j) >= 0.95
    assert j + 1 > n // 2 or coverage(j + 1) < 0.95  # no narrower pair covers 95%


def test_too_few_values_give_no_interval():
    assert bench.median_interval(np.ones(5)) is None  # 1 - 2 / 2^5 = 0.9375 < 0.95
    assert bench.median_interval(np.ones(5), level=0.9) == (1.0, 1.0)


def test_the_interval_covers_the_median_as_often_as_it_says():
    """Samples of a skewed distribution (log-normal, median 1): the interval holds the true
    median in at least 95% of 4000 draws of 30 (the exact rate for n = 30 is 95.7%)."""
    rng = np.random.default_rng(0)
    draws = rng.lognormal(0.0, 0.5, size=(4000, 30))
    hits = [lo <= 1.0 <= hi for lo, hi in map(bench.median_interval, draws)]
    assert 0.945 <= np.mean(hits) <= 0.97


def test_the_ratio_summary_reports_quartiles_and_the_interval():
    r = np.linspace(0.9, 1.1, 41)
    s = bench.ratio_summary(r)
    assert s["median"] == pytest.approx(1.0) and s["q25"] == pytest.approx(0.95) and s["q75"] == pytest.approx(1.05)
    lo, hi = s["median_ci95"]
    assert lo < 1.0 < hi and s["n"] == 41
    assert bench.ratio_summary(r[:4])["median_ci95"] is None
