"""The compact SVD cache on SmolLM2-135M's real fine-tuning update: edits rebuilt from dW and
one side's vectors equal the edits from U, S, V^T whole (the cache it replaced)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_DATASET
from spectral_edit.data import read_split
from spectral_edit.data.prompts import PromptFormatter, examples_of
from spectral_edit.edit.apply import apply_spectral_edit, new_singular_values
from spectral_edit.edit.methods import MatrixContext, get_method
from spectral_edit.edit.svd import decomposed_names, tensor_shapes
from spectral_edit.edit.svd_cache import cached_names
from spectral_edit.evaluate.scoring import label_log_probs
from spectral_edit.models import load_model, load_tokenizer

WEIGHT_TOLERANCE = 1e-5  # largest |difference| of an edited weight; SmolLM2's weights are O(0.1)


@pytest.fixture(scope="module")
def real_update(smollm2_update):
    return smollm2_update


@pytest.fixture(scope="module")
def full_factors(smollm2_dir, real_update):
    """What the full cache held: U, S, V^T of dW, computed in float64 and stored as float32."""
    base, finetuned = load_file(smollm2_dir / "model.safetensors"), load_file(real_update[0] / "model.safetensors")
    names, _ = cached_names(real_update[1])
    return {
        name: tuple(t.float() for t in torch.linalg.svd(finetuned[name].double() - base[name].double(), full_matrices=False))
        for name in names
    }


def _full_factor_edit(base: dict, factors: dict, method: str, retention: float) -> dict:
    """What an edit from the full cache did: W_base + U diag(S') V^T in float32 over the kept components."""
    edited = {}
    registered = get_method(method)
    for name, (u, s, vh) in factors.items():
        context = MatrixContext(name, tuple(base[name].shape), retention, 0, registered.defaults)
        s_new = new_singular_values(registered, s, context)
        kept = torch.nonzero(s_new, as_tuple=True)[0]
        edited[name] = base[name] + (u[:, kept] * s_new[kept]) @ vh[kept]
    return edited


def test_the_cache_is_under_0_3_of_the_full_factors(real_update):
    _, factors, spectrum = real_update
    full = sum(4 * m["rank"] * (m["shape"][0] + m["shape"][1] + 1) for m in spectrum["matrices"])
    assert factors.stat().st_size < 0.3 * full  # 210 MB against 748 MB


@pytest.mark.parametrize("method, retention", [("top_k", 0.01), ("bottom_k", 0.05), ("random_k", 0.2), ("uniform_shrink", 0.01)])
def test_edits_from_the_compact_cache_equal_edits_from_full_factors(
    smollm2_dir, tiny_data_dir, real_update, full_factors, method, retention
):
    finetuned_dir, factors, _ = real_update
    base = load_file(smollm2_dir / "model.safetensors")
    finetuned = load_file(finetuned_dir / "model.safetensors")
    names, _ = cached_names(factors)
    assert names == decomposed_names(tensor_shapes(smollm2_dir / "model.safetensors"), True)
    reference = _full_factor_edit(base, full_factors, method, retention)

    model = load_model(smollm2_dir)
    apply_spectral_edit(
        model, factors, get_method(method), {}, retention, 0, finetuned_weights=finetuned_dir / "model.safetensors"
    )
    state = model.state_dict()
    worst = max(float((state[name] - reference[name]).abs().max()) for name in names)
    assert worst <= WEIGHT_TOLERANCE

    # Predictions of the two edited models on the evaluation prompts: exactly the same.
    old = load_model(smollm2_dir)
    old.load_state_dict({**old.state_dict(), **reference, **{k: v for k, v in finetuned.items() if k not in reference}})
    formatter = PromptFormatter(load_tokenizer(smollm2_dir), TINY_DATASET["prompt"], TINY_DATASET["label_words"])
    examples = examples_of(read_split(tiny_data_dir / "eval.jsonl"), ["text"])
    new_scores = label_log_probs(model, formatter, examples, batch_size=8, progress=False)
    old_scores = label_log_probs(old, formatter, examples, batch_size=8, progress=False)
    assert (new_scores.argmax(1) == old_scores.argmax(1)).all()
    assert abs(new_scores - old_scores).max() < 1e-3
