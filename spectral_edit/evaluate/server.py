"""The evaluation server: loads a model once and evaluates the cells of its checkpoint.

Started by ``spectral_edit.evaluate.client.serve_cell`` (``python -m spectral_edit.evaluate.server``);
see that module for the protocol and why it exists. One JSON request per connection, answered
by heartbeat lines while the request waits or runs, then one line with the cell's record or an
error. Requests are evaluated one at a time (one model in memory); connections are accepted
concurrently so that a waiting cell keeps hearing from the server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from pathlib import Path

from spectral_edit.edit.record import EditSpec

log = logging.getLogger("evaluation_server")


class Server:
    def __init__(self, path: Path, spec: dict):
        self.path = path
        self.spec = spec
        self.last_activity = time.monotonic()
        self.active = 0
        self.counter = threading.Lock()
        self.queue: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        import torch

        from spectral_edit.evaluate.cells import CellEvaluator  # torch and transformers: only in the server process

        torch.set_num_threads(max(1, int(spec["threads"])))
        self.evaluator = CellEvaluator(spec["model_dir"], spec["runtime"], float(spec["resident_gb"]))
        self.identity = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "load_seconds": round(self.evaluator.load_seconds, 3),
            "threads": torch.get_num_threads(),
        }
        log.info(
            "loaded %s on %s (%s) in %.1f s; torch threads: %d",
            spec["model_dir"],
            self.evaluator.device,
            self.evaluator.dtype,
            self.evaluator.load_seconds,
            torch.get_num_threads(),
        )

    def listen(self) -> None:
        # Bind under a temporary name and rename: a client that sees the socket can connect.
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(temporary))
        listener.listen(64)
        os.replace(temporary, self.path)
        inode = os.stat(self.path).st_ino
        listener.settimeout(1.0)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        log.info("listening on %s", self.path)
        try:
            # Cells are evaluated here, in the main thread: torch's thread settings (set_num_threads,
            # the OpenMP team) belong to the thread that made them.
            while not self.stopping.is_set():
                try:
                    job = self.queue.get(timeout=1.0)
                except queue.Empty:
                    self._check_lifetime()
                    continue
                self._evaluate(*job)
        finally:
            listener.close()
            # Remove the socket file unless a newer server has already replaced it.
            if self.path.exists() and os.stat(self.path).st_ino == inode:
                self.path.unlink(missing_ok=True)
            log.info("stopped after %d cells", self.evaluator.cells_served)

    def _accept(self, listener: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _check_lifetime(self) -> None:
        watched = int(self.spec["watch_pid"])
        if watched > 1 and not _alive(watched):
            log.info("supervising process %d has exited: stopping", watched)
            self.stopping.set()
        elif self.active == 0 and time.monotonic() - self.last_activity > float(self.spec["idle_seconds"]):
            log.info("idle for %.0f s: stopping", float(self.spec["idle_seconds"]))
            self.stopping.set()

    def _evaluate(self, request: dict, answer: dict, done: threading.Event) -> None:
        try:
            started = time.time()
            answer["record"] = self.evaluator.run(**decode_request(request), progress=False)
            answer["server"] = {**self.identity, "cells_served": self.evaluator.cells_served}
            log.info("cell %s: %.1f s", request.get("cell"), time.time() - started)
        except Exception as error:  # reported to the cell, which fails with it
            log.exception("cell %s failed", request.get("cell"))
            answer["error"] = f"{type(error).__name__}: {error}"
        finally:
            done.set()

    def _serve(self, connection: socket.socket) -> None:
        """One connection: queue its request for the main thread, send heartbeats until it is done."""
        from spectral_edit.evaluate.client import HEARTBEAT_S

        with self.counter:
            self.active += 1
        try:
            with connection:
                request = json.loads(connection.makefile("rb").readline())
                answer: dict = {}
                done = threading.Event()
                self.queue.put((request, answer, done))
                while not done.wait(HEARTBEAT_S):
                    connection.sendall(json.dumps({"heartbeat": time.time()}).encode() + b"\n")
                connection.sendall(json.dumps(answer).encode() + b"\n")
        except OSError as error:
            log.warning("client went away: %s", error)
        finally:
            with self.counter:
                self.active -= 1
                self.last_activity = time.monotonic()


def decode_request(request: dict) -> dict:
    """A request as it came over the socket, its edit back as the record the client sent."""
    if request.get("edit") is None:
        return request
    return {**request, "edit": EditSpec.from_json(request["edit"])}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--spec", required=True, help="JSON: model_dir, runtime, threads, idle_seconds, watch_pid")
    parser.add_argument("--log", type=Path, help="append stdout and stderr to this file (a server launched by srun)")
    args = parser.parse_args()
    if args.log is not None:
        # Written by this process itself: srun's own output path would end with the srun client
        # that launched the step, which SLURM kills with the cell's step.
        handle = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(handle, 1)
        os.dup2(handle, 2)
        os.close(handle)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    server = Server(args.socket, json.loads(args.spec))
    signal.signal(signal.SIGTERM, lambda *_: server.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: server.stopping.set())
    server.listen()


if __name__ == "__main__":
    main()
