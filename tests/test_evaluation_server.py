"""The evaluation server: same records as an in-process cell, one load for many cells, and a
clear failure (never a hang) when the server is dead, stuck, or cannot start."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import TINY_DATASET
from spectral_edit.edit.record import EditSpec
from spectral_edit.edit.svd import compute_svd_cache
from spectral_edit.evaluate.cells import evaluate_cell
from spectral_edit.evaluate.client import EvaluationServerError, serve_cell, server_key, socket_dir, supervising_process

RUNTIME = {"device": "cpu", "dtype": "float32"}


@pytest.fixture(autouse=True)
def own_socket_directory(monkeypatch):
    """Each test its own servers (a short path: Unix socket paths are limited to ~107 bytes)."""
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="se-", dir="/tmp")
    monkeypatch.setenv("TMPDIR", directory)
    yield
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_base_dir, tiny_finetuned_dir, tiny_data_dir):
    svd = tmp_path_factory.mktemp("svd")
    compute_svd_cache(tiny_base_dir / "model.safetensors", tiny_finetuned_dir / "model.safetensors", svd, progress=False)
    return {
        "base": tiny_base_dir,
        "finetuned": tiny_finetuned_dir / "model.safetensors",
        "factors": svd / "factors.safetensors",
        "data": tiny_data_dir,
    }


def _request(checkpoint, method: str | None, retention: float | None = None) -> dict:
    request = {
        "eval_path": str(checkpoint["data"] / "eval.jsonl"),
        "meta_path": str(checkpoint["data"] / "meta.json"),
        "dataset_spec": TINY_DATASET,
        "batch_size": 4,
        "cell": {"method": method or "finetuned"},
    }
    if method is None:
        request["weights"] = str(checkpoint["finetuned"])
    else:
        request["edit"] = EditSpec(
            method=method,
            retention=retention,
            factors=checkpoint["factors"],
            finetuned_weights=checkpoint["finetuned"],
        )
    return request


def _serve(checkpoint, request, tmp_path, **kwargs):
    return serve_cell(
        request,
        model_dir=checkpoint["base"],
        checkpoint_files=[checkpoint["finetuned"]],
        runtime=RUNTIME,
        threads=1,
        server_log=tmp_path / "server.log",
        note=lambda *_: None,
        **kwargs,
    )


def _server_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"spectral_edit.evaluate.server" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_cells_through_one_server_equal_cells_in_their_own_process(checkpoint, tmp_path):
    cells = [("top_k", 0.25), ("bottom_k", 0.5), (None, None), ("uniform_shrink", 0.1), ("top_k", 0.25)]
    served = [_serve(checkpoint, _request(checkpoint, m, r), tmp_path, idle_seconds=5) for m, r in cells]
    assert len({record["server"]["pid"] for record in served}) == 1  # one load for all of them
    assert [record["server"]["cells_served"] for record in served] == [1, 2, 3, 4, 5]
    for (method, retention), record in zip(cells, served):
        request = _request(checkpoint, method, retention)
        alone = evaluate_cell(
            model_dir=checkpoint["base"] if method else checkpoint["finetuned"].parent,
            out_path=tmp_path / "alone.json",
            edit=request.pop("edit", None),
            runtime=RUNTIME,
            progress=False,
            **{k: v for k, v in request.items() if k != "weights"},
        )
        # The same model state whatever the previous cell left in the server's model.
        assert record["examples"] == alone["examples"]
        assert record["metrics"] == alone["metrics"]
        # The edit as the cell shows it: the record's fields without its files, then its statistics.
        assert record["edit"] == alone["edit"]
        if method:
            assert list(record["edit"])[:5] == ["method", "params", "retention", "seed", "unedited_params"]
            assert "factors" not in record["edit"] and record["edit"]["retention"] == retention
    assert served[0]["examples"] == served[4]["examples"]


def test_the_server_exits_when_idle_and_when_its_supervisor_exits(checkpoint, tmp_path):
    record = _serve(checkpoint, _request(checkpoint, "top_k", 0.5), tmp_path, idle_seconds=1.5)
    pid = record["server"]["pid"]
    deadline = time.time() + 20
    while pid in _server_processes() and time.time() < deadline:
        time.sleep(0.2)
    assert pid not in _server_processes()
    assert "idle for 2 s: stopping" in (tmp_path / "server.log").read_text()


def test_a_server_that_cannot_load_fails_the_cell_at_once(tmp_path, checkpoint):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not a model")
    started = time.time()
    with pytest.raises(EvaluationServerError, match=r"exited during start-up \(exit code 1\); see .*server.log"):
        serve_cell(
            _request(checkpoint, "top_k", 0.5),
            model_dir=broken,
            checkpoint_files=[checkpoint["finetuned"]],
            runtime=RUNTIME,
            threads=1,
            server_log=tmp_path / "server.log",
            note=lambda *_: None,
        )
    assert time.time() - started < 60


class _FakeServer:
    """Listens where the real server for this checkpoint would, and misbehaves."""

    def __init__(self, checkpoint, behaviour: str):
        key = server_key(checkpoint["base"], [checkpoint["finetuned"]], RUNTIME, 1, supervising_process())
        self.path = socket_dir() / f"{key}.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.path.unlink(missing_ok=True)
        self.listener.bind(str(self.path))
        self.inode = self.path.stat().st_ino
        self.listener.listen(1)
        self.behaviour = behaviour
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        connection, _ = self.listener.accept()
        connection.makefile("rb").readline()
        if self.behaviour == "stops as the cell connects":  # as a server that went idle just then
            self.close()
            connection.close()
        elif self.behaviour == "dies":
            connection.sendall(json.dumps({"heartbeat": 0}).encode() + b"\n")
            connection.close()  # as a killed process's socket is closed by the kernel
        elif self.behaviour == "stuck":
            time.sleep(30)

    def close(self):
        self.listener.close()
        if self.path.exists() and self.path.stat().st_ino == self.inode:  # not a real server's socket
            self.path.unlink()


@pytest.mark.parametrize(
    "behaviour, message",
    [
        ("dies", "closed the connection before answering"),
        ("stuck", "sent nothing for 1 s"),
    ],
)
def test_a_dead_or_stuck_server_fails_the_cell_with_a_clear_message(checkpoint, tmp_path, behaviour, message):
    fake = _FakeServer(checkpoint, behaviour)
    try:
        started = time.time()
        with pytest.raises(EvaluationServerError, match=message):
            _serve(checkpoint, _request(checkpoint, "top_k", 0.5), tmp_path, stall_seconds=1)
        assert time.time() - started < 10
    finally:
        fake.close()


def test_a_server_that_stops_unheard_as_the_cell_connects_is_replaced(checkpoint, tmp_path):
    fake = _FakeServer(checkpoint, "stops as the cell connects")
    try:
        record = _serve(checkpoint, _request(checkpoint, "top_k", 0.5), tmp_path, idle_seconds=1)
    finally:
        fake.close()
    assert record["server"]["cells_served"] == 1 and record["metrics"]["accuracy"] >= 0


def test_a_socket_left_by_a_dead_server_is_replaced(checkpoint, tmp_path):
    key = server_key(checkpoint["base"], [checkpoint["finetuned"]], RUNTIME, 1, supervising_process())
    stale = socket_dir() / f"{key}.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.unlink(missing_ok=True)
    listener.bind(str(stale))
    listener.close()  # the file stays, nobody listens: connecting is refused
    record = _serve(checkpoint, _request(checkpoint, "top_k", 0.5), tmp_path, idle_seconds=1)
    assert record["server"]["cells_served"] == 1 and record["server"]["pid"] != os.getpid()


def test_a_failing_cell_reports_the_servers_error_and_the_server_serves_on(checkpoint, tmp_path):
    bad = _request(checkpoint, "top_k", 0.5)
    bad["eval_path"] = str(tmp_path / "missing.jsonl")
    with pytest.raises(EvaluationServerError, match="evaluation server: .*missing.jsonl"):
        _serve(checkpoint, bad, tmp_path, idle_seconds=3)
    record = _serve(checkpoint, _request(checkpoint, "top_k", 0.5), tmp_path, idle_seconds=3)
    assert record["server"]["cells_served"] == 1  # the failed one did not count


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["/venv/bin/python", "/venv/bin/snakemake", "--cores", "2"], True),
        (["/usr/bin/python3.11", "-m", "snakemake", "-s", "Snakefile"], True),
        (["snakemake", "--profile", "slurm"], True),
        (["bash", "run_snakemake.sh"], False),
        (["/venv/bin/python", "-m", "pytest", "-k", "snakemake"], False),
        (["/venv/bin/python", "/home/u/snakemake-helper.py"], False),
        ([], False),
    ],
)
def test_snakemake_is_recognised_by_its_command_not_by_a_word_in_it(argv, expected):
    from spectral_edit.evaluate.client import is_snakemake

    assert is_snakemake(argv) is expected


def test_a_wrapper_script_does_not_keep_the_server_alive(tmp_path):
    """The server lives no longer than Snakemake itself, not than a script that runs it."""
    import subprocess
    import sys

    fake = tmp_path / "snakemake"  # stands for the console script: python .../bin/snakemake
    probe = "import os; from spectral_edit.evaluate.client import supervising_process as s; print(s(), os.getppid())"
    fake.write_text(f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {probe!r}], check=True)\n")
    wrapper = tmp_path / "run_snakemake.sh"
    wrapper.write_text(f"#!/bin/bash\n{sys.executable} {fake} --cores 2\n")
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    out = subprocess.run([str(wrapper)], capture_output=True, text=True, check=True, env=env).stdout.split()
    supervisor, snakemake_pid = int(out[0]), int(out[1])
    assert supervisor == snakemake_pid  # not the wrapper's bash


def test_a_long_tmpdir_falls_back_to_a_short_socket_directory(tmp_path, monkeypatch):
    long = tmp_path / ("scratch-" + "x" * 120)
    long.mkdir()
    monkeypatch.setenv("TMPDIR", str(long))
    path = socket_dir()
    assert path.parent == Path("/tmp") and len(str(path / ("k" * 20 + ".sock"))) <= 107
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="s", dir="/tmp"))
    try:
        monkeypatch.setenv("TMPDIR", str(short))
        assert socket_dir().parent == short
    finally:
        import shutil

        shutil.rmtree(short)


def test_a_socket_directory_others_can_enter_is_refused_and_stale_files_go(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    shared = tmp_path / f"spectral-edit-{os.getuid()}"
    shared.mkdir(mode=0o700)
    shared.chmod(0o777)  # made beforehand, open to everyone
    with pytest.raises(EvaluationServerError, match=r"socket directory .* is not a private directory of this user"):
        socket_dir()
    shared.chmod(0o700)
    old_lock, new_lock, old_socket = shared / "a.lock", shared / "b.lock", shared / "c.sock"
    for path in (old_lock, new_lock, old_socket):
        path.write_text("")
    day_ago = time.time() - 2 * 86400
    os.utime(old_lock, (day_ago, day_ago))
    os.utime(old_socket, (day_ago, day_ago))
    assert socket_dir() == shared
    assert not old_lock.exists() and not old_socket.exists() and new_lock.exists()


def test_a_cell_is_served_under_a_130_character_tmpdir(checkpoint, tmp_path, monkeypatch):
    scratch = tmp_path / ("job-scratch-" + "x" * 200)
    scratch = Path(str(scratch)[:130])
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    assert len(os.environ["TMPDIR"]) == 130
    record = _serve(checkpoint, _request(checkpoint, "top_k", 0.5), tmp_path, idle_seconds=2)
    assert record["server"]["cells_served"] == 1 and 0 <= record["metrics"]["accuracy"] <= 1
