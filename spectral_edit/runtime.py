"""Device and dtype of the jobs: ``runtime: {device, dtype}`` in the config.

``auto`` takes a CUDA GPU when there is one and the CPU otherwise, and bf16 on the GPU, fp32 on
the CPU. Checkpoints and the SVD cache are always stored in fp32 and edits are applied in fp32
before the model moves to the evaluation dtype, so a bf16 run changes how the forward pass is
computed, not what is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch

from spectral_edit.errors import ConfigError
from spectral_edit.plan.records import Runtime, with_schema_defaults

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve(runtime: Runtime | Mapping | None = None) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of a runtime record, or of the validated runtime mapping (a job's
    params, a server's spec); None: the schema's defaults."""
    if runtime is None:
        runtime = with_schema_defaults("runtime")
    if not isinstance(runtime, Runtime):
        runtime = Runtime.from_mapping(runtime)
    device_name = runtime.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config: runtime.device is {device_name!r} but no CUDA device is available")
    device = torch.device(device_name)
    dtype_name = runtime.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.type == "cuda" else "float32"
    if dtype_name not in DTYPES:
        raise ConfigError(f"config: runtime.dtype: unknown dtype {dtype_name!r} (known: auto, {', '.join(DTYPES)})")
    return device, DTYPES[dtype_name]


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA out-of-memory (its own exception type) or an allocator failure reported as RuntimeError."""
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def in_halving_batches(
    count: int,
    batch_size: int,
    run: Callable[[int, int], None],
    device: torch.device,
    what: str,
    single: Callable[[int], None] | None = None,
) -> dict:
    """Call ``run(start, stop)`` over items [0, count) in consecutive batches of at most
    ``batch_size``. The configured size is a ceiling: on out-of-memory the batch is halved and
    the same items retried, so one setting works from a laptop CPU to a large GPU. A batch of
    one that still does not fit goes to ``single(start)`` when given (e.g. the same work on the
    CPU), else the error is raised. Errors that are not out-of-memory are raised at once.
    Returns what happened (halvings, fallbacks, the final batch size), for the log."""
    events = {"batch_size": batch_size, "halvings": 0, "fallbacks": 0}
    start, size = 0, max(1, batch_size)
    while start < count:
        stop = min(count, start + size)
        try:
            run(start, stop)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error) or (size == 1 and single is None):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if size > 1:
                size = max(1, size // 2)
                events["halvings"] += 1
                log.warning("%s out of memory on %s: batch size now %d", what, device, size)
                continue
            log.warning("%s: one item does not fit on %s: the fallback takes it", what, device)
            events["fallbacks"] += 1
            single(start)
            stop = start + 1
        start = stop
    events["final_batch_size"] = size
    return events
