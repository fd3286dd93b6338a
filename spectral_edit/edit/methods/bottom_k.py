"""Bottom-k control (Shortcuts in the Tail, Sec. 2): keep the k smallest singular values."""

import torch

from spectral_edit.edit.methods import MatrixContext, keep_only, kept_count, register


@register("bottom_k", uses_retention=True, paper="same, control")
def bottom_k(singular_values: torch.Tensor, context: MatrixContext) -> torch.Tensor:
    """Keep the k = ceil(rho*r) smallest singular values of dW (control)."""
    k = kept_count(singular_values.numel(), context.retention)
    order = torch.argsort(singular_values, descending=False, stable=True)
    return keep_only(singular_values, order[:k])
