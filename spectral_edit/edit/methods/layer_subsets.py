"""Per-layer subset compression (Shortcuts in the Tail, App. B, Fig. 9): top-k truncation at a
fixed retention (default 20%) applied to one subset of the matrices only, the full update
elsewhere. Four methods, one per subset:

  top_k_attention    the attention projections (names containing 'attn')
  top_k_mlp          the MLP projections (names containing 'mlp')
  top_k_first_half   every matrix of decoder layers 0 .. L/2 - 1
  top_k_second_half  every matrix of decoder layers L/2 .. L - 1
Embeddings and the LM head belong to no subset.
"""

from __future__ import annotations

import torch

from spectral_edit.edit.methods import MatrixContext, keep_only, kept_count, register

SUBSETS = ("attention", "mlp", "first_half", "second_half")


def in_subset(subset: str, context: MatrixContext) -> bool:
    layer = context.layer
    if layer is None:
        return False
    if subset == "attention":
        return "attn" in context.name
    if subset == "mlp":
        return "mlp" in context.name
    half = context.num_layers / 2
    return layer < half if subset == "first_half" else layer >= half


def _check(p) -> None:
    if not 0 < float(p["retention"]) <= 1:
        raise ValueError(f"retention must be in (0, 1], got {p['retention']}")


def _make(subset: str):
    def truncate_subset(singular_values: torch.Tensor, context: MatrixContext):
        if not in_subset(subset, context):
            return singular_values, {"truncated": False}
        k = kept_count(singular_values.numel(), float(context.params["retention"]))
        order = torch.argsort(singular_values, descending=True, stable=True)
        return keep_only(singular_values, order[:k]), {"truncated": True}

    return truncate_subset


for _subset in SUBSETS:
    register(
        f"top_k_{_subset}",
        uses_retention=False,
        defaults={"retention": 0.2},
        check=_check,
        paper="Shortcuts in the Tail, App. B (Fig. 9)",
        summary=f"Top-k truncation at a fixed retention on the {_subset.replace('_', ' ')} matrices only",
    )(_make(_subset))
