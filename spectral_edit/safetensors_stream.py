"""Write a safetensors file one tensor at a time.

``safetensors.torch.save_file`` takes a dict of every tensor, so the SVD stage would hold all
factors of a model at once (for a 7B model, tens of GB). The format is simple and documented
(8-byte little-endian header length, a JSON header with dtype, shape and byte offsets, then the
raw bytes), and the library has no incremental writer, hence this one: tensor bytes are appended
to a data file as they are produced and the header is written once all are known. The result is
read back with the library's own ``safe_open`` (the tests check it round-trips).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import torch

from spectral_edit.atomic import atomic_path

DTYPE_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_COPY_CHUNK = 64 << 20


class StreamingSafetensorsWriter:
    """``add(name, tensor)`` appends; ``close(metadata)`` writes the file atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._data_path = self.path.parent / f".{self.path.name}.data.tmp"
        self._data = open(self._data_path, "wb")
        self._entries: dict[str, dict] = {}
        self._offset = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._entries:
            raise ValueError(f"tensor {name!r} written twice")
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.dtype not in DTYPE_CODES:
            raise TypeError(f"tensor {name!r}: dtype {tensor.dtype} is not supported")
        # Raw bytes in the machine's order; safetensors is little-endian, as are x86 and ARM.
        raw = tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        self._data.write(raw)
        self._entries[name] = {
            "dtype": DTYPE_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [self._offset, self._offset + len(raw)],
        }
        self._offset += len(raw)

    def close(self, metadata: dict[str, str] | None = None) -> None:
        self._data.close()
        header = dict(self._entries)
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the format aligns the data section to 8 bytes
        try:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as out, open(self._data_path, "rb") as data:
                out.write(struct.pack("<Q", len(encoded)))
                out.write(encoded)
                shutil.copyfileobj(data, out, _COPY_CHUNK)
        finally:
            self._data_path.unlink(missing_ok=True)

    def abort(self) -> None:
        self._data.close()
        self._data_path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def open_safetensors(path):
    """``safe_open(path)`` for reading torch tensors; a file that is not readable safetensors
    (truncated by a full disk, a killed copy) is one line naming it and saying how to rebuild it."""
    from safetensors import SafetensorError, safe_open

    from spectral_edit.errors import DamagedFileError

    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as error:
        raise DamagedFileError(
            f"{path} is damaged or truncated (safetensors: {error}): delete it and rerun snakemake, which rebuilds it "
            "and what depends on it"
        ) from None
