"""The SVD cache and in-memory edits on a tiny fine-tuned model."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from spectral_edit.edit.apply import apply_spectral_edit, new_singular_values
from spectral_edit.edit.methods import MatrixContext, get_method, kept_count
from spectral_edit.edit.rebuild import leading_vectors, rebuild_update
from spectral_edit.edit.svd import compute_svd_cache, energy_fraction
from spectral_edit.edit.svd_cache import cached_names, iter_factors, stored_side
from spectral_edit.errors import CheckpointMismatchError
from spectral_edit.models import load_model


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_base_dir, tiny_finetuned_dir):
    out = tmp_path_factory.mktemp("svd")
    spectrum = compute_svd_cache(
        tiny_base_dir / "model.safetensors", tiny_finetuned_dir / "model.safetensors", out, progress=False
    )
    return out, spectrum


def test_cache_holds_singular_values_and_the_smaller_sides_vectors(cache, tiny_base_dir, tiny_finetuned_dir):
    out, spectrum = cache
    base = load_file(tiny_base_dir / "model.safetensors")
    finetuned = load_file(tiny_finetuned_dir / "model.safetensors")
    matrices = [k for k, v in base.items() if v.ndim == 2]
    assert sorted(m["name"] for m in spectrum["matrices"]) == sorted(matrices)
    assert "model.embed_tokens.weight" in matrices  # embeddings included by default
    stored = load_file(out / "factors.safetensors")
    sides = set()
    for name in matrices:
        m, n = base[name].shape
        side = "V" if n <= m else "U"
        sides.add(side)
        basis, s = stored[f"{side}/{name}"], stored[f"S/{name}"]
        assert basis.shape == ((n if side == "V" else m), min(m, n))
        assert f"{'U' if side == 'V' else 'V'}/{name}" not in stored  # the larger side is not stored
        assert torch.all(s[:-1] >= s[1:])
        delta = (finetuned[name] - base[name]).double()
        reference = torch.linalg.svdvals(delta)
        torch.testing.assert_close(s.double(), reference, rtol=0, atol=1e-5)
        # The rebuilt full update is dW itself.
        rebuilt = rebuild_update(delta, s, s.clone(), "right" if side == "V" else "left", basis)
        torch.testing.assert_close(rebuilt, delta, rtol=0, atol=1e-5)
    assert sides == {"U", "V"}  # the tiny model has both wide and tall matrices
    assert not any(key.startswith("finetuned/") for key in stored)  # norms are read from the checkpoint
    decomposed, passthrough = cached_names(out / "factors.safetensors")
    assert decomposed == sorted(matrices) and passthrough == spectrum["passthrough"]
    assert all(base[name].ndim == 1 for name in passthrough)
    assert json.loads((out / "spectrum.json").read_text())["n_matrices"] == len(matrices)


def test_cache_stores_r_squared_plus_r_numbers_per_matrix(cache):
    """r (r + 1) floats per matrix instead of U, S, V^T whole (r (m + n + 1)); for SmolLM2-135M's
    shapes that is 0.28x (tests/test_models.py checks its real cache)."""
    out, spectrum = cache
    stored = sum(t.numel() for t in load_file(out / "factors.safetensors").values())
    assert stored == sum(m["rank"] * (m["rank"] + 1) for m in spectrum["matrices"])
    assert stored < 0.45 * sum(m["rank"] * (m["shape"][0] + m["shape"][1] + 1) for m in spectrum["matrices"])


@pytest.mark.parametrize("retention", [1.0, 0.5, 0.1])
@pytest.mark.parametrize("method", ["top_k", "bottom_k", "random_k", "uniform_shrink"])
def test_rebuilt_update_equals_the_sum_over_components(method, retention):
    """U diag(S') V^T from the full SVD against the rebuild from dW and one side, both shapes."""
    generator = torch.Generator().manual_seed(1)
    for shape in ((40, 24), (24, 40), (16, 16)):
        delta = torch.randn(shape, generator=generator, dtype=torch.float64) @ torch.diag(
            torch.linspace(2, 0.01, shape[1], dtype=torch.float64)
        )
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        context = MatrixContext("model.layers.0.mlp.up_proj.weight", shape, retention, 0, get_method(method).defaults)
        s_new = new_singular_values(get_method(method), s.float(), context)
        expected = (u * s_new.double()) @ vh
        side = stored_side(shape)
        basis = (vh.T if side == "right" else u).float()
        rebuilt = rebuild_update(delta, s.float(), s_new, side, basis)
        torch.testing.assert_close(rebuilt, expected, rtol=0, atol=1e-5)


def test_a_component_created_from_nothing_is_refused():
    delta = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="singular value is 0"):
        rebuild_update(delta, torch.zeros(2), torch.tensor([1.0, 0.0]), "right", torch.eye(2))


