"""Spectral Surgery (arXiv 2603.03995, Sec. 3.3-3.4 and App. A): reweight the singular values
of dW by calibration-gradient sensitivities, keeping U and V fixed.

Sensitivity of component k: g_k = u_k^T G v_k with G = dL/d(dW) on a calibration set from the
training split (``calibration_size`` examples, loss on the answer tokens); computed per example
by spectral_edit.edit.sensitivity and aggregated as s_k = mean |g_k| (magnitude policies) and
mean g_k (grad_direction). Within a module both are normalised by their mean absolute value:
x_k = s_k / mean_j s_j, g~_k = g_k / mean_j |g_j|. Then sigma'_k = alpha_k sigma_k with

  abs_select      the k_core = min(r, max(round(r p), k_min)) largest x get amp_factor, the
                  k_noise = min(r - k_core, round(r q)) smallest get sup_factor, the rest
                  mid_factor (p = core_frac, q = noise_frac, k_min = min_core_k);
  smooth_abs      alpha = sup + (amp - sup) sigmoid((x - mu) / tau), mu = Q_c(x) (c =
                  smooth_center_q), tau = T (Q_{1-p}(x) - Q_q(x)) (T = smooth_temperature; if
                  1 - p <= q the quantiles are 0.25 and 0.75); a degenerate spread gives mid;
  random_index    abs_select's counts on indices drawn uniformly (seeded per cell and matrix);
  grad_direction  sigma' = sigma exp(-g_eff), g_eff = eta_suppress max(g~, 0) + eta_enhance min(g~, 0)
                  (asymmetric_update; otherwise sigma exp(-eta g~)).

sigma' is clamped at sigma_clip_min (0) and, with preserve_energy "l1" (default), rescaled so
that sum(sigma') = sum(sigma). The policies act on the components above fp32 rounding noise
(for a LoRA update, its r components). Only the modules named by ``modules`` are edited
(default the residual-writing o_proj and down_proj); every other matrix keeps its full update.

Readings of the paper where it is terse: "round" is round-half-up; quantiles interpolate
linearly; the signed sensitivity is the mean of g_k over the calibration examples.
"""

from __future__ import annotations

import math
import zlib

import torch

from spectral_edit.edit.methods import MatrixContext, register

MODULE_GROUPS = {
    "residual": ("o_proj", "down_proj"),
    "attention_inputs": ("q_proj", "k_proj", "v_proj"),
    "mlp_internal": ("gate_proj", "up_proj"),
}
MODULE_GROUPS["all"] = MODULE_GROUPS["residual"] + MODULE_GROUPS["attention_inputs"] + MODULE_GROUPS["mlp_internal"]
POLICIES = ("abs_select", "smooth_abs", "random_index", "grad_direction")

DEFAULTS = {
    "policy": "smooth_abs",
    "modules": "residual",
    "calibration_size": 128,
    "core_frac": 0.2,
    "noise_frac": 0.2,
    "min_core_k": 1,
    "amp_factor": 1.25,
    "sup_factor": 0.8,
    "mid_factor": 1.0,
    "smooth_temperature": 0.35,
    "smooth_center_q": 0.5,
    "eta_suppress": 2.0,
    "eta_enhance": 0.2,
    "eta": 1.0,
    "asymmetric_update": True,
    "sigma_clip_min": 0.0,
    "preserve_energy": "l1",
}


def targeted_modules(modules) -> set[str]:
    names = [modules] if isinstance(modules, str) else list(modules)
    out: set[str] = set()
    for name in names:
        if name not in MODULE_GROUPS:
            raise ValueError(f"unknown module group {name!r} (known: {', '.join(MODULE_GROUPS)})")
        out.update(MODULE_GROUPS[name])
    return out


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def selection_counts(r: int, core_frac: float, noise_frac: float, min_core_k: int) -> tuple[int, int]:
    k_core = min(r, max(_round_half_up(r * core_frac), min_core_k))
    k_noise = min(r - k_core, _round_half_up(r * noise_frac))
    return k_core, k_noise


def normalise(values: torch.Tensor) -> torch.Tensor:
    """Divide by the mean absolute value (zero stays zero)."""
    scale = values.abs().mean()
    return values / scale if scale > 0 else torch.zeros_like(values)


def three_level(order: torch.Tensor, k_core: int, k_noise: int, p: dict) -> torch.Tensor:
    """amp on order[:k_core], sup on the last k_noise of order, mid elsewhere."""
    alpha = torch.full((order.numel(),), float(p["mid_factor"]), dtype=torch.float64)
    alpha[order[:k_core]] = float(p["amp_factor"])
    if k_noise:
        alpha[order[order.numel() - k_noise :]] = float(p["sup_factor"])
    return alpha


def abs_select(x: torch.Tensor, p: dict) -> torch.Tensor:
    k_core, k_noise = selection_counts(x.numel(), p["core_frac"], p["noise_frac"], p["min_core_k"])
    order = torch.argsort(x, descending=True, stable=True)
    return three_level(order, k_core, k_noise, p)


