"""The SVD cache of a fine-tuning update dW = W_ft - W_base, compact: per 2-D matrix, the
singular values and the singular vectors of the matrix's smaller side only.

This module is the file format, written and read. It is computed once per (model, dataset, seed)
(spectral_edit.edit.svd) and reused by every method and retention (spectral_edit.edit.rebuild).
``factors.safetensors`` holds, for each decomposed matrix ``name`` of shape (m, n), r = min(m, n):
    S/<name>   (r,) float32, descending
    V/<name>   (n, r) float32 when n <= m (the right singular vectors), or
    U/<name>   (m, r) float32 when m < n (the left ones),
and in its metadata the decomposed names, the tensors that are not decomposed (norms, biases,
and the embeddings when they are excluded), and each matrix's numerical rank.

Why not U, S and V^T whole: the larger side's vectors are dW's own columns (or rows) divided by
sigma, so an edit can rebuild them from dW, which it reads from the two checkpoints anyway:
    sum_i s'_i u_i v_i^T = dW V diag(s'/s) V^T = U diag(s'/s) U^T dW.
That stores r x r numbers per matrix instead of (m + n) x r (SmolLM2-135M: 0.28x; the
embedding matrix, 49152 x 576, keeps 576 x 576 instead of 49728 x 576).
``spectrum.json`` holds per-matrix statistics: shape, singular values, Frobenius norms and the
fraction of components that hold 90% of the spectral energy sum(sigma^2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from spectral_edit.errors import CheckpointMismatchError
from spectral_edit.layout import SVD_CACHE_FORMAT as CACHE_FORMAT
from spectral_edit.safetensors_stream import open_safetensors


def stored_factors(name: str, shape: tuple[int, int], u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> dict:
    """The tensors the cache holds for one (m, n) matrix from its thin SVD: S and the smaller
    side's singular vectors, as columns."""
    if stored_side(shape) == "right":
        return {f"S/{name}": s, f"V/{name}": vh.T.contiguous()}
    return {f"S/{name}": s, f"U/{name}": u}


def cache_metadata(decomposed: list[str], passthrough: list[str], ranks: dict[str, int]) -> dict[str, str]:
    """The metadata of factors.safetensors: its format, what is decomposed and what is not, ranks."""
    return {
        "format": CACHE_FORMAT,
        "decomposed": json.dumps(decomposed),
        "passthrough": json.dumps(passthrough),
        "numerical_rank": json.dumps(ranks),
    }


def _metadata(factors_path: str | Path) -> dict:
    with open_safetensors(factors_path) as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != CACHE_FORMAT:
        raise CheckpointMismatchError(
            f"{factors_path} is not a {CACHE_FORMAT} SVD cache (written by an older version?): delete it and rerun"
        )
    return metadata


def cached_names(factors_path: str | Path) -> tuple[list[str], list[str]]:
    """(decomposed matrix names, names of the tensors that are not decomposed) of a cache."""
    metadata = _metadata(factors_path)
    return json.loads(metadata["decomposed"]), json.loads(metadata["passthrough"])


def cached_numerical_ranks(factors_path: str | Path) -> dict[str, int]:
    return json.loads(_metadata(factors_path).get("numerical_rank", "{}"))


def read_spectrum(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def stored_side(shape: tuple[int, ...]) -> str:
    """Which singular vectors the cache keeps for an (m, n) matrix: those of the smaller side."""
    m, n = shape
    return "right" if n <= m else "left"


def iter_factors(factors_path: str | Path, names: Iterable[str]):
    """Yield (name, S, side, basis) one matrix at a time (lazy reads): ``basis`` holds the
    stored singular vectors as columns, V (n, r) for side "right", U (m, r) for "left"."""
    _metadata(factors_path)
    with open_safetensors(factors_path) as handle:
        keys = set(handle.keys())
        for name in names:
            key = f"V/{name}" if f"V/{name}" in keys else f"U/{name}"
            yield name, handle.get_tensor(f"S/{name}"), "right" if key[0] == "V" else "left", handle.get_tensor(key)