def test_leading_vectors_of_the_side_not_stored(cache, tiny_base_dir, tiny_finetuned_dir):
    out, _ = cache
    base, finetuned = load_file(tiny_base_dir / "model.safetensors"), load_file(tiny_finetuned_dir / "model.safetensors")
    for name, s, side, basis in iter_factors(
        out / "factors.safetensors", ["model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight"]
    ):
        delta = (finetuned[name] - base[name]).double()
        u, v = leading_vectors(delta, s, side, basis, 3)
        reference_u, _, reference_vh = torch.linalg.svd(delta, full_matrices=False)
        signs = torch.sign((u * reference_u[:, :3]).sum(0))  # singular vectors are defined up to sign
        torch.testing.assert_close(u * signs, reference_u[:, :3], rtol=0, atol=1e-4)
        torch.testing.assert_close(v * signs, reference_vh[:3].T, rtol=0, atol=1e-4)


def test_an_old_full_cache_is_refused_with_a_clear_message(tmp_path):
    save_file(
        {"U/w": torch.eye(2), "S/w": torch.ones(2), "Vh/w": torch.eye(2)},
        tmp_path / "factors.safetensors",
        metadata={"decomposed": '["w"]'},
    )
    with pytest.raises(CheckpointMismatchError, match="not a compact-v1 SVD cache .* delete it and rerun"):
        cached_names(tmp_path / "factors.safetensors")


def test_excluding_embeddings_passes_them_through(tmp_path, tiny_base_dir, tiny_finetuned_dir):
    spectrum = compute_svd_cache(
        tiny_base_dir / "model.safetensors",
        tiny_finetuned_dir / "model.safetensors",
        tmp_path,
        include_embeddings=False,
        progress=False,
    )
    names = [m["name"] for m in spectrum["matrices"]]
    assert "model.embed_tokens.weight" not in names
    assert "model.embed_tokens.weight" in spectrum["passthrough"]


def test_energy_fraction_by_hand():
    assert energy_fraction([3.0, 1.0, 0.0, 0.0]) == (1, 0.25)  # 9 / 10 = 0.9 exactly
    assert energy_fraction([1.0, 1.0, 1.0, 1.0]) == (4, 1.0)
    k, frac = energy_fraction([0.0, 0.0])
    assert k == 0 and frac != frac  # NaN for a zero update


def _edited_weights(tiny_base_dir, tiny_finetuned_dir, factors, method, retention):
    model = load_model(tiny_base_dir)
    stats = apply_spectral_edit(
        model,
        factors,
        get_method(method),
        get_method(method).defaults,
        retention,
        seed=0,
        finetuned_weights=tiny_finetuned_dir / "model.safetensors",
    )
    return model, stats


def test_full_retention_rebuilds_the_finetuned_model(cache, tiny_base_dir, tiny_finetuned_dir):
    out, _ = cache
    model, stats = _edited_weights(tiny_base_dir, tiny_finetuned_dir, out / "factors.safetensors", "top_k", 1.0)
    assert stats["kept_components"] == stats["total_components"]
    finetuned = load_model(tiny_finetuned_dir).state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, finetuned[name], rtol=0, atol=1e-5)


