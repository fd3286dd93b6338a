"""LoRA and SpecLoRA recipes, calibration sensitivities, layer subsets and subspace diagnostics."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_DATASET, TINY_HYPER
from spectral_edit.analysis.diagnostics import subspace_alignment
from spectral_edit.data.prompts import PromptFormatter
from spectral_edit.edit.methods import MatrixContext, get_method, split_result
from spectral_edit.edit.sensitivity import calibration_rows, compute_sensitivities, per_example_answer_loss
from spectral_edit.edit.svd import compute_svd_cache, numerical_rank
from spectral_edit.models import load_model, load_tokenizer
from spectral_edit.plan.config import DEFAULT_LORA_TARGETS
from spectral_edit.plan.records import FinetuneRecipe
from spectral_edit.train.finetune import _merge_recipe, _wrap_for_recipe, finetune


def _recipe(kind, **extra):
    return {"kind": kind, "rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": list(DEFAULT_LORA_TARGETS), **extra}


def _update_ranks(base_dir, ft_dir):
    base, ft = load_file(base_dir / "model.safetensors"), load_file(ft_dir / "model.safetensors")
    ranks = {}
    for name, w in base.items():
        if w.ndim == 2 and "layers.0." in name:
            s = torch.linalg.svdvals((ft[name] - w).double())
            ranks[name.split(".")[-2]] = numerical_rank(s, w, ft[name])
    return ranks, base, ft


def test_lora_update_has_the_lora_rank_and_caps_large_ranks(tmp_path, tiny_base_dir, tiny_data_dir):
    log = finetune(
        tiny_base_dir,
        tiny_data_dir / "train.jsonl",
        tmp_path,
        TINY_DATASET,
        TINY_HYPER,
        0,
        progress=False,
        recipe=_recipe("lora", rank=20, alpha=40.0),
    )
    ranks, base, ft = _update_ranks(tiny_base_dir, tmp_path)
    # k_proj and v_proj are 16 x 32 in the tiny model: rank 20 is capped to 16.
    assert log["capped_ranks"] == {"k_proj": 16, "v_proj": 16}
    assert ranks["k_proj"] == 16 and ranks["down_proj"] == 20 and ranks["q_proj"] == 20
    norms = [n for n in base if base[n].ndim == 1]
    assert all(torch.equal(base[n], ft[n]) for n in norms)  # LoRA trains the projections only


def test_speclora_update_has_rank_r_plus_k(tmp_path, tiny_base_dir, tiny_data_dir):
    log = finetune(
        tiny_base_dir,
        tiny_data_dir / "train.jsonl",
        tmp_path,
        TINY_DATASET,
        TINY_HYPER,
        0,
        progress=False,
        recipe=_recipe("speclora", top_k=3),
    )
    ranks, _, _ = _update_ranks(tiny_base_dir, tmp_path)
    assert log["speclora_matrices"] == 2 * len(DEFAULT_LORA_TARGETS)
    assert set(ranks.values()) == {4 + 3}


@pytest.mark.parametrize("kind", ["lora", "speclora"])
def test_merged_checkpoint_computes_what_the_trained_model_computed(tiny_base_dir, kind):
    model = load_model(tiny_base_dir)
    recipe = FinetuneRecipe.from_mapping({**_recipe(kind, top_k=3), "hyper": TINY_HYPER})
    wrapped, _ = _wrap_for_recipe(model, recipe)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in wrapped.parameters():
            if parameter.requires_grad:  # move every trainable parameter off its initial value
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with torch.no_grad():
        before = wrapped(input_ids=ids).logits
        merged = _merge_recipe(wrapped, recipe)
        after = merged(input_ids=ids).logits
    assert not any("lora" in name or "parametrizations" in name for name in merged.state_dict())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_hook_sensitivities_equal_dense_gradient_projections(tmp_path, tiny_base_dir, tiny_data_dir, tiny_finetuned_dir):
    compute_svd_cache(
        tiny_base_dir / "model.safetensors", tiny_finetuned_dir / "model.safetensors", tmp_path / "svd", progress=False
    )
    factors = tmp_path / "svd" / "factors.safetensors"
    sensitivities = compute_sensitivities(
        tiny_finetuned_dir,
        factors,
        tiny_base_dir / "model.safetensors",
        tiny_data_dir / "train.jsonl",
        TINY_DATASET,
        tmp_path / "s.safetensors",
        calibration_size=6,
        seed=0,
        batch_size=4,
        progress=False,
    )
    assert len(sensitivities) == 2 * 2 * len(DEFAULT_LORA_TARGETS)  # abs and signed, 2 layers x 7 projections
    model, tokenizer = load_model(tiny_finetuned_dir), load_tokenizer(tiny_finetuned_dir)
    formatter = PromptFormatter(tokenizer, TINY_DATASET["prompt"], TINY_DATASET["label_words"])
    base, finetuned = load_file(tiny_base_dir / "model.safetensors"), load_file(tiny_finetuned_dir / "model.safetensors")
    rows = calibration_rows(tiny_data_dir / "train.jsonl", 6, 0)
    assert rows["id"].str.startswith("train-").all()
    for name in ("model.layers.1.self_attn.o_proj.weight", "model.layers.0.mlp.up_proj.weight"):
        weight = dict(model.named_parameters())[name]
        u, _, vh = torch.linalg.svd((finetuned[name] - base[name]).double(), full_matrices=False)
        per_example = []
        for text, label in zip(rows["text"], rows["label"]):
            features = formatter.training_features(text, int(label), 512)
            model.zero_grad()
            loss = per_example_answer_loss(
                model(input_ids=torch.tensor([features["input_ids"]])).logits, torch.tensor([features["labels"]])
            ).sum()
            loss.backward()
            per_example.append(torch.einsum("mk,mn,kn->k", u, weight.grad.double(), vh))
        dense = torch.stack(per_example)
        torch.testing.assert_close(sensitivities[f"abs/{name}"].double(), dense.abs().mean(0), rtol=1e-3, atol=1e-7)
        torch.testing.assert_close(sensitivities[f"signed/{name}"].double(), dense.mean(0), rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize(
    "method, layers_truncated, kinds",
    [
        ("top_k_attention", {0, 1, 2, 3}, {"attn"}),
        ("top_k_mlp", {0, 1, 2, 3}, {"mlp"}),
        ("top_k_first_half", {0, 1}, {"attn", "mlp"}),
        ("top_k_second_half", {2, 3}, {"attn", "mlp"}),
    ],
)
def test_layer_subsets_truncate_only_their_matrices(method, layers_truncated, kinds):
    registered = get_method(method)
    s = torch.linspace(2, 1, 10)
    for layer in range(4):
        for kind, module in (("attn", "self_attn.o_proj"), ("mlp", "mlp.down_proj")):
            context = MatrixContext(f"model.layers.{layer}.{module}.weight", (10, 10), None, 0, registered.defaults, num_layers=4)
            edited, record = split_result(registered.edit(s, context))
            truncated = layer in layers_truncated and kind in kinds
            assert record["truncated"] is truncated
            assert torch.count_nonzero(edited) == (2 if truncated else 10)  # ceil(0.2 * 10)
    embedding = MatrixContext("model.embed_tokens.weight", (10, 10), None, 0, registered.defaults, num_layers=4)
    assert torch.equal(split_result(registered.edit(s, embedding))[0], s)


def test_subspace_alignment_against_known_subspaces(tmp_path):
    g = torch.Generator().manual_seed(0)
    shared = torch.linalg.qr(torch.randn(64, 64, generator=g))[0]
    base, finetuned = {}, {}
    for layer in range(3):
        for module, u in (("o_proj", shared), ("q_proj", torch.linalg.qr(torch.randn(64, 64, generator=g))[0])):
            name = f"model.layers.{layer}.self_attn.{module}.weight"
            # dW = U diag(s) V^T with distinct singular values, so the leading vectors are U's first columns
            v = torch.linalg.qr(torch.randn(64, 64, generator=g))[0]
            base[name] = torch.randn(64, 64, generator=g)
            finetuned[name] = base[name] + (u * torch.linspace(3, 1, 64)) @ v.T
    save_file(base, tmp_path / "base.safetensors")
    save_file(finetuned, tmp_path / "ft.safetensors")
    compute_svd_cache(tmp_path / "base.safetensors", tmp_path / "ft.safetensors", tmp_path / "svd", progress=False)
    results, table = subspace_alignment(
        tmp_path / "svd" / "factors.safetensors", tmp_path / "base.safetensors", tmp_path / "ft.safetensors", top_m=4
    )
    table = table.set_index("module")
    assert table.loc["o_proj", "mean_align_u"] == pytest.approx(1.0)
    assert table.loc["o_proj", "mean_u1_similarity"] == pytest.approx(1.0)
    assert table.loc["q_proj", "mean_align_u"] < 0.3  # random 4-dim subspaces of R^64: about 4 / 64
    assert table.loc["q_proj", "random_align_baseline"] == pytest.approx(4 / 64)
    assert np.allclose(np.diag(results["q_proj"]["align"]), 1.0)
