"""Client side of the evaluation server: one long-lived process per checkpoint serves its cells.

Standard library only: a cell job that goes through the server never imports torch (about
1.5 s with transformers), so its cost is the server's evaluation pass and a few milliseconds.

Why not Snakemake's service jobs (``service()`` outputs): as verified here (see the README),
a failing consumer fails its whole group and Snakemake removes the outputs of the cells of the
group that had already finished, and a service output always counts as missing, so every cell
of a checkpoint reruns when one is added. Here every cell stays an ordinary job with its own
output; the first cell of a checkpoint starts the server, later ones reuse it.

Lifetime: the server watches the outermost Snakemake process above the cell that started it
(in a SLURM job: the group job's Snakemake in the batch step, since the cells run in ``srun``
steps beside it) and exits within a second of it, and exits on its own after ``idle_seconds``
without a request. In a SLURM job step the server is a job step of its own (``srun --overlap``,
with the job's GPUs): under proctrack/cgroup, every process a step starts dies when the step
ends, detached or not, so a server started as a child of the first cell would die with it.
The ``srun`` that launches the step starts with SIGTERM, SIGINT and SIGHUP ignored: SLURM
signals it when the cell's step ends, and an ``srun`` that heeds the signal cancels its step.
A cell never hangs on it: the server sends a heartbeat line every ``HEARTBEAT_S`` while it
works or queues a request, and the client gives up with a one-line error after
``stall_seconds`` of silence, at once if the server dies, and after ``startup_seconds`` if it
cannot load.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from spectral_edit.edit.record import as_edit_spec

HEARTBEAT_S = 2.0


class EvaluationServerError(RuntimeError):
    """The server could not be started, died, or stopped answering."""


def _file_identity(path: str | os.PathLike) -> list:
    stat = os.stat(path)
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def server_key(model_dir: str | os.PathLike, files: list, runtime: Mapping | None, threads: int, session: int) -> str:
    """One server per (model, checkpoint files as they are now, runtime, threads, Snakemake
    session): a checkpoint rewritten by a rerun (new mtime) gets a new server rather than the
    old weights, and two Snakemake runs never share one (each stops its own)."""
    identity = {
        "session": session,
        "model": _file_identity(Path(model_dir) / "model.safetensors"),
        "files": [_file_identity(f) for f in files],
        "runtime": dict(runtime or {}),
        "threads": threads,
        "python": sys.executable,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


# A Unix socket's path holds at most 107 bytes on Linux (103 on macOS); the key's file name
# takes 25 and the directory's name up to 24, so the base must be short.
SOCKET_PATH_BYTES = 107 if sys.platform.startswith("linux") else 103
STALE_SECONDS = 86400.0


def socket_dir() -> Path:
    """The per-user directory of the servers' sockets: under $TMPDIR (node-local on a cluster:
    the job's scratch), or under /tmp when $TMPDIR is too long for a socket path (per-job
    scratch paths often are). Refused, as ssh-agent refuses, unless it is a real directory of
    this user that nobody else can enter: another user could otherwise put a socket there that
    answers in the server's place. Lock files and sockets a day old that nothing holds are removed."""
    name = f"spectral-edit-{os.getuid()}"
    bases = [Path(os.environ.get("TMPDIR") or tempfile.gettempdir()), Path("/tmp")]
    base = next((b for b in bases if len(os.fsencode(str(b / name / ("k" * 20 + ".sock")))) <= SOCKET_PATH_BYTES), None)
    if base is None:
        raise EvaluationServerError(f"no directory short enough for a socket path: {bases[0]} and /tmp are too long")
    path = base / name
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise EvaluationServerError(
            f"socket directory {path} is not a private directory of this user (owner uid {info.st_uid}, mode "
            f"{stat.filemode(info.st_mode)}): refusing it; remove it, or set TMPDIR to a directory of your own"
        )
    _remove_stale(path)
    return path


def _remove_stale(directory: Path) -> None:
    """Lock files no process holds and sockets no server answers, a day old or more."""
    now = time.time()
    for entry in directory.iterdir():
        try:
            if now - entry.lstat().st_mtime < STALE_SECONDS:
                continue
            if entry.suffix == ".lock":
                with open(entry) as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if someone holds it
                    entry.unlink()
            elif entry.suffix == ".sock":
                connection = _connect(entry)
                if connection is None:
                    entry.unlink()
                else:
                    connection.close()
        except OSError:
            continue


