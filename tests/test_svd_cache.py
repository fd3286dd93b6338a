"""The SVD cache and in-memory edits on a tiny fine-tuned model."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from spectral_edit.edit import apply_spectral_edit
from spectral_edit.errors import CheckpointMismatchError
from spectral_edit.methods import get_method, kept_count
from spectral_edit.models import load_model
from spectral_edit.svd_cache import compute_svd_cache, energy_fraction


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_base_dir, tiny_finetuned_dir):
    out = tmp_path_factory.mktemp("svd")
    spectrum = compute_svd_cache(tiny_base_dir / "model.safetensors", tiny_finetuned_dir / "model.safetensors", out, progress=False)
    return out, spectrum


def test_cache_holds_factors_of_every_matrix(cache, tiny_base_dir, tiny_finetuned_dir):
    out, spectrum = cache
    base = load_file(tiny_base_dir / "model.safetensors")
    finetuned = load_file(tiny_finetuned_dir / "model.safetensors")
    matrices = [k for k, v in base.items() if v.ndim == 2]
    assert sorted(m["name"] for m in spectrum["matrices"]) == sorted(matrices)
    assert "model.embed_tokens.weight" in matrices  # embeddings included by default
    with safe_open(str(out / "factors.safetensors"), "pt") as f:
        for name in matrices:
            u, s, vh = f.get_tensor(f"U/{name}"), f.get_tensor(f"S/{name}"), f.get_tensor(f"Vh/{name}")
            assert torch.all(s[:-1] >= s[1:])
            delta = finetuned[name] - base[name]
            torch.testing.assert_close((u * s) @ vh, delta, rtol=0, atol=1e-5)
        # 1-D tensors are not decomposed; their fine-tuned values are kept for edited models.
        for name in spectrum["passthrough"]:
            assert base[name].ndim == 1
            torch.testing.assert_close(f.get_tensor(f"finetuned/{name}"), finetuned[name])
    assert json.loads((out / "spectrum.json").read_text())["n_matrices"] == len(matrices)


def test_excluding_embeddings_passes_them_through(tmp_path, tiny_base_dir, tiny_finetuned_dir):
    spectrum = compute_svd_cache(tiny_base_dir / "model.safetensors", tiny_finetuned_dir / "model.safetensors",
                                 tmp_path, include_embeddings=False, progress=False)
    names = [m["name"] for m in spectrum["matrices"]]
    assert "model.embed_tokens.weight" not in names
    assert "model.embed_tokens.weight" in spectrum["passthrough"]


def test_energy_fraction_by_hand():
    assert energy_fraction([3.0, 1.0, 0.0, 0.0]) == (1, 0.25)  # 9 / 10 = 0.9 exactly
    assert energy_fraction([1.0, 1.0, 1.0, 1.0]) == (4, 1.0)
    k, frac = energy_fraction([0.0, 0.0])
    assert k == 0 and frac != frac  # NaN for a zero update


def _edited_weights(tiny_base_dir, factors, method, retention):
    model = load_model(tiny_base_dir)
    stats = apply_spectral_edit(model, factors, get_method(method), get_method(method).defaults, retention, seed=0)
    return model, stats


def test_full_retention_rebuilds_the_finetuned_model(cache, tiny_base_dir, tiny_finetuned_dir):
    out, _ = cache
    model, stats = _edited_weights(tiny_base_dir, out / "factors.safetensors", "top_k", 1.0)
    assert stats["kept_components"] == stats["total_components"]
    finetuned = load_model(tiny_finetuned_dir).state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, finetuned[name], rtol=0, atol=1e-5)


def test_truncated_edit_matches_formula(cache, tiny_base_dir):
    out, spectrum = cache
    model, stats = _edited_weights(tiny_base_dir, out / "factors.safetensors", "top_k", 0.25)
    assert stats["kept_components"] == sum(kept_count(m["rank"], 0.25) for m in spectrum["matrices"])
    base = load_file(tiny_base_dir / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    with safe_open(str(out / "factors.safetensors"), "pt") as f:
        u, s, vh = f.get_tensor(f"U/{name}"), f.get_tensor(f"S/{name}"), f.get_tensor(f"Vh/{name}")
    k = kept_count(len(s), 0.25)
    expected = base[name] + (u[:, :k] * s[:k]) @ vh[:k]
    torch.testing.assert_close(model.state_dict()[name], expected, rtol=0, atol=1e-6)


def test_unedited_params_base_keeps_base_norms(cache, tiny_base_dir):
    out, spectrum = cache
    model = load_model(tiny_base_dir)
    apply_spectral_edit(model, out / "factors.safetensors", get_method("top_k"), {}, 0.5, 0, unedited_params="base")
    base = load_file(tiny_base_dir / "model.safetensors")
    for name in spectrum["passthrough"]:
        torch.testing.assert_close(model.state_dict()[name], base[name], rtol=0, atol=0)


def test_mismatched_checkpoints_are_named(tmp_path, tiny_base_dir):
    base = load_file(tiny_base_dir / "model.safetensors")
    renamed = dict(base)
    renamed["model.layers.0.mlp.extra.weight"] = renamed.pop("model.layers.0.mlp.up_proj.weight")
    save_file(renamed, tmp_path / "renamed.safetensors")
    with pytest.raises(CheckpointMismatchError, match="up_proj.weight' is in the base checkpoint but not"):
        compute_svd_cache(tiny_base_dir / "model.safetensors", tmp_path / "renamed.safetensors", tmp_path / "a", progress=False)
    reshaped = dict(base)
    reshaped["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 5)
    save_file(reshaped, tmp_path / "reshaped.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"up_proj.weight' has shape \(64, 32\) in the base"):
        compute_svd_cache(tiny_base_dir / "model.safetensors", tmp_path / "reshaped.safetensors", tmp_path / "b", progress=False)
    assert not (tmp_path / "a" / "factors.safetensors").exists()
