"""Energy-matched uniform shrink (control for top-k; asked for by issue 10, not in the papers).

W_base + lambda * dW: every singular value of dW scaled by one lambda per matrix, chosen so that
the matrix keeps the share of sum(sigma^2) that top-k keeps at the same retention:
    lambda^2 * sum_i sigma_i^2 = sum_{i <= k} sigma_i^2,   k = ceil(rho * r).
It moves the model toward the base by as much update energy as top-k removes, but along dW
itself rather than by dropping the tail; whether top-k beats it is what it tests.
"""

import torch

from spectral_edit.edit.methods import MatrixContext, kept_count, register


@register("uniform_shrink", uses_retention=True, paper="control for top-k (not in the papers)")
def uniform_shrink(singular_values: torch.Tensor, context: MatrixContext) -> torch.Tensor:
    """Scale every singular value of dW by one lambda that keeps top-k's share of the energy."""
    k = kept_count(singular_values.numel(), context.retention)
    energy = singular_values.double() ** 2
    total = energy.sum()
    if total == 0:
        return singular_values.clone()
    top = torch.sort(energy, descending=True).values[:k].sum()
    return (singular_values.double() * torch.sqrt(top / total)).to(singular_values.dtype)
