"""Multi-process fine-tuning: torchrun with two CPU processes (gloo), FSDP2-sharded as on GPUs,
against one process; a preempted sharded run resumed."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TINY_DATASET, TINY_HYPER
from spectral_edit.errors import ConfigError
from spectral_edit.train.distributed import launch_finetune
from spectral_edit.train.finetune import finetune

# Two processes sum the same per-example losses in a different order (each rank averages its
# half, then gradients are reduce-scattered), so float32 rounding may differ in the last digits.
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 2e-5


@pytest.mark.parametrize("processes", [2, 1])
def test_sharded_processes_give_the_loss_curve_and_weights_of_one_unsharded(
    processes, tmp_path, tiny_base_dir, tiny_data_dir, tiny_finetuned_dir
):
    """The launch a multi-GPU fine-tune takes, on CPU processes; one process is a group of one
    (the one-GPU run of bench/gpu_check.sh), sharded all the same."""
    arguments = dict(
        base_dir=str(tiny_base_dir),
        train_path=str(tiny_data_dir / "train.jsonl"),
        out_dir=str(tmp_path / "two"),
        dataset_spec=TINY_DATASET,
        hyper=TINY_HYPER,
        seed=0,
        progress=False,
        runtime={"device": "cpu", "dtype": "auto"},
    )
    launch_finetune(processes, arguments, log_dir=tmp_path / "ranks")
    two = json.loads((tmp_path / "two" / "train_log.json").read_text())
    one = json.loads((tiny_finetuned_dir / "train_log.json").read_text())
    assert two["processes"] == processes and one["processes"] == 1 and one["parallelism"] is None
    # FSDP2 on the CPU processes: the model sharded, one unit per decoder layer (its
    # _no_split_modules), with FSDP's own activation checkpointing.
    assert two["parallelism"] == "FSDPLlamaForCausalLM" and two["gradient_checkpointing"], two["parallelism"]
    layers = {name.split(".")[2] for name in load_file(tiny_base_dir / "model.safetensors") if ".layers." in name}
    assert two["fsdp_unit_classes"]["LlamaDecoderLayer"] == len(layers) == 2
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


RESUME_HYPER = {**TINY_HYPER, "steps": 8, "batch_size": 4}


def _sharded_run(tmp_path, out, every, kill_at=0) -> subprocess.CompletedProcess:
    arguments = tmp_path / f"arguments-{out.name}-{kill_at}.json"
    arguments.write_text(
        json.dumps(
            dict(
                base_dir=str(tmp_path.parent / "base"),
                train_path=str(tmp_path.parent / "train.jsonl"),
                out_dir=str(out),
                dataset_spec=TINY_DATASET,
                hyper=RESUME_HYPER,
                seed=0,
                progress=False,
                runtime={"device": "cpu", "dtype": "auto"},
                checkpoint_every=every,
            )
        )
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        [*command, str(REPO / "tests" / "distributed_child.py"), str(arguments)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT": str(kill_at)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_preempted_sharded_finetune_resumes_to_the_same_weights(tmp_path, tiny_base_dir, tiny_data_dir):
    """Two FSDP processes, rank 0 killed while saving the checkpoint of step 6: the rerun resumes
    the sharded run from step 4 and ends bitwise where an uninterrupted sharded run ends."""
    work = tmp_path / "runs"
    work.mkdir()
    (tmp_path / "base").symlink_to(tiny_base_dir)
    (tmp_path / "train.jsonl").symlink_to(tiny_data_dir / "train.jsonl")
    straight = _sharded_run(work, tmp_path / "straight", every=0)
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "killed"
    killed = _sharded_run(work, out, every=2, kill_at=6)
    assert killed.returncode != 0 and not (out / "model.safetensors").exists()
    # The sharded run's checkpoint: accelerate's FSDP files (weights and optimizer gathered
    # from the shards) and one RNG state per rank.
    for name in ("checkpoint-complete.json", "pytorch_model_fsdp.bin", "optimizer.bin", "rng_state_1.pth"):
        assert (out / ".checkpoints/checkpoint-4" / name).exists(), name
    assert not (out / ".checkpoints/checkpoint-6/checkpoint-complete.json").exists()
    resumed = _sharded_run(work, out, every=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = json.loads((out / "train_log.json").read_text())
    assert log["resumed_from_step"] == 4 and log["parallelism"] == "FSDPLlamaForCausalLM"
    straight_log = json.loads((tmp_path / "straight/train_log.json").read_text())
    assert [e["loss"] for e in log["loss_curve"]] == [e["loss"] for e in straight_log["loss_curve"]]
    expected, got = load_file(tmp_path / "straight/model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(got) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
