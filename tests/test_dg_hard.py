"""DG-Hard: the Gavish-Donoho threshold, checked against the optht reference implementation."""

import importlib
import math

import numpy as np
import pytest
import torch

from spectral_edit.analysis.diagnostics import dg_hard_table, ks_distance
from spectral_edit.edit.methods import MatrixContext, get_method, split_result
from spectral_edit.edit.random_matrix import lambda_star, mp_cdf, mp_median, omega

optht = pytest.importorskip("optht")
optht_module = importlib.import_module("optht.optht")


def test_omega_of_one():
    assert round(omega(1.0), 3) == 2.858


@pytest.mark.parametrize("beta", [1.0, 0.75, 0.5, 1 / 3, 0.125, 0.0117])
def test_mp_median_is_the_median(beta):
    mu = mp_median(beta)
    assert mp_cdf(mu, beta) == pytest.approx(0.5, abs=1e-9)
    # optht bisects to a bracket of 1e-3; ours is exact to ~1e-12.
    assert mu == pytest.approx(optht_module._median_marcenko_pastur(beta), abs=2e-3)
    assert lambda_star(beta) == pytest.approx(optht_module._optimal_SVHT_coef_sigma_known(beta), rel=1e-12)


def _low_rank_plus_noise(m, n, rank, sigma, seed):
    g = np.random.default_rng(seed)
    signal = (g.standard_normal((m, rank)) * np.linspace(4, 2, rank)) @ g.standard_normal((rank, n))
    signal *= sigma * math.sqrt(max(m, n)) / math.sqrt(min(m, n))  # spikes above the noise edge
    return signal + sigma * g.standard_normal((m, n))


def _dg_hard(matrix, **params):
    s = torch.linalg.svdvals(torch.tensor(matrix))
    method = get_method("dg_hard")
    full = method.resolve_params(params, "test")
    kept, record = split_result(method.edit(s, MatrixContext("m", matrix.shape, None, 0, full)))
    return s.numpy(), kept.numpy(), record


@pytest.mark.parametrize("shape", [(60, 60), (40, 100), (100, 40), (30, 200), (128, 96)])
def test_unknown_noise_threshold_agrees_with_optht(shape):
    m, n = shape
    matrix = _low_rank_plus_noise(m, n, rank=5, sigma=0.1, seed=m * n)
    s, kept, record = _dg_hard(matrix)
    beta = min(shape) / max(shape)
    # optht's coefficient uses its coarser MP median; the two thresholds agree to ~1e-3.
    reference_tau = (
        optht_module._optimal_SVHT_coef_sigma_known(beta) / math.sqrt(optht_module._median_marcenko_pastur(beta)) * np.median(s)
    )
    assert record["tau"] == pytest.approx(reference_tau, rel=2e-3)
    assert record["rank_kept"] == optht.optht(beta, s) == np.count_nonzero(kept)
    assert 4 <= record["rank_kept"] <= 6
    assert np.all(kept[: record["rank_kept"]] == s[: record["rank_kept"]])
    assert record["sigma_hat"] == pytest.approx(0.1, rel=0.15)  # noise level recovered from the median


@pytest.mark.parametrize("shape", [(50, 50), (40, 120)])
def test_known_noise_threshold(shape):
    m, n = shape
    matrix = _low_rank_plus_noise(m, n, rank=3, sigma=0.2, seed=1)
    s, kept, record = _dg_hard(matrix, noise_sigma=0.2)
    beta = min(shape) / max(shape)
    assert record["tau"] == pytest.approx(lambda_star(beta) * math.sqrt(max(shape)) * 0.2)
    # optht scales sigma by sqrt(len(sv)) = sqrt(min(m, n)); Gavish & Donoho's n is the long side.
    assert record["rank_kept"] == optht.optht(beta, s, sigma=0.2 * math.sqrt(max(shape) / min(shape)))


def test_scale_moves_the_threshold():
    matrix = _low_rank_plus_noise(80, 80, rank=4, sigma=0.1, seed=3)
    _, _, plain = _dg_hard(matrix)
    _, _, scaled = _dg_hard(matrix, scale=0.5)
    assert scaled["tau"] == pytest.approx(plain["tau"] * 0.5)
    assert scaled["rank_kept"] > plain["rank_kept"]


def test_bad_parameters_are_config_errors():
    from spectral_edit.errors import ConfigError

    with pytest.raises(ConfigError, match="scale must be positive"):
        get_method("dg_hard").resolve_params({"scale": 0}, "config: method_variants.x")


def test_discarded_noise_fits_marchenko_pastur_and_signal_does_not():
    g = np.random.default_rng(0)
    noise = 0.05 * g.standard_normal((120, 300))
    s = torch.linalg.svdvals(torch.tensor(noise)).numpy()
    assert ks_distance(s, 120 / 300, 0.05, 300) < 0.08
    above_the_bulk = np.linspace(2, 5, 120)  # the bulk ends near 0.05 sqrt(300) (1 + sqrt(0.4)) = 1.41
    assert ks_distance(above_the_bulk, 120 / 300, 0.05, 300) > 0.99
    spectrum = {
        "matrices": [
            {
                "name": "model.layers.0.mlp.down_proj.weight",
                "shape": [120, 300],
                "rank": 120,
                "singular_values": list(torch.linalg.svdvals(torch.tensor(_low_rank_plus_noise(120, 300, 4, 0.05, 2))).numpy()),
            }
        ]
    }
    table = dg_hard_table(spectrum, get_method("dg_hard").defaults)
    assert table.loc[0, "rank_kept"] == 4
    assert table.loc[0, "ks_discarded_vs_mp"] < 0.1
    assert table.loc[0, "layer"] == 0 and table.loc[0, "module"] == "down_proj"
