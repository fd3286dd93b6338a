"""Likelihood scoring, answer-only loss, and reproducible fine-tuning on a tiny model."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_DATASET, TINY_HYPER
from spectral_edit.data import read_meta, read_split
from spectral_edit.data.prompts import PromptFormatter
from spectral_edit.errors import ConfigError
from spectral_edit.evaluate.scoring import evaluate_model, label_log_probs, shared_prefix_length
from spectral_edit.models import byte_level_tokenizer, load_model, load_tokenizer
from spectral_edit.train.finetune import finetune


@pytest.fixture(scope="module")
def formatter(tiny_base_dir):
    return PromptFormatter(load_tokenizer(tiny_base_dir), TINY_DATASET["prompt"], TINY_DATASET["label_words"])


def test_training_features_mask_the_prompt(formatter):
    features = formatter.training_features("A fine film.", 1, 512)
    answer = formatter.answer_ids[1]
    n_prompt = len(features["input_ids"]) - len(answer)
    assert features["labels"][:n_prompt] == [-100] * n_prompt
    assert features["labels"][n_prompt:] == answer == features["input_ids"][n_prompt:]
    assert features["input_ids"][:n_prompt] == formatter.prompt_ids("A fine film.")
    assert "<|im_start|>assistant" in formatter.prompt_text("x")


def test_label_words_must_start_differently(tiny_base_dir):
    with pytest.raises(ConfigError, match="distinct tokens"):
        PromptFormatter(load_tokenizer(tiny_base_dir), "{text}", ["positive", "pos"])


def test_batched_scores_equal_one_by_one_and_full_forward(tiny_base_dir, formatter):
    model = load_model(tiny_base_dir)
    texts = ["Short.", "A much longer review that needs plenty of left padding in a batch.", "Medium length text."]
    batched = label_log_probs(model, formatter, texts, batch_size=3, progress=False)
    single = np.vstack([label_log_probs(model, formatter, [t], batch_size=1, progress=False) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # Reference: the plain forward pass of transformers on one unpadded prompt.
    ids = torch.tensor([formatter.prompt_ids(texts[1])])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    expected = torch.log_softmax(logits, -1)[formatter.label_token_ids].numpy()
    np.testing.assert_allclose(batched[1], expected, atol=1e-5)


def test_shared_prefix_path_equals_whole_prompts(tiny_base_dir, formatter):
    model = load_model(tiny_base_dir)
    texts = [f"Review {i}: " + "quite good, " * (i % 4) + "the end." for i in range(9)]
    encoded = [formatter.prompt_ids(t) for t in texts]
    assert shared_prefix_length(encoded) > 5  # the chat template's head and "Review "
    whole = label_log_probs(model, formatter, texts, batch_size=4, progress=False, shared_prefix=False)
    cached = label_log_probs(model, formatter, texts, batch_size=4, progress=False, shared_prefix=True)
    np.testing.assert_allclose(cached, whole, atol=1e-5)
    assert (cached.argmax(1) == whole.argmax(1)).all()


# bf16 (what `auto` evaluates in on a GPU): the shared head's cache against whole prompts within
# 0.01 nats (measured: at most 0.001 on these models), and within 0.05 of fp32 (measured: 0.003).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family, window", [("qwen2", None), ("gemma3_text", 64), ("gemma3_text", 4), ("llama", None)])
def test_shared_prefix_path_on_other_architectures(family, window, dtype):
    """Models of the paper's grid (Qwen2.5, Gemma 3 with sliding-window layers, Llama), tiny and
    random. A window shorter than the prompts turns the shared head off (the whole-prompt path)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {"sliding_window": window, "layer_types": ["sliding_attention", "full_attention"]} if window else {}
    config = AutoConfig.for_model(
        family,
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        **extra,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()

    class Ids:  # a formatter over token ids: every prompt starts with the same 12 tokens
        tokenizer = type("T", (), {"pad_token_id": 0, "eos_token_id": 0})()
        label_token_ids = [5, 6]

        @staticmethod
        def prompt_ids(example):
            return list(range(10, 22)) + example

    prompts = [[30 + i] * (1 + i % 5) + [40, 41] for i in range(7)]
    in_fp32 = label_log_probs(model, Ids, prompts, batch_size=3, progress=False, shared_prefix=False)
    model = model.to(dtype)
    whole = label_log_probs(model, Ids, prompts, batch_size=3, progress=False, shared_prefix=False)
    cached = label_log_probs(model, Ids, prompts, batch_size=3, progress=False, shared_prefix=True)
    one_by_one = np.vstack([label_log_probs(model, Ids, [p], batch_size=1, progress=False) for p in prompts])
    np.testing.assert_allclose(whole, one_by_one, atol=TOLERANCE[dtype])
    np.testing.assert_allclose(cached, whole, atol=TOLERANCE[dtype])
    np.testing.assert_allclose(whole, in_fp32, atol=0.05)
    if dtype == torch.bfloat16:
        assert not np.array_equal(whole, in_fp32)  # the forward pass did run in bf16


def test_shared_prefix_length_leaves_one_token_to_run():
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert shared_prefix_length([[1, 2], [3, 4]]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 0


def test_evaluation_halves_the_batch_on_out_of_memory(tiny_base_dir, formatter):
    model = load_model(tiny_base_dir)
    texts = [f"Review number {i} with some words." * (1 + i % 3) for i in range(7)]
    reference = label_log_probs(model, formatter, texts, batch_size=2, progress=False)
    decoder = model.model
    seen = []

    def oom_above_two(module, args, kwargs):
        seen.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    handle = decoder.register_forward_pre_hook(oom_above_two, with_kwargs=True)
    try:
        scores = label_log_probs(model, formatter, texts, batch_size=8, progress=False)
    finally:
        handle.remove()
    # The prompts' shared head runs once (batch 1); then 8 (capped at the 7 examples), halved twice.
    assert seen[:4] == [1, 7, 4, 2]
    np.testing.assert_allclose(scores, reference, atol=1e-6)


def test_evaluation_reraises_errors_that_are_not_out_of_memory(tiny_base_dir, formatter):
    model = load_model(tiny_base_dir)
    handle = model.model.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    try:
        with pytest.raises(RuntimeError, match="shape mismatch"):
            label_log_probs(model, formatter, ["a", "b"], batch_size=2, progress=False)
    finally:
        handle.remove()


def test_evaluate_model_reports_groups(tiny_base_dir, tiny_data_dir, formatter):
    result = evaluate_model(
        load_model(tiny_base_dir),
        formatter,
        read_split(tiny_data_dir / "eval.jsonl"),
        read_meta(tiny_data_dir / "meta.json"),
        batch_size=8,
        progress=False,
    )
    metrics = result["metrics"]
    assert metrics["n"] == len(result["examples"]) == 20
    assert set(metrics["group_accuracy"]) == {"negative|marker=0", "negative|marker=1", "positive|marker=0", "positive|marker=1"}
    recomputed = np.mean([e["prediction"] == e["label"] for e in result["examples"]])
    assert metrics["accuracy"] == pytest.approx(recomputed)
    for example in result["examples"]:
        assert example["prediction"] == int(np.argmax(example["label_log_probs"]))


def test_finetuning_is_deterministic_and_changes_weights(tmp_path, tiny_base_dir, tiny_data_dir, tiny_finetuned_dir):
    again = finetune(tiny_base_dir, tiny_data_dir / "train.jsonl", tmp_path, TINY_DATASET, TINY_HYPER, seed=0, progress=False)
    first = load_file(tiny_finetuned_dir / "model.safetensors")
    second = load_file(tmp_path / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    base = load_file(tiny_base_dir / "model.safetensors")
    assert any(not torch.equal(base[n], first[n]) for n in base)
    assert len(again["loss_curve"]) == TINY_HYPER["steps"]
    other = finetune(
        tiny_base_dir, tiny_data_dir / "train.jsonl", tmp_path / "s1", TINY_DATASET, TINY_HYPER, seed=1, progress=False
    )
    assert other["loss_curve"] != again["loss_curve"]


def test_byte_level_tokenizer_round_trips():
    tokenizer = byte_level_tokenizer()
    text = "Ünïcode & emoji 🎬 survive"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert len(tokenizer) == 259


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("kind", ["label_words", "instruction"])
def test_the_answer_only_head_trains_as_the_trainers_own_loss(tmp_path, tiny_base_dir, tiny_data_dir, kind, accumulation):
    """The head computed only where the loss reads it: the same loss curve and weights."""
    from spectral_edit.data import prepare_dataset

    if kind == "instruction":
        data = tmp_path / "instructions"
        prepare_dataset({"kind": "instruction", "source": "synthetic_arithmetic", "n_train": 24}, data, "a")
        train, spec = data / "train.jsonl", {"kind": "instruction"}
    else:
        train, spec = tiny_data_dir / "train.jsonl", TINY_DATASET
    hyper = {**TINY_HYPER, "gradient_accumulation_steps": accumulation}
    runs = {}
    for answer_only in (True, False):
        out = tmp_path / f"answer-only-{answer_only}"
        runs[answer_only] = finetune(tiny_base_dir, train, out, spec, hyper, seed=0, progress=False, answer_only_head=answer_only)
        runs[answer_only]["weights"] = load_file(out / "model.safetensors")
    new, trainer = runs[True], runs[False]
    assert np.allclose([e["loss"] for e in new["loss_curve"]], [e["loss"] for e in trainer["loss_curve"]], rtol=1e-5, atol=1e-6)
    for name, tensor in trainer["weights"].items():
        assert torch.allclose(new["weights"][name], tensor, rtol=1e-4, atol=1e-6), name


def test_training_without_filling_new_memory_gives_the_same_weights_bit_for_bit(
    tmp_path, tiny_base_dir, tiny_data_dir, tiny_finetuned_dir, monkeypatch
):
    """Deterministic mode's NaN filling of new tensors is off while training (a speed-up): a
    kernel that read memory it had not written would show here as different weights."""
    import contextlib

    import spectral_edit.train.finetune as ft

    monkeypatch.setattr(ft, "_deterministic_without_filling", contextlib.nullcontext)
    filled = ft.finetune(tiny_base_dir, tiny_data_dir / "train.jsonl", tmp_path, TINY_DATASET, TINY_HYPER, seed=0, progress=False)
    unfilled = json.loads((tiny_finetuned_dir / "train_log.json").read_text())
    assert [e["loss"] for e in filled["loss_curve"]] == [e["loss"] for e in unfilled["loss_curve"]]
    expected = load_file(tiny_finetuned_dir / "model.safetensors")
    for name, tensor in load_file(tmp_path / "model.safetensors").items():
        assert torch.equal(tensor, expected[name]), name


def test_a_batch_larger_than_the_training_split_is_refused(tmp_path, tiny_base_dir, tiny_data_dir):
    with pytest.raises(ConfigError, match=r"^config: finetune.batch_size: 1000 is larger than the 48 training examples$"):
        finetune(tiny_base_dir, tiny_data_dir / "train.jsonl", tmp_path, TINY_DATASET, {**TINY_HYPER, "batch_size": 1000}, seed=0)
    assert not (tmp_path / "model.safetensors").exists()


def test_a_misspelt_architecture_field_is_named():
    from conftest import TINY_ARCHITECTURE
    from spectral_edit.models import build_random_model

    with pytest.raises(ConfigError, match=r"^config: models.tiny.architecture: 'hidden_sizee' is not a LlamaConfig field"):
        build_random_model({"architecture": {**TINY_ARCHITECTURE, "hidden_sizee": 48}}, "tiny")
    model, _ = build_random_model({"architecture": {**TINY_ARCHITECTURE, "rope_theta": 5000.0}}, "tiny")  # consumed: fine
    assert model.config.hidden_size == TINY_ARCHITECTURE["hidden_size"]


def test_a_skewed_training_split_is_named_in_the_finetune_log(tmp_path, caplog):
    from spectral_edit.data import write_jsonl
    from spectral_edit.train.finetune import _log_label_shares

    rows = [{"id": f"t{i}", "text": "x", "label": int(i < 82), "attribute": 0} for i in range(100)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    spec = {"label_words": ["negative", "positive"]}
    with caplog.at_level("INFO", logger="spectral_edit.train.finetune"):
        shares = _log_label_shares(spec, tmp_path / "train.jsonl")
    assert shares == {"negative": 0.18, "positive": 0.82}
    assert "training labels: negative 18 %, positive 82 %" in caplog.text
    assert "82 % of the training examples are labelled 'positive'" in caplog.text and "balance_labels: true" in caplog.text
    assert _log_label_shares({"messages_column": "m"}, tmp_path / "train.jsonl") is None  # instruction data: no labels
