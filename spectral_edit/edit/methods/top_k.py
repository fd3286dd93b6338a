"""Top-k truncation (Shortcuts in the Tail, Sec. 2): keep the k = ceil(rho * r) largest."""

import torch

from spectral_edit.edit.methods import MatrixContext, keep_only, kept_count, register


@register("top_k", uses_retention=True, paper="Shortcuts in the Tail (arXiv 2606.07596), Sec. 2")
def top_k(singular_values: torch.Tensor, context: MatrixContext) -> torch.Tensor:
    """Keep the k = ceil(rho*r) largest singular values of dW (the paper's method)."""
    k = kept_count(singular_values.numel(), context.retention)
    order = torch.argsort(singular_values, descending=True, stable=True)
    return keep_only(singular_values, order[:k])
