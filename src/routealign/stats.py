"""Small statistics the library needs and the scientific stack it depends on does not give in this form.

:func:`wilson` is Wilson's score interval for a proportion with Brown, Cai & DasGupta's boundary repair
(scipy, which has neither the repair nor the fractional effective sample sizes the evaluation needs, is
not a dependency); the evaluation's rates and the judges' agreement with labels both use it.
"""

from __future__ import annotations

import math
from statistics import NormalDist


def wilson(p: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``p`` observed on ``n`` (possibly effective) trials, with
    Brown, Cai & DasGupta's (2001, section 4.1.1) repair near the boundary.

    Plain Wilson covers far less than 95% for true rates just above 0: at 1 success in n its lower bound
    already exceeds a rate of about 0.1/n, so 1 of 40 excludes 0.4% while 0 of 40 happens only 85% of the
    time. Where ``x = p·n`` is at most 2 (n ≤ 50) or 3 (larger n; the paper states 3 for n up to 100, and
    keeping it beyond only widens the interval), the lower bound is instead the one-sided Poisson
    bound ``λ/n``, ``P(Poisson(λ) ≥ x) = alpha`` (λ = 0.051, 0.355, 0.818 for x = 1, 2, 3 at 95%);
    mirrored for the upper bound near 1.
    """
    z = NormalDist().inv_cdf(1 - alpha / 2)
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    edge = 2 if n <= 50 else 3
    if 0 < p * n <= edge:
        low = min(low, _poisson_lower(p * n, alpha) / n)
    if 0 < (1 - p) * n <= edge:
        high = max(high, 1 - _poisson_lower((1 - p) * n, alpha) / n)
    # At p = 0 (or 1) the formula gives exactly 0 (or 1) on that side, up to rounding.
    return (0.0 if p == 0 else low), (1.0 if p == 1 else high)


def _poisson_lower(x: float, alpha: float) -> float:
    """λ with P(Gamma(x, 1) ≤ λ) = alpha: for whole x, the λ at which P(Poisson(λ) ≥ x) = alpha."""
    lo, hi = 0.0, x + 10.0
    for _ in range(80):  # bisection: the regularised lower incomplete gamma is increasing in λ
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _gamma_cdf(x, mid) < alpha else (lo, mid)
    return (lo + hi) / 2


def _gamma_cdf(shape: float, t: float) -> float:
    """The regularised lower incomplete gamma P(shape, t), by its power series (t is small here)."""
    term = math.exp(shape * math.log(t) - t - math.lgamma(shape + 1)) if t > 0 else 0.0
    total, k = term, 0
    while term > 1e-17 * total and k < 500:
        k += 1
        term *= t / (shape + k)
        total += term
    return total
