"""The SVD cache of a fine-tuning update: U, S, V^T of dW = W_ft - W_base per 2-D matrix.

It is computed once per (model, dataset, seed) and reused by every method and retention.
``factors.safetensors`` holds, for each decomposed matrix ``name``:
    U/<name>   (m, r) float32      S/<name>   (r,) float32, descending      Vh/<name>  (r, n)
with r = min(m, n), and for every tensor that is not decomposed (norms, biases, and the
embeddings when they are excluded) its fine-tuned value under ``finetuned/<name>``, so an edited
model is built from the base weights and this one file.
``spectrum.json`` holds per-matrix statistics: shape, singular values, Frobenius norms and the
fraction of components that hold 90% of the spectral energy sum(sigma^2).
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .atomic import atomic_path, write_json
from .errors import CheckpointMismatchError

log = logging.getLogger(__name__)

# Token embeddings and output heads: by name, as transformers' decoder-only models call them.
EMBEDDING_PATTERN = re.compile(r"(^|\.)(embed_tokens|wte|wpe|word_embeddings|embed_in|embed_out|lm_head)(\.|$)")
ENERGY_LEVEL = 0.9


def is_embedding(name: str) -> bool:
    return bool(EMBEDDING_PATTERN.search(name))


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def check_matching(base: dict[str, tuple], finetuned: dict[str, tuple], base_name="base", ft_name="fine-tuned") -> None:
    """Raise a one-line error at the first tensor whose name or shape differs."""
    only_base = sorted(set(base) - set(finetuned))
    only_ft = sorted(set(finetuned) - set(base))
    if only_base:
        raise CheckpointMismatchError(f"checkpoint mismatch: {only_base[0]!r} is in the {base_name} checkpoint but not the {ft_name} one")
    if only_ft:
        raise CheckpointMismatchError(f"checkpoint mismatch: {only_ft[0]!r} is in the {ft_name} checkpoint but not the {base_name} one")
    for key in sorted(base):
        if base[key] != finetuned[key]:
            raise CheckpointMismatchError(
                f"checkpoint mismatch: {key!r} has shape {base[key]} in the {base_name} checkpoint "
                f"but {finetuned[key]} in the {ft_name} one"
            )


def decomposed_names(shapes: dict[str, tuple], include_embeddings: bool) -> list[str]:
    """The 2-D matrices to decompose: biases and norms (1-D) never; embeddings by the switch."""
    return [k for k in sorted(shapes) if len(shapes[k]) == 2 and (include_embeddings or not is_embedding(k))]


def energy_fraction(singular_values: torch.Tensor | np.ndarray, level: float = ENERGY_LEVEL) -> tuple[int, float]:
    """(k, k/r): the fewest leading components holding ``level`` of sum(sigma^2)."""
    s = np.asarray(singular_values, dtype=np.float64)
    total = float((s**2).sum())
    if total == 0.0:
        return 0, math.nan
    cumulative = np.cumsum(s**2) / total
    k = int(np.searchsorted(cumulative, level - 1e-12) + 1)
    return k, k / len(s)


def numerical_rank(singular_values: torch.Tensor, base: torch.Tensor, finetuned: torch.Tensor) -> int:
    """Components above the fp32 rounding noise of W_ft - W_base.

    Each weight is stored in fp32, so the difference carries rounding errors of about
    eps * |W| per entry; a noise matrix of that size has singular values up to about
    eps * rms(W) * (sqrt(m) + sqrt(n)). A LoRA update of rank r has r components above it.
    """
    m, n = base.shape
    rms = max(float(base.double().pow(2).mean().sqrt()), float(finetuned.double().pow(2).mean().sqrt()))
    floor = torch.finfo(torch.float32).eps * rms * (math.sqrt(m) + math.sqrt(n))
    return int((singular_values > floor).sum())


def svd_of_update(base: torch.Tensor, finetuned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of finetuned - base, computed in float64 and returned as float32."""
    delta = finetuned.double() - base.double()
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return u.float().contiguous(), s.float().contiguous(), vh.float().contiguous()