def smooth_abs(x: torch.Tensor, p: dict) -> torch.Tensor:
    q_lo, q_hi = float(p["noise_frac"]), 1.0 - float(p["core_frac"])
    if q_hi <= q_lo:
        q_lo, q_hi = 0.25, 0.75
    mu = torch.quantile(x, float(p["smooth_center_q"]))
    spread = torch.quantile(x, q_hi) - torch.quantile(x, q_lo)
    tau = float(p["smooth_temperature"]) * spread
    if not tau > 1e-12:
        return torch.full_like(x, float(p["mid_factor"]))
    gate = torch.sigmoid((x - mu) / tau)
    return float(p["sup_factor"]) + (float(p["amp_factor"]) - float(p["sup_factor"])) * gate


def random_index(x: torch.Tensor, p: dict, seed_key: str) -> torch.Tensor:
    k_core, k_noise = selection_counts(x.numel(), p["core_frac"], p["noise_frac"], p["min_core_k"])
    generator = torch.Generator().manual_seed(zlib.crc32(seed_key.encode()))
    order = torch.randperm(x.numel(), generator=generator)
    return three_level(order, k_core, k_noise, p)


def grad_direction(g_tilde: torch.Tensor, p: dict) -> torch.Tensor:
    if p["asymmetric_update"]:
        effective = float(p["eta_suppress"]) * g_tilde.clamp(min=0) + float(p["eta_enhance"]) * g_tilde.clamp(max=0)
    else:
        effective = float(p["eta"]) * g_tilde
    return torch.exp(-effective)


def policy_scales(
    policy: str, sensitivity_abs: torch.Tensor, sensitivity_signed: torch.Tensor, p: dict, seed_key: str = ""
) -> torch.Tensor:
    """alpha_k for each component from its aggregated sensitivities."""
    if policy == "abs_select":
        return abs_select(normalise(sensitivity_abs.double()), p)
    if policy == "smooth_abs":
        return smooth_abs(normalise(sensitivity_abs.double()), p)
    if policy == "random_index":
        return random_index(sensitivity_abs.double(), p, seed_key)
    if policy == "grad_direction":
        return grad_direction(normalise(sensitivity_signed.double()), p)
    raise ValueError(f"spectral_surgery: unknown policy {policy!r} (known: {', '.join(POLICIES)})")


def reweight(singular_values: torch.Tensor, alpha: torch.Tensor, p: dict) -> torch.Tensor:
    """sigma' = alpha sigma, clamped, with optional L1 energy preservation."""
    edited = (alpha * singular_values.double()).clamp(min=float(p["sigma_clip_min"]))
    if p["preserve_energy"] == "l1" and edited.sum() > 0:
        edited = edited * (singular_values.double().sum() / edited.sum())
    elif p["preserve_energy"] not in ("l1", "none", None):
        raise ValueError(f"spectral_surgery: preserve_energy must be 'l1' or 'none', got {p['preserve_energy']!r}")
    return edited.to(singular_values.dtype)


def check_params(p) -> None:
    if p["policy"] not in POLICIES:
        raise ValueError(f"unknown policy {p['policy']!r} (known: {', '.join(POLICIES)})")
    targeted_modules(p["modules"])
    if p["preserve_energy"] not in ("l1", "none", None):
        raise ValueError(f"preserve_energy must be 'l1' or 'none', got {p['preserve_energy']!r}")
    for key in ("core_frac", "noise_frac", "smooth_center_q"):
        if not 0 <= float(p[key]) <= 1:
            raise ValueError(f"{key} must be in [0, 1], got {p[key]}")
    if int(p["calibration_size"]) < 1:
        raise ValueError(f"calibration_size must be at least 1, got {p['calibration_size']}")


@register(
    "spectral_surgery",
    uses_retention=False,
    defaults=DEFAULTS,
    needs=("sensitivities",),
    check=check_params,
    param_types={"modules": (str, list), "preserve_energy": (str, type(None))},
    paper="Spectral Surgery (arXiv 2603.03995), Sec. 3.3–3.4, App. A",
)
def spectral_surgery(singular_values: torch.Tensor, context: MatrixContext):
    """Reweight singular values by calibration-gradient sensitivities (policy: see module doc)."""
    p = context.params
    if context.module not in targeted_modules(p["modules"]) or "sensitivity_abs" not in context.extras:
        return singular_values, {"edited": False}
    r = context.rank
    head = singular_values[:r]
    alpha = policy_scales(
        p["policy"],
        context.extras["sensitivity_abs"][:r],
        context.extras["sensitivity_signed"][:r],
        p,
        seed_key=f"{context.seed}:{context.name}",
    )
    edited = singular_values.clone()
    edited[:r] = reweight(head, alpha, p)
    return edited, {"edited": True, "alpha_min": float(alpha.min()), "alpha_max": float(alpha.max())}
