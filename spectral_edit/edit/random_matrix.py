"""Marchenko-Pastur law and the Gavish-Donoho optimal hard threshold.

For an m x n noise matrix (m <= n, beta = m / n) with i.i.d. entries of variance sigma^2, the
eigenvalues of X X^T / (n sigma^2) follow the Marchenko-Pastur law with ratio beta, supported on
[(1 - sqrt(beta))^2, (1 + sqrt(beta))^2]; the singular values of X are sigma sqrt(n lambda).

Gavish & Donoho (2014): with known sigma the optimal hard threshold is
tau = lambda*(beta) sqrt(n) sigma, with
lambda*(beta) = sqrt(2 (beta + 1) + 8 beta / ((beta + 1) + sqrt(beta^2 + 14 beta + 1))),
and with unknown sigma tau = omega(beta) median(singular values), omega = lambda* / sqrt(mu_beta),
mu_beta the median of the Marchenko-Pastur law. We compute mu_beta by numerical integration and
root finding to 1e-12 rather than with the paper's cubic approximation of omega.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import integrate, optimize


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not 0 < beta <= 1:
        raise ValueError(f"aspect ratio beta must be in (0, 1], got {beta}")
    return beta


def mp_support(beta: float) -> tuple[float, float]:
    beta = _check_beta(beta)
    return (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2


def mp_density(x, beta: float):
    """Marchenko-Pastur density of the eigenvalues (unit variance) at x."""
    low, high = mp_support(beta)
    x = np.asarray(x, dtype=float)
    inside = (x > low) & (x < high)
    out = np.zeros_like(x)
    xi = x[inside]
    out[inside] = np.sqrt((high - xi) * (xi - low)) / (2 * math.pi * beta * xi)
    return out


def mp_cdf(x: float, beta: float) -> float:
    low, high = mp_support(beta)
    if x <= low:
        return 0.0
    if x >= high:
        return 1.0
    value, _ = integrate.quad(lambda t: float(mp_density(np.array([t]), beta)[0]), low, x, limit=200, epsabs=1e-13, epsrel=1e-12)
    return value


@lru_cache(maxsize=256)
def mp_median(beta: float) -> float:
    """Median mu_beta of the Marchenko-Pastur law, by root finding on its CDF."""
    low, high = mp_support(beta)
    return optimize.brentq(lambda x: mp_cdf(x, beta) - 0.5, low, high, xtol=1e-13, rtol=1e-13)


def lambda_star(beta: float) -> float:
    """Optimal hard-threshold coefficient for a known noise level (Gavish & Donoho, Eq. 11)."""
    beta = _check_beta(beta)
    return math.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + math.sqrt(beta**2 + 14 * beta + 1)))


def omega(beta: float) -> float:
    """Optimal hard-threshold coefficient on the median singular value (unknown noise)."""
    return lambda_star(beta) / math.sqrt(mp_median(beta))


def noise_singular_value_density(s, beta: float, sigma: float, n: int):
    """Density of the singular values of an m x n (m <= n) noise matrix with entry std sigma."""
    s = np.asarray(s, dtype=float)
    scale = n * sigma**2
    return mp_density(s**2 / scale, beta) * 2 * s / scale
