"""Preemption: a fine-tune killed with SIGKILL and rerun ends with the uninterrupted weights."""

import json
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

from conftest import REPO, TINY_DATASET, TINY_HYPER

HYPER = {**TINY_HYPER, "steps": 8, "batch_size": 4}

# Runs in a fresh process (one thread, as a SLURM job would be pinned). With KILL_AT set, the
# process SIGKILLs itself: right after the checkpoint of step 4 is complete, or in the middle
# of saving the one of step 6 (files written, completion marker not yet).
CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    import spectral_edit.train.finetune as ft

    base, train, out, every, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    if kill_at:
        mark = ft._MarkCheckpointComplete.on_save

        def on_save(self, args, state, control, **kwargs):
            if state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # mid-save: no marker for this checkpoint
            mark(self, args, state, control, **kwargs)

        ft._MarkCheckpointComplete.on_save = on_save
    ft.finetune(base, train, out, json.loads(os.environ["DATASET"]), json.loads(os.environ["HYPER"]), seed=0,
                progress=False, checkpoint_every=every)
    """
)


def _run(tmp_path, out, every, kill_at=0, threads=1):
    env = {"DATASET": json.dumps(TINY_DATASET), "HYPER": json.dumps(HYPER), "PATH": "/usr/bin:/bin", "THREADS": str(threads)}
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path["base"]), str(tmp_path["train"]), str(out), str(every), str(kill_at)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_sigkilled_finetune_resumes_to_the_same_weights(tmp_path, tiny_base_dir, tiny_data_dir):
    paths = {"base": tiny_base_dir, "train": tiny_data_dir / "train.jsonl"}
    straight = _run(paths, tmp_path / "straight", every=0)
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "killed"
    killed = _run(paths, out, every=2, kill_at=6)
    assert killed.returncode == -9  # SIGKILL
    assert not (out / "model.safetensors").exists()  # nothing that looks complete
    checkpoints = sorted(p.name for p in (out / ".checkpoints").iterdir())
    assert "checkpoint-6" in checkpoints and not (out / ".checkpoints/checkpoint-6/checkpoint-complete.json").exists()
    assert (out / ".checkpoints/checkpoint-4/checkpoint-complete.json").exists()

    resumed = _run(paths, out, every=2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    log = json.loads((out / "train_log.json").read_text())
    assert log["resumed_from_step"] == 4
    assert [e["step"] for e in log["loss_curve"]] == list(range(1, 9))  # the curve spans the kill
    assert not (out / ".checkpoints").exists()  # removed once the model is saved

    expected, got = load_file(tmp_path / "straight/model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(got) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    straight_log = json.loads((tmp_path / "straight/train_log.json").read_text())
    assert [e["loss"] for e in log["loss_curve"]] == [e["loss"] for e in straight_log["loss_curve"]]


def test_checkpoints_of_another_run_are_not_resumed(tmp_path, tiny_base_dir, tiny_data_dir):
    from spectral_edit.train.finetune import newest_complete_checkpoint, run_fingerprint

    train = tiny_data_dir / "train.jsonl"
    mine = run_fingerprint(train, TINY_DATASET, HYPER, 0, {"kind": "full"})
    other = run_fingerprint(train, TINY_DATASET, {**HYPER, "learning_rate": 1e-3}, 0, {"kind": "full"})
    assert mine != other
    for step, fingerprint in ((2, mine), (4, other), (6, mine)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "checkpoint-complete.json").write_text(json.dumps({"fingerprint": fingerprint}))
    (tmp_path / "checkpoint-8").mkdir()  # partial: no marker
    assert newest_complete_checkpoint(tmp_path, mine).name == "checkpoint-6"
    assert newest_complete_checkpoint(tmp_path, other).name == "checkpoint-4"
    assert newest_complete_checkpoint(tmp_path / "absent", mine) is None


def test_a_checkpoint_written_with_another_thread_count_is_not_resumed(tmp_path, tiny_base_dir, tiny_data_dir):
    """Steps resumed on another thread count would end in weights that no uninterrupted run gives:
    the rerun starts over and ends as an uninterrupted run with its own count."""
    paths = {"base": tiny_base_dir, "train": tiny_data_dir / "train.jsonl"}
    out = tmp_path / "killed"
    assert _run(paths, out, every=2, kill_at=6, threads=1).returncode == -9
    assert (out / ".checkpoints/checkpoint-4/checkpoint-complete.json").exists()
    rerun = _run(paths, out, every=2, threads=2)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads((out / "train_log.json").read_text())["resumed_from_step"] is None
    straight = _run(paths, tmp_path / "straight", every=0, threads=2)
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected, got = load_file(tmp_path / "straight/model.safetensors"), load_file(out / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
