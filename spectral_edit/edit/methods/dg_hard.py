"""DG-Hard (Spectral Unforgetting, arXiv 2605.20296): the Gavish-Donoho optimal hard threshold
on the singular values of each dW, with no retention to choose.

For dW of shape m x n, beta = min(m, n) / max(m, n):
  unknown noise (default)  tau = omega(beta) * median(sigma),  sigma_hat = median(sigma) / sqrt(max(m, n) mu_beta)
  known noise sigma        tau = lambda*(beta) * sqrt(max(m, n)) * sigma
then tau is multiplied by ``scale`` and the singular values above it are kept.
"""

import math

import numpy as np
import torch

from spectral_edit.edit.methods import MatrixContext, register
from spectral_edit.edit.random_matrix import lambda_star, mp_median, omega


def check_params(p) -> None:
    if not float(p["scale"]) > 0:
        raise ValueError(f"scale must be positive, got {p['scale']}")
    if p["noise_sigma"] is not None and not float(p["noise_sigma"]) > 0:
        raise ValueError(f"noise_sigma must be positive or null, got {p['noise_sigma']}")


@register(
    "dg_hard",
    uses_retention=False,
    defaults={"scale": 1.0, "noise_sigma": None},
    check=check_params,
    param_types={"noise_sigma": (int, float, type(None))},
    paper="Spectral Unforgetting (arXiv 2605.20296)",
)
def dg_hard(singular_values: torch.Tensor, context: MatrixContext):
    """Keep the singular values above the Gavish-Donoho optimal hard threshold."""
    m, n = context.shape
    long_side = max(m, n)
    beta = min(m, n) / long_side
    median = float(np.median(singular_values.double().numpy()))  # even count: mean of the middle two
    sigma = context.params.get("noise_sigma")
    if sigma is None:
        tau = omega(beta) * median
        sigma_hat = median / math.sqrt(long_side * mp_median(beta))
    else:
        tau = lambda_star(beta) * math.sqrt(long_side) * float(sigma)
        sigma_hat = float(sigma)
    tau *= float(context.params.get("scale", 1.0))
    keep = singular_values > tau
    record = {"rank_kept": int(keep.sum()), "sigma_hat": sigma_hat, "tau": tau, "beta": beta}
    return singular_values * keep, record
