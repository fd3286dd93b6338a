"""Device and dtype of the jobs: ``runtime: {device, dtype}`` in the config.

``auto`` takes a CUDA GPU when there is one and the CPU otherwise, and bf16 on the GPU, fp32 on
the CPU. Checkpoints and the SVD cache are always stored in fp32 and edits are applied in fp32
before the model moves to the evaluation dtype, so a bf16 run changes how the forward pass is
computed, not what is stored.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve(runtime: Mapping | None = None) -> tuple[torch.device, torch.dtype]:
    runtime = dict(runtime or {})
    device_name = runtime.get("device", "auto")
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config: runtime.device is {device_name!r} but no CUDA device is available")
    device = torch.device(device_name)
    dtype_name = runtime.get("dtype", "auto")
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.type == "cuda" else "float32"
    if dtype_name not in DTYPES:
        raise ConfigError(f"config: runtime.dtype: unknown dtype {dtype_name!r} (known: auto, {', '.join(DTYPES)})")
    return device, DTYPES[dtype_name]


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA out-of-memory (its own exception type) or an allocator failure reported as RuntimeError."""
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text