def _parent_and_argv(pid: int) -> tuple[int, list[str]]:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text()
        parent = int(fields.rsplit(")", 1)[1].split()[1])
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        return parent, [a for a in argv if a]
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        pass
    try:  # no /proc (macOS): ps gives the arguments joined by spaces
        out = subprocess.run(["ps", "-o", "ppid=,args=", "-p", str(pid)], capture_output=True, text=True, check=True).stdout
        parent, _, command = out.strip().partition(" ")
        return int(parent), command.split()
    except (subprocess.CalledProcessError, ValueError, FileNotFoundError):
        return 0, []


def is_snakemake(argv: list[str]) -> bool:
    """Whether a command line runs Snakemake itself: its console script (run directly, or by
    the Python of its shebang) or ``python -m snakemake``. Not a wrapper script or a test
    harness that only has "snakemake" somewhere in its arguments."""
    if not argv:
        return False
    if Path(argv[0]).name == "snakemake":
        return True
    if Path(argv[0]).name.startswith("python") and len(argv) > 1:
        return Path(argv[1]).name == "snakemake" or argv[1:3] == ["-m", "snakemake"]
    return False


def _slurm_group_snakemake(job_id: str) -> int:
    """Inside a SLURM job, the job's first Snakemake process: the one the batch script runs for
    the group job. Each cell runs in its own ``srun`` step under it, not below it, so it is
    found by the job id in its environment; the earliest started is the batch step's."""
    found: list[tuple[int, int]] = []
    marker = f"SLURM_JOB_ID={job_id}".encode()
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            argv = [a for a in (entry / "cmdline").read_bytes().decode(errors="replace").split("\0") if a]
            if not is_snakemake(argv) or marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            started = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[19])
        except (OSError, IndexError, ValueError):
            continue
        found.append((started, int(entry.name)))
    return min(found)[1] if found else 0