def compute_svd_cache(
    base_weights: str | Path,
    finetuned_weights: str | Path,
    out_dir: str | Path,
    include_embeddings: bool = True,
    progress: bool = True,
) -> dict:
    """Decompose every selected dW and write factors.safetensors and spectrum.json."""
    base_shapes, ft_shapes = tensor_shapes(base_weights), tensor_shapes(finetuned_weights)
    check_matching(base_shapes, ft_shapes)
    names = decomposed_names(base_shapes, include_embeddings)
    if not names:
        raise CheckpointMismatchError(f"no 2-D weight matrix to decompose in {base_weights}")
    tensors: dict[str, torch.Tensor] = {}
    matrices = []
    ranks: dict[str, int] = {}
    with safe_open(str(base_weights), framework="pt") as base, safe_open(str(finetuned_weights), framework="pt") as ft:
        for name in tqdm(names, desc="svd", unit="matrix", disable=not progress, mininterval=5):
            w_base, w_ft = base.get_tensor(name), ft.get_tensor(name)
            u, s, vh = svd_of_update(w_base, w_ft)
            tensors[f"U/{name}"], tensors[f"S/{name}"], tensors[f"Vh/{name}"] = u, s, vh
            k90, frac90 = energy_fraction(s)
            ranks[name] = numerical_rank(s, w_base, w_ft)
            delta_norm = float(torch.linalg.vector_norm(s.double()))
            base_norm = float(torch.linalg.vector_norm(w_base.double()))
            matrices.append({
                "name": name,
                "shape": list(w_base.shape),
                "rank": int(s.numel()),
                "numerical_rank": ranks[name],
                "energy90_components": k90,
                "energy90_fraction": frac90,
                "delta_frobenius": delta_norm,
                "relative_update": delta_norm / base_norm if base_norm > 0 else math.nan,
                "singular_values": [float(x) for x in s],
            })
        for name in sorted(set(ft_shapes) - set(names)):
            tensors[f"finetuned/{name}"] = ft.get_tensor(name).contiguous()
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "factors.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"decomposed": json.dumps(names), "numerical_rank": json.dumps(ranks)})
    fractions = [m["energy90_fraction"] for m in matrices if not math.isnan(m["energy90_fraction"])]
    spectrum = {
        "include_embeddings": include_embeddings,
        "energy_level": ENERGY_LEVEL,
        "n_matrices": len(matrices),
        "mean_energy90_fraction": float(np.mean(fractions)) if fractions else math.nan,
        "passthrough": sorted(set(ft_shapes) - set(names)),
        "matrices": matrices,
    }
    write_json(out_dir / "spectrum.json", spectrum)
    log.info(
        "SVD cache: %d matrices, mean 90%%-energy fraction %.3f", len(matrices), spectrum["mean_energy90_fraction"]
    )
    return spectrum


def cached_names(factors_path: str | Path) -> tuple[list[str], list[str]]:
    """(decomposed matrix names, passthrough tensor names) stored in a factors file."""
    with safe_open(str(factors_path), framework="pt") as handle:
        decomposed = json.loads(handle.metadata()["decomposed"])
        passthrough = [k[len("finetuned/"):] for k in handle.keys() if k.startswith("finetuned/")]
    return decomposed, sorted(passthrough)


def cached_numerical_ranks(factors_path: str | Path) -> dict[str, int]:
    with safe_open(str(factors_path), framework="pt") as handle:
        return json.loads(handle.metadata().get("numerical_rank", "{}"))


def read_spectrum(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def iter_factors(factors_path: str | Path, names: Iterable[str]):
    """Yield (name, U, S, Vh) one matrix at a time (lazy reads: the file is not held whole)."""
    with safe_open(str(factors_path), framework="pt") as handle:
        for name in names:
            yield name, handle.get_tensor(f"U/{name}"), handle.get_tensor(f"S/{name}"), handle.get_tensor(f"Vh/{name}")
