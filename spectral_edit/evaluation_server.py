"""The evaluation server: loads a model once and evaluates the cells of its checkpoint.

Started by ``evaluation_client.serve_cell`` (``python -m spectral_edit.evaluation_server``);
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
import signal
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger("evaluation_server")


class Server:
    def __init__(self, path: Path, spec: dict):
        self.path = path
        self.spec = spec
        self.work = threading.Lock()
        self.last_activity = time.monotonic()
        self.active = 0
        self.counter = threading.Lock()
        self.stopping = threading.Event()
        from .cells import CellEvaluator  # torch and transformers: only in the server process

        import torch

        torch.set_num_threads(max(1, int(spec["threads"])))
        self.evaluator = CellEvaluator(spec["model_dir"], spec["runtime"])
        self.identity = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                         "load_seconds": round(self.evaluator.load_seconds, 3)}
        log.info("loaded %s on %s (%s) in %.1f s", spec["model_dir"], self.evaluator.device, self.evaluator.dtype,
                 self.evaluator.load_seconds)

    def listen(self) -> None:
        # Bind under a temporary name and rename: a client that sees the socket can connect.
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(temporary))
        listener.listen(64)
        os.replace(temporary, self.path)
        inode = os.stat(self.path).st_ino
        listener.settimeout(1.0)
        log.info("listening on %s", self.path)
        try:
            while not self.stopping.is_set():
                try:
                    connection, _ = listener.accept()
                except socket.timeout:
                    self._check_lifetime()
                    continue
                threading.Thread(target=self._serve, args=(connection,), daemon=True).start()
        finally:
            listener.close()
            # Remove the socket file unless a newer server has already replaced it.
            if self.path.exists() and os.stat(self.path).st_ino == inode:
                self.path.unlink(missing_ok=True)
            log.info("stopped after %d cells", self.evaluator.cells_served)

    def _check_lifetime(self) -> None:
        watched = int(self.spec["watch_pid"])
        if watched > 1 and not _alive(watched):
            log.info("supervising process %d has exited: stopping", watched)
            self.stopping.set()
        elif self.active == 0 and time.monotonic() - self.last_activity > float(self.spec["idle_seconds"]):
            log.info("idle for %.0f s: stopping", float(self.spec["idle_seconds"]))
            self.stopping.set()

    def _serve(self, connection: socket.socket) -> None:
        with self.counter:
            self.active += 1
        done = threading.Event()
        send_lock = threading.Lock()

        def send(message: dict) -> None:
            with send_lock:
                connection.sendall(json.dumps(message).encode() + b"\n")

        def heartbeat() -> None:
            from .evaluation_client import HEARTBEAT_S

            while not done.wait(HEARTBEAT_S):
                try:
                    send({"heartbeat": time.time()})
                except OSError:
                    return

        try:
            with connection:
                request = json.loads(connection.makefile("rb").readline())
                threading.Thread(target=heartbeat, daemon=True).start()
                try:
                    with self.work:
                        started = time.time()
                        record = self.evaluator.run(**request, progress=False)
                    log.info("cell %s: %.1f s", request.get("cell"), time.time() - started)
                    served = {**self.identity, "cells_served": self.evaluator.cells_served}
                    done.set()
                    send({"record": record, "server": served})
                except Exception as error:  # reported to the cell, which fails with it
                    log.exception("cell %s failed", request.get("cell"))
                    done.set()
                    send({"error": f"{type(error).__name__}: {error}"})
        except OSError as error:
            log.warning("client went away: %s", error)
        finally:
            done.set()
            with self.counter:
                self.active -= 1
                self.last_activity = time.monotonic()


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
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    server = Server(args.socket, json.loads(args.spec))
    signal.signal(signal.SIGTERM, lambda *_: server.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: server.stopping.set())
    server.listen()


if __name__ == "__main__":
    main()
