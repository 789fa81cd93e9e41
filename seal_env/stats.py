"""Small, dependency-free statistics for comparing policies on the same articles.

* :func:`mean_ci`: mean with a Student-t confidence interval (articles are the unit of replication).
* :func:`bootstrap_ci`: percentile bootstrap interval of a mean.
* :func:`paired_bootstrap`: mean of paired differences, its bootstrap interval and a two-sided bootstrap p-value.
* :func:`sign_test`: wins / losses / ties of paired values and the exact two-sided binomial p-value (ties dropped).
* :func:`pooled_sd`: the pooled within-group standard deviation (e.g. seed noise of one self-edit).
* :func:`effect_size_dz`: Cohen's d_z of paired differences (mean / sd), which sets how many articles separate two
  policies: about ``(2 / d_z) ** 2`` articles for |t| = 2.

Only the standard library and numpy (for resampling) are used; :func:`t_quantile` inverts the Student-t CDF
through the regularised incomplete beta function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TIE_TOL = 1e-12  #: paired differences with |d| <= TIE_TOL count as ties in the sign test


# ------------------------------------------------------------------------------------- Student t distribution
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes ``betacf``)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------- intervals and tests
def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    if arr.ndim != 1:
        raise ValueError("expected a flat sequence of numbers")
    return arr


def mean_ci(values: Sequence[float], conf: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its two-sided Student-t confidence interval.

    One value gives ``(x, nan, nan)``; no values ``(nan, nan, nan)``; identical values a zero-width interval.
    """
    x = _clean(values)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if n == 1:
        return m, math.nan, math.nan
    half = t_quantile(0.5 + conf / 2.0, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return m, m - half, m + half


def bootstrap_means(values: Sequence[float] | np.ndarray, n_boot: int = 10_000, seed: int = 0) -> np.ndarray:
    """``n_boot`` means of resamples (with replacement) of ``values``."""
    x = _clean(values)
    if len(x) == 0:
        raise ValueError("cannot bootstrap an empty sample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    return x[idx].mean(axis=1)


def bootstrap_ci(
    values: Sequence[float], conf: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)`` with the percentile bootstrap interval of the mean."""
    x = _clean(values)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    means = bootstrap_means(x, n_boot, seed)
    alpha = (1.0 - conf) / 2.0
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], conf: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Paired comparison of ``b`` against ``a`` (same units, e.g. articles, in the same order).

    Returns ``mean_diff`` (mean of b - a), the percentile bootstrap interval ``ci_low``/``ci_high`` and a two-sided
    ``p_value`` from the null-shifted bootstrap: the share of resampled mean differences, centred on the observed
    one, at least as far from 0 as the observed mean difference (``(1 + count) / (n_boot + 1)``).
    """
    xa, xb = _clean(a), _clean(b)
    if len(xa) != len(xb):
        raise ValueError(f"paired samples differ in length: {len(xa)} vs {len(xb)}")
    d = xb - xa
    if len(d) == 0:
        return {"n": 0, "mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan}
    means = bootstrap_means(d, n_boot, seed)
    obs = float(d.mean())
    alpha = (1.0 - conf) / 2.0
    extreme = int(np.sum(np.abs(means - obs) >= abs(obs) - 1e-15))
    return {
        "n": int(len(d)),
        "mean_diff": obs,
        "ci_low": float(np.quantile(means, alpha)),
        "ci_high": float(np.quantile(means, 1.0 - alpha)),
        "p_value": (1 + extreme) / (n_boot + 1),
    }


def binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips: ``2 * P(X <= min(k, n - k))``, capped
    at 1."""
    if n == 0:
        return 1.0
    low = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def sign_test(a: Sequence[float], b: Sequence[float], tol: float = TIE_TOL) -> dict[str, float]:
    """Sign test of ``b`` against ``a``: ``wins`` (b > a), ``losses``, ``ties`` and the exact two-sided p-value."""
    xa, xb = _clean(a), _clean(b)
    if len(xa) != len(xb):
        raise ValueError(f"paired samples differ in length: {len(xa)} vs {len(xb)}")
    d = xb - xa
    wins, losses = int(np.sum(d > tol)), int(np.sum(d < -tol))
    ties = int(len(d) - wins - losses)
    return {"wins": wins, "losses": losses, "ties": ties, "p_value": binom_two_sided(wins, wins + losses)}


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """``(sd, dof)``: the pooled within-group standard deviation over groups of >= 2 values (nan, 0 if none)."""
    ss, dof = 0.0, 0
    for g in groups:
        x = _clean(g)
        if len(x) >= 2:
            ss += float(np.sum((x - x.mean()) ** 2))
            dof += len(x) - 1
    return (math.sqrt(ss / dof) if dof else math.nan), dof


def effect_size_dz(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's d_z of the paired differences b - a: mean / sample sd (inf if they are all equal and non-zero)."""
    d = _clean(b) - _clean(a)
    if len(d) < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    m = float(d.mean())
    if sd == 0.0:
        return 0.0 if m == 0.0 else math.copysign(math.inf, m)
    return m / sd


def concordant_pairs(expected_order: Sequence[str], values: dict[str, float]) -> tuple[int, int]:
    """``(agree, total)``: of the pairs (i < j) of ``expected_order``, how many have ``values[i] < values[j]``."""
    names = [n for n in expected_order if n in values and not math.isnan(values[n])]
    agree = total = 0
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            total += 1
            agree += values[names[i]] < values[names[j]]
    return agree, total