def supervising_process() -> int:
    """The process the server lives no longer than: in a SLURM job the group job's Snakemake,
    else the outermost Snakemake process above this one, else this process's parent (a
    notebook or a test calling the client directly)."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id:
        pid = _slurm_group_snakemake(job_id)
        if pid:
            return pid
    found, pid = 0, os.getppid()
    for _ in range(64):
        if pid <= 1:
            break
        parent, argv = _parent_and_argv(pid)
        if is_snakemake(argv):
            found = pid
        pid = parent
    return found or os.getppid()


def _connect(path: Path) -> socket.socket | None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
        return client
    except (FileNotFoundError, ConnectionRefusedError):
        client.close()
        return None


def in_slurm_step() -> bool:
    """Whether this process runs in a SLURM job step (``srun``), not the batch script."""
    return bool(os.environ.get("SLURM_JOB_ID")) and os.environ.get("SLURM_STEP_ID", "") not in ("", "batch", "extern")


def slurm_step_command(command: list[str], log_path: Path, threads: int) -> tuple[list[str], dict]:
    """``command`` as a job step of its own in this job: ``srun --overlap`` on this node with the
    cell's cores, the job's memory and GPUs; launched with the terminating signals ignored."""
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_MEM_PER_CPU", "SLURM_MEM_PER_GPU")}
    srun = ["srun", "--overlap", "--ntasks=1", "--nodes=1", f"--cpus-per-task={max(1, int(threads))}", "--mem=0"]
    gpus = os.environ.get("SLURM_GPUS_ON_NODE", "")
    if gpus.isdigit() and int(gpus) > 0:
        srun.append(f"--gpus={gpus}")  # the job's GPUs; --overlap shares them with the cells' steps
    srun += ["--job-name=evaluation-server", f"--output={log_path}", "--open-mode=append", "--input=none"]
    # sh sets the ignored signals, which srun keeps across exec; "$@" passes the words as they are.
    return ["sh", "-c", 'trap "" TERM INT HUP; exec "$@"', "sh", *srun, *command], env


def _start_server(path: Path, spec: Mapping, log_path: Path, startup_seconds: float) -> socket.socket:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "spectral_edit.evaluate.server", "--socket", str(path), "--spec", json.dumps(spec)]
    env = os.environ.copy()
    as_step = in_slurm_step() and shutil.which("srun") is not None
    if as_step:
        command, env = slurm_step_command([*command, "--log", str(log_path)], log_path, int(spec["threads"]))
    with open(log_path, "a") as log:
        how = " as a SLURM job step (srun --overlap)" if as_step else ""
        log.write(f"--- started by pid {os.getpid()}{how} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        log.flush()
        # Its own session: a signal to the cell job that started it does not reach it.
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    deadline = time.monotonic() + startup_seconds
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise EvaluationServerError(f"evaluation server exited during start-up (exit code {code}); see {log_path}")
        connection = _connect(path)
        if connection is not None:
            return connection
        time.sleep(0.2)
    process.kill()
    raise EvaluationServerError(f"evaluation server did not start within {startup_seconds:.0f} s; see {log_path}")


def serve_cell(
    request: Mapping,
    *,
    model_dir: str | os.PathLike,
    checkpoint_files: list,
    runtime: Mapping | None,
    threads: int,
    server_log: str | os.PathLike,
    idle_seconds: float = 300.0,
    resident_gb: float = 16.0,
    startup_seconds: float = 900.0,
    stall_seconds: float = 60.0,
    note=print,
) -> dict:
    """Have the checkpoint's server evaluate one cell (starting the server if none runs) and
    return the cell's record. ``request`` holds :meth:`CellEvaluator.run`'s arguments; its
    ``edit`` (an ``EditSpec``) crosses the socket as the record's JSON."""
    request = encode_request(request)
    supervisor = supervising_process()
    key = server_key(model_dir, checkpoint_files, runtime, threads, supervisor)
    path = socket_dir() / f"{key}.sock"
    spec = {
        "model_dir": str(model_dir),
        "runtime": dict(runtime or {}),
        "threads": threads,
        "idle_seconds": idle_seconds,
        "resident_gb": resident_gb,
        "watch_pid": supervisor,
    }
    for attempt in (1, 2):
        connection = _connect(path)
        if connection is None:
            # One starter at a time: a second cell arriving now waits here, then finds the server.
            with open(path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                connection = _connect(path)
                if connection is None:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()  # a socket file left by a server that died
                    note(f"starting evaluation server {key} with {threads} torch threads (log: {server_log})")
                    connection = _start_server(path, spec, Path(server_log), startup_seconds)
        try:
            return _ask(connection, request, key, server_log, stall_seconds)
        except _ClosedUnheard:
            # Closed before a word: most likely a server that stopped (idle) just as this cell
            # connected. Once more, with a new server if need be.
            if attempt == 2:
                raise EvaluationServerError(
                    f"evaluation server {key} closed the connection before answering (died?); see {server_log}"
                ) from None
            note(f"evaluation server {key} closed the connection unheard; asking again")


def encode_request(request: Mapping) -> dict:
    """A cell's request as JSON types: its edit as :meth:`EditSpec.to_json`'s dict (the server
    reads it back with :meth:`EditSpec.from_json`)."""
    encoded = dict(request)
    if encoded.get("edit") is not None:
        encoded["edit"] = as_edit_spec(encoded["edit"]).to_json()
    return encoded


class _ClosedUnheard(Exception):
    pass


def _ask(connection: socket.socket, request: Mapping, key: str, server_log, stall_seconds: float) -> dict:
    heard = False
    with connection:
        connection.settimeout(stall_seconds)
        connection.sendall(json.dumps(dict(request)).encode() + b"\n")
        stream = connection.makefile("rb")
        while True:
            try:
                line = stream.readline()
            except TimeoutError:
                raise EvaluationServerError(
                    f"evaluation server {key} sent nothing for {stall_seconds:.0f} s (stuck?); see {server_log}"
                ) from None
            except ConnectionError as error:
                raise EvaluationServerError(
                    f"evaluation server {key} dropped the connection ({error}); see {server_log}"
                ) from None
            if not line:
                if not heard:
                    raise _ClosedUnheard
                raise EvaluationServerError(
                    f"evaluation server {key} closed the connection before answering (died?); see {server_log}"
                )
            heard = True
            message = json.loads(line)
            if "heartbeat" in message:
                continue
            if "error" in message:
                raise EvaluationServerError(f"evaluation server: {message['error']} (see {server_log})")
            record = message["record"]
            record["server"] = message["server"]
            return record
