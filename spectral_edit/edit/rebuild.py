"""An edited update rebuilt from dW and the SVD cache's singular vectors of one side
(spectral_edit.edit.svd_cache): sum_i s'_i u_i v_i^T = dW V diag(s'/s) V^T = U diag(s'/s) U^T dW,
whole for the edited model, split in two for a LoRA adapter, or as leading vectors of both
sides for diagnostics and sensitivities.
"""

from __future__ import annotations

import torch


def _ratios(s: torch.Tensor, s_new: torch.Tensor) -> torch.Tensor:
    """s'/s per component; a component with sigma = 0 (dW has nothing along it) stays 0."""
    if torch.any((s == 0) & (s_new != 0)):
        raise ValueError("an edit gave weight to a component whose singular value is 0: it cannot be rebuilt from dW")
    return torch.where(s > 0, s_new.double() / torch.where(s > 0, s.double(), 1.0), 0.0)


def rebuild_update(delta: torch.Tensor, s: torch.Tensor, s_new: torch.Tensor, side: str, basis: torch.Tensor) -> torch.Tensor:
    """sum_i s'_i u_i v_i^T from dW and the stored side's vectors, in ``delta``'s dtype and device.

    The cheaper of two equal forms: through the components that are kept (dW V_k diag(s'/s) V_k^T,
    top-k at a small retention), or as dW plus the change of those that move (bottom-k keeping
    most of the spectrum); one scale for every component (uniform shrink) is lambda * dW.
    """
    ratio = _ratios(s, s_new)
    live = s > 0
    # One scale up to the float32 rounding of S' (the reweighting methods compute in float64).
    if bool(live.all()) and float(ratio.max() - ratio.min()) <= 1e-6 * float(ratio.abs().max()):
        return delta * float(ratio.mean())
    kept = torch.nonzero(ratio != 0, as_tuple=True)[0]
    changed = torch.nonzero(live & (ratio != 1), as_tuple=True)[0]
    use_kept = kept.numel() <= changed.numel()
    index = kept if use_kept else changed
    if index.numel() == 0:
        return torch.zeros_like(delta) if use_kept else delta.clone()
    q = basis[:, index].to(delta)
    scale = (ratio[index] if use_kept else ratio[index] - 1).to(delta)
    part = ((delta @ q) * scale) @ q.T if side == "right" else (q * scale) @ (q.T @ delta)
    return part if use_kept else delta + part


def low_rank_factors(
    delta: torch.Tensor, s: torch.Tensor, s_new: torch.Tensor, side: str, basis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A), m x k and k x n, with B @ A = sum_i s'_i u_i v_i^T over the k kept components
    (s'_i != 0, s_i > 0): the kept form of :func:`rebuild_update` split in two, so that an edit
    can be written as a LoRA adapter of rank k. The stored side's vectors carry no scale; the
    other factor is dW's projection on them times s'/s (= diag(s') times the other side's vectors).
    """
    ratio = _ratios(s, s_new)
    index = torch.nonzero(ratio != 0, as_tuple=True)[0]
    q = basis[:, index].to(delta)
    scale = ratio[index].to(delta)
    if side == "right":
        return (delta @ q) * scale, q.T.contiguous()
    return q.contiguous(), ((q * scale).T @ delta).contiguous()


def leading_vectors(
    delta: torch.Tensor, s: torch.Tensor, side: str, basis: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U[:, :count], V[:, :count]): the stored side's leading vectors and the other side's,
    computed from dW (u_i = dW v_i / sigma_i, v_i = dW^T u_i / sigma_i); columns with sigma = 0
    are left 0. For diagnostics and sensitivities that need both sides."""
    q = basis[:, :count].to(delta)
    sigma = s[:count].to(delta)
    inverse = torch.where(sigma > 0, 1 / torch.where(sigma > 0, sigma, 1), 0)
    if side == "right":
        return (delta @ q) * inverse, q
    return q, (delta.T @ q) * inverse