def test_truncated_edit_matches_formula(cache, tiny_base_dir, tiny_finetuned_dir):
    out, spectrum = cache
    model, stats = _edited_weights(tiny_base_dir, tiny_finetuned_dir, out / "factors.safetensors", "top_k", 0.25)
    assert stats["kept_components"] == sum(kept_count(m["rank"], 0.25) for m in spectrum["matrices"])
    base, finetuned = load_file(tiny_base_dir / "model.safetensors"), load_file(tiny_finetuned_dir / "model.safetensors")
    for name in ("model.layers.1.mlp.down_proj.weight", "model.layers.1.mlp.up_proj.weight"):
        u, s, vh = torch.linalg.svd((finetuned[name] - base[name]).double(), full_matrices=False)
        k = kept_count(len(s), 0.25)
        expected = base[name] + ((u[:, :k] * s[:k]) @ vh[:k]).float()
        torch.testing.assert_close(model.state_dict()[name], expected, rtol=0, atol=1e-6)


def test_edit_over_a_previous_edit_equals_an_edit_of_the_base(cache, tiny_base_dir, tiny_finetuned_dir):
    """With the base weights file given, the model may hold another cell's edit (the evaluation
    server reuses one model for the cells of a checkpoint): every tensor is overwritten."""
    out, _ = cache
    factors = out / "factors.safetensors"
    fresh, _ = _edited_weights(tiny_base_dir, tiny_finetuned_dir, factors, "bottom_k", 0.5)
    reused, _ = _edited_weights(tiny_base_dir, tiny_finetuned_dir, factors, "top_k", 0.1)
    apply_spectral_edit(
        reused,
        factors,
        get_method("bottom_k"),
        {},
        0.5,
        0,
        finetuned_weights=tiny_finetuned_dir / "model.safetensors",
        base_weights=tiny_base_dir / "model.safetensors",
    )
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(reused.state_dict()[name], value, rtol=0, atol=0)


def test_unedited_params_base_keeps_base_norms(cache, tiny_base_dir, tiny_finetuned_dir):
    out, spectrum = cache
    model = load_model(tiny_base_dir)
    apply_spectral_edit(
        model,
        out / "factors.safetensors",
        get_method("top_k"),
        {},
        0.5,
        0,
        unedited_params="base",
        finetuned_weights=tiny_finetuned_dir / "model.safetensors",
    )
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


def test_streaming_writer_round_trips_through_safe_open(tmp_path):
    from spectral_edit.safetensors_stream import StreamingSafetensorsWriter

    tensors = {
        "a": torch.randn(3, 5),
        "b/c": torch.arange(7, dtype=torch.int64),
        "half": torch.randn(4, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
    }
    writer = StreamingSafetensorsWriter(tmp_path / "x.safetensors")
    for name, value in tensors.items():
        writer.add(name, value)
    assert not (tmp_path / "x.safetensors").exists()  # nothing under the final name before close
    writer.close({"note": "streamed"})
    loaded = load_file(tmp_path / "x.safetensors")
    assert sorted(loaded) == sorted(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0)
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"note": "streamed"}
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # the data scratch file is gone


def test_batch_size_does_not_change_the_cache(cache, tmp_path, tiny_base_dir, tiny_finetuned_dir):
    out, _ = cache
    compute_svd_cache(
        tiny_base_dir / "model.safetensors", tiny_finetuned_dir / "model.safetensors", tmp_path, progress=False, batch_size=8
    )
    one, batched = load_file(out / "factors.safetensors"), load_file(tmp_path / "factors.safetensors")
    assert sorted(one) == sorted(batched)
    for name in one:
        torch.testing.assert_close(batched[name], one[name], rtol=0, atol=0)


