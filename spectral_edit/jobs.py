"""Per-job set-up for workflow scripts: a log file, thread count, and timing."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from pathlib import Path


@contextlib.contextmanager
def job_logging(log_path: str | Path | None, threads: int = 1, name: str = "job", pin_torch: bool = True):
    """Log to ``log_path`` (and stderr) for the duration of a job; pin torch to ``threads``
    (``pin_torch=False``: a job that does not import torch, e.g. an evaluation server's client).

    A fixed thread count also keeps CPU results reproducible: the reduction order of matrix
    products depends on it.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")
    logger = logging.getLogger(name)
    if pin_torch:
        import torch

        torch.set_num_threads(max(1, int(threads)))
        logger.info("start (torch threads: %d)", torch.get_num_threads())
    else:
        logger.info("start")
    started = time.time()
    try:
        yield logger
    except Exception:
        logger.exception("failed after %.1f s", time.time() - started)
        raise
    logger.info("done in %.1f s", time.time() - started)
