"""Model sources: the packaged GGUF (the embedded default), a local directory, a random model."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_ARCHITECTURE
from spectral_edit.errors import ConfigError
from spectral_edit.models import find_packaged_file, load_model, load_tokenizer, materialise_base_model


def test_local_source_copies_a_saved_model(tmp_path, tiny_base_dir):
    materialise_base_model({"source": "local", "path": str(tiny_base_dir)}, tmp_path)
    original, copy = load_file(tiny_base_dir / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert original.keys() == copy.keys()
    assert all(torch.equal(original[k], copy[k]) for k in original)
    assert load_tokenizer(tmp_path).chat_template is not None


def test_random_source_is_seeded(tmp_path):
    spec = {"source": "random", "architecture": TINY_ARCHITECTURE, "init_seed": 5}
    materialise_base_model(spec, tmp_path / "a")
    materialise_base_model(spec, tmp_path / "b")
    materialise_base_model({**spec, "init_seed": 6}, tmp_path / "c")
    a, b, c = (load_file(tmp_path / x / "model.safetensors") for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert not list(tmp_path.rglob(".incomplete-*"))


def test_missing_distribution_or_file_is_named():
    with pytest.raises(ConfigError, match="'no-such-dist' is not installed"):
        find_packaged_file("no-such-dist", "x.gguf")
    with pytest.raises(ConfigError, match="file 'x.gguf' not found in distribution 'pytest'"):
        find_packaged_file("pytest", "x.gguf")


def test_packaged_smollm2_gguf_converts_to_safetensors(smollm2_dir):
    weights = load_file(smollm2_dir / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape == (49152, 576)
    assert weights["model.embed_tokens.weight"].dtype == torch.float32
    assert len([k for k, v in weights.items() if v.ndim == 2]) == 1 + 7 * 30
    model, tokenizer = load_model(smollm2_dir), load_tokenizer(smollm2_dir)
    assert model.config.tie_word_embeddings and model.config.num_hidden_layers == 30
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    # Evaluation with the prompts' shared head run once equals running every prompt whole.
    from spectral_edit.data.prompts import PromptFormatter
    from spectral_edit.evaluate.scoring import label_log_probs

    formatter = PromptFormatter(
        tokenizer,
        "Review: {text}\nIs the sentiment of this review positive or negative? Answer with one word.",
        ["negative", "positive"],
    )
    texts = [
        "The plot was dreadful. The acting was superb. The ending was gripping.",
        "cinephile42 writes: The script was tedious.",
        "The soundtrack was a real delight and the pacing was clumsy.",
        "Avoid this one.",
        "I loved every minute of it. The humour was charming.",
    ]
    whole = label_log_probs(model, formatter, texts, batch_size=4, progress=False, shared_prefix=False)
    cached = label_log_probs(model, formatter, texts, batch_size=4, progress=False, shared_prefix=True)
    np.testing.assert_allclose(cached, whole, atol=1e-4)
    assert (cached.argmax(1) == whole.argmax(1)).all()