def test_out_of_memory_halves_the_batch_then_falls_back_to_cpu(monkeypatch):
    """The GPU path on a CPU machine: a fake device that runs out of memory above a batch size."""
    import spectral_edit.edit.svd as svd

    real = svd._svd_batch
    calls = []

    def svd_with_small_gpu(deltas, device):
        calls.append((device.type, deltas.shape[0]))
        if device.type != "cpu" and deltas.shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(deltas, torch.device("cpu"))

    monkeypatch.setattr(svd, "_svd_batch", svd_with_small_gpu)
    deltas = [torch.randn(6, 4, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    expected = [torch.linalg.svd(d.double(), full_matrices=False)[1].float() for d in deltas]

    limit = 2
    factors, events = svd.batched_svds(deltas, torch.device("cuda"), batch_size=8)
    assert events["halvings"] == 2 and events["final_batch_size"] == 2 and events["cpu_fallbacks"] == 0
    assert calls[:3] == [("cuda", 5), ("cuda", 4), ("cuda", 2)]
    for (u, s, vh), delta, s_expected in zip(factors, deltas, expected):
        torch.testing.assert_close(s, s_expected)
        torch.testing.assert_close((u * s) @ vh, delta, rtol=0, atol=1e-5)

    limit, calls[:] = 0, []
    factors, events = svd.batched_svds(deltas, torch.device("cuda"), batch_size=4)
    assert events["cpu_fallbacks"] == 5 and events["final_batch_size"] == 1
    assert [c for c in calls if c[0] == "cpu"] == [("cpu", 1)] * 5
    torch.testing.assert_close(factors[3][1], expected[3])


def test_other_errors_are_not_taken_for_out_of_memory(monkeypatch):
    import spectral_edit.edit.svd as svd

    def broken(deltas, device):
        raise RuntimeError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(svd, "_svd_batch", broken)
    with pytest.raises(RuntimeError, match="failed to converge"):
        svd.batched_svds([torch.ones(2, 2)], torch.device("cuda"), batch_size=2)


def test_a_truncated_cache_is_one_line_naming_the_file_and_the_fix(cache, tmp_path):
    from spectral_edit.errors import DamagedFileError

    out, _ = cache
    damaged = tmp_path / "factors.safetensors"
    damaged.write_bytes((out / "factors.safetensors").read_bytes()[:5000])
    with pytest.raises(DamagedFileError, match=rf"{damaged} is damaged or truncated .*delete it and rerun snakemake") as info:
        cached_names(damaged)
    assert "\n" not in str(info.value)


def test_an_edit_of_a_bf16_model_is_computed_in_fp32_and_rounded_once(cache, tiny_base_dir, tiny_finetuned_dir):
    """A bf16 evaluation (runtime dtype bfloat16) edits in fp32 from the files and rounds the
    result once: bitwise the fp32 edit cast to bf16, also for a second cell served from the
    resident (W_base, dW) store, and not what the same sum computed in bf16 gives."""
    out, _ = cache
    factors = out / "factors.safetensors"
    reference, _ = _edited_weights(tiny_base_dir, tiny_finetuned_dir, factors, "top_k", 0.25)
    model = load_model(tiny_base_dir).to(torch.bfloat16)
    resident: dict = {}
    for method, retention in (("bottom_k", 0.5), ("top_k", 0.25)):  # the second reads the resident store
        apply_spectral_edit(
            model,
            factors,
            get_method(method),
            {},
            retention,
            0,
            finetuned_weights=tiny_finetuned_dir / "model.safetensors",
            base_weights=tiny_base_dir / "model.safetensors",
            resident=resident,
        )
    assert resident and all(w.dtype == torch.float32 and d.dtype == torch.float32 for w, d in resident.values())
    edited, expected = model.state_dict(), reference.state_dict()
    for name, value in expected.items():
        assert edited[name].dtype == torch.bfloat16
        assert torch.equal(edited[name], value.to(torch.bfloat16)), name
    # Computed in bf16 (base rounded, then the update added in bf16) the weights come out otherwise.
    base = load_file(tiny_base_dir / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    in_bf16 = base[name].to(torch.bfloat16) + (expected[name] - base[name]).to(torch.bfloat16)
    assert not torch.equal(in_bf16, edited[name])
