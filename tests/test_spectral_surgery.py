"""Spectral Surgery: each policy's alpha_k pinned on hand-made sensitivity vectors."""

import math

import pytest
import torch

from spectral_edit.edit.methods import MatrixContext, get_method, split_result
from spectral_edit.edit.methods.spectral_surgery import DEFAULTS, policy_scales, reweight, selection_counts
from spectral_edit.errors import ConfigError

P = dict(DEFAULTS)


def test_selection_counts_round_half_up_with_minimum():
    assert selection_counts(10, 0.2, 0.2, 1) == (2, 2)
    assert selection_counts(12, 0.2, 0.2, 1) == (2, 2)  # 2.4 -> 2
    assert selection_counts(13, 0.2, 0.2, 1) == (3, 3)  # 2.6 -> 3
    assert selection_counts(5, 0.1, 0.1, 1) == (1, 1)  # 0.5 rounds up
    assert selection_counts(2, 0.0, 0.9, 1) == (1, 1)  # k_min, and the noise set fits what is left


def test_abs_select():
    s = torch.tensor([0.5, 3.0, 1.0, 2.0, 0.1, 4.0, 1.5, 0.2, 2.5, 0.7])
    alpha = policy_scales("abs_select", s, s, P)
    # r = 10: the 2 largest (4.0, 3.0) get 1.25, the 2 smallest (0.1, 0.2) get 0.8, the rest 1.0.
    expected = [1.0, 1.25, 1.0, 1.0, 0.8, 1.25, 1.0, 0.8, 1.0, 1.0]
    assert alpha.tolist() == pytest.approx(expected)


def test_smooth_abs_by_hand():
    s = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    alpha = policy_scales("smooth_abs", s, s, P)

    # x = s / mean(s) = [1/3, 2/3, 1, 4/3, 5/3]; mu = median = 1;
    # Q_0.2 = 1/3 + 0.8 * 1/3 = 0.6, Q_0.8 = 4/3 + 0.2 * 1/3 = 1.4, tau = 0.35 * 0.8 = 0.28.
    def gate(x):
        return 0.8 + (1.25 - 0.8) / (1 + math.exp(-(x - 1) / 0.28))

    assert alpha.tolist() == pytest.approx([gate(1 / 3), gate(2 / 3), 1.025, gate(4 / 3), gate(5 / 3)], rel=1e-12)
    assert alpha[4].item() == pytest.approx(1.2119, abs=1e-4)


def test_smooth_abs_degenerate_spread_gives_mid():
    s = torch.ones(6)
    assert policy_scales("smooth_abs", s, s, P).tolist() == [1.0] * 6


def test_random_index_keeps_counts_and_is_seeded():
    s = torch.arange(1.0, 21.0)
    alpha = policy_scales("random_index", s, s, P, seed_key="0:a")
    assert sorted(alpha.tolist()) == [0.8] * 4 + [1.0] * 12 + [1.25] * 4
    assert torch.equal(alpha, policy_scales("random_index", s, s, P, seed_key="0:a"))
    assert not torch.equal(alpha, policy_scales("random_index", s, s, P, seed_key="1:a"))
    assert not torch.equal(alpha, policy_scales("abs_select", s, s, P))


def test_grad_direction_asymmetric():
    g = torch.tensor([2.0, -1.0, 0.0, 1.0])  # mean |g| = 1, so g~ = g
    alpha = policy_scales("grad_direction", g.abs(), g, P)
    # g_eff = 2.0 * max(g~, 0) + 0.2 * min(g~, 0) = [4, -0.2, 0, 2]; alpha = exp(-g_eff).
    assert alpha.tolist() == pytest.approx([math.exp(-4), math.exp(0.2), 1.0, math.exp(-2)], rel=1e-12)
    symmetric = policy_scales("grad_direction", g.abs(), 2 * g, {**P, "asymmetric_update": False, "eta": 0.5})
    assert symmetric.tolist() == pytest.approx([math.exp(-1), math.exp(0.5), 1.0, math.exp(-0.5)], rel=1e-12)


def test_l1_energy_preservation_and_clamp():
    sigma = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    alpha = torch.tensor([1.25, 1.0, 0.8, -1.0], dtype=torch.float64)
    edited = reweight(sigma, alpha, P)
    assert edited[3] == 0  # clamped at sigma_clip_min = 0 before rescaling
    assert edited.sum().item() == pytest.approx(sigma.sum().item())
    raw = torch.tensor([5.0, 2.0, 0.8, 0.0])
    assert edited.tolist() == pytest.approx((raw * 8.0 / 7.8).tolist())
    assert reweight(sigma, alpha, {**P, "preserve_energy": "none"}).tolist() == pytest.approx(raw.tolist())


def _context(name, s, params, rank=None):
    extras = {"sensitivity_abs": torch.linspace(1, 2, s.numel()), "sensitivity_signed": torch.linspace(-1, 1, s.numel())}
    return MatrixContext(name, (s.numel(), s.numel()), None, 0, params, numerical_rank=rank, extras=extras)


def test_only_targeted_modules_and_leading_components_are_edited():
    method = get_method("spectral_surgery")
    params = method.resolve_params({"policy": "abs_select"}, "test")
    s = torch.linspace(3, 1, 10)
    untouched, record = split_result(method.edit(s, _context("model.layers.0.self_attn.q_proj.weight", s, params)))
    assert torch.equal(untouched, s) and record["edited"] is False
    edited, record = split_result(method.edit(s, _context("model.layers.0.self_attn.o_proj.weight", s, params)))
    assert not torch.equal(edited, s) and record["edited"] is True
    assert edited.sum().item() == pytest.approx(s.sum().item(), rel=1e-6)
    # A LoRA-like update of rank 4: only its 4 components are reweighted.
    lora_like = torch.cat([torch.linspace(3, 1, 4), torch.full((6,), 1e-9)])
    edited, _ = split_result(method.edit(lora_like, _context("model.layers.0.mlp.down_proj.weight", lora_like, params, rank=4)))
    assert torch.equal(edited[4:], lora_like[4:])
    wide = method.resolve_params({"policy": "abs_select", "modules": "all"}, "test")
    edited, _ = split_result(method.edit(s, _context("model.layers.0.self_attn.q_proj.weight", s, wide)))
    assert not torch.equal(edited, s)


@pytest.mark.parametrize(
    "given, culprit",
    [
        ({"policy": "abs_selec"}, "unknown policy 'abs_selec'"),
        ({"modules": "mlp"}, "unknown module group 'mlp'"),
        ({"core_frac": 1.5}, "core_frac must be in"),
    ],
)
def test_bad_parameters_name_the_culprit(given, culprit):
    with pytest.raises(ConfigError, match=culprit):
        get_method("spectral_surgery").resolve_params(given, "config: method_variants.s")
