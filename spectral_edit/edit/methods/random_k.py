"""Random-k control (Shortcuts in the Tail, Sec. 2): keep k singular values chosen uniformly."""

import zlib

import torch

from spectral_edit.edit.methods import MatrixContext, keep_only, kept_count, register


@register("random_k", uses_retention=True, defaults={"seed_offset": 0}, paper="same, control")
def random_k(singular_values: torch.Tensor, context: MatrixContext) -> torch.Tensor:
    """Keep k = ceil(rho*r) singular values drawn uniformly without replacement (control)."""
    k = kept_count(singular_values.numel(), context.retention)
    # One random permutation per (cell seed, matrix), from a stable hash so that every run and
    # process draws the same (Python's hash() is salted per process). Retentions take
    # prefixes of the same permutation, so the kept sets are nested as retention grows.
    key = f"{context.seed}:{context.params.get('seed_offset', 0)}:{context.name}"
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    chosen = torch.randperm(singular_values.numel(), generator=generator)[:k]
    return keep_only(singular_values, chosen)
