"""Multi-process fine-tuning: torchrun with two CPU processes (gloo) against one process."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from conftest import TINY_DATASET, TINY_HYPER
from spectral_edit.distributed import launch_finetune
from spectral_edit.errors import ConfigError
from spectral_edit.finetune import finetune

# Two processes sum the same per-example losses in a different order (each rank averages its
# half, then gradients are all-reduced), so float32 rounding may differ in the last digits.
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 2e-5


def test_two_processes_give_the_loss_curve_of_one(tmp_path, tiny_base_dir, tiny_data_dir, tiny_finetuned_dir):
    arguments = dict(
        base_dir=str(tiny_base_dir),
        train_path=str(tiny_data_dir / "train.jsonl"),
        out_dir=str(tmp_path / "two"),
        dataset_spec=TINY_DATASET,
        hyper=TINY_HYPER,
        seed=0,
        progress=False,
        runtime={"device": "cpu"},
    )
    launch_finetune(2, arguments, log_dir=tmp_path / "ranks")
    two = json.loads((tmp_path / "two" / "train_log.json").read_text())
    one = json.loads((tiny_finetuned_dir / "train_log.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["parallelism"] == "DistributedDataParallel" and two["gradient_checkpointing"]
    curve_one = [entry["loss"] for entry in one["loss_curve"]]
    curve_two = [entry["loss"] for entry in two["loss_curve"]]
    assert len(curve_two) == len(curve_one) == TINY_HYPER["steps"]
    np.testing.assert_allclose(curve_two, curve_one, rtol=0, atol=LOSS_TOLERANCE)
    weights_one, weights_two = (
        load_file(tiny_finetuned_dir / "model.safetensors"),
        load_file(tmp_path / "two" / "model.safetensors"),
    )
    assert set(weights_one) == set(weights_two)
    for name in weights_one:
        np.testing.assert_allclose(weights_two[name].numpy(), weights_one[name].numpy(), rtol=0, atol=WEIGHT_TOLERANCE)
    # The weights moved much further than the tolerance: the comparison is not vacuous.
    base = load_file(tiny_base_dir / "model.safetensors")
    assert max(float((weights_one[n] - base[n]).abs().max()) for n in base) > 100 * WEIGHT_TOLERANCE


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, tiny_base_dir, tiny_data_dir, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="batch_size 8 is not divisible by the 3 processes"):
        finetune(tiny_base_dir, tiny_data_dir / "train.jsonl", tmp_path / "out", TINY_DATASET, TINY_HYPER, seed=0, progress=False)
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ConfigError, match="batch_size 8 is not divisible by the 3 processes"):
        launch_finetune(3, {"hyper": TINY_HYPER})  # refused before any process starts
