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
from tqdm.auto import tqdm

from .atomic import write_json
from .errors import CheckpointMismatchError
from .safetensors_stream import StreamingSafetensorsWriter
from .runtime import is_out_of_memory

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


def _noise_floor(shape: tuple[int, int], base_norm: float, finetuned_norm: float) -> float:
    m, n = shape
    rms = max(base_norm, finetuned_norm) / math.sqrt(m * n)
    return torch.finfo(torch.float32).eps * rms * (math.sqrt(m) + math.sqrt(n))


def numerical_rank(singular_values: torch.Tensor, base: torch.Tensor, finetuned: torch.Tensor) -> int:
    """Components above the fp32 rounding noise of W_ft - W_base.

    Each weight is stored in fp32, so the difference carries rounding errors of about
    eps * |W| per entry; a noise matrix of that size has singular values up to about
    eps * rms(W) * (sqrt(m) + sqrt(n)). A LoRA update of rank r has r components above it.
    """
    floor = _noise_floor(tuple(base.shape), _norm(base), _norm(finetuned))
    return int((singular_values > floor).sum())


def _norm(tensor: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(tensor, dtype=torch.float64))


def svd_of_update(base: torch.Tensor, finetuned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of finetuned - base, computed in float64 and returned as float32 (the cache's way)."""
    u, s, vh = _svd_batch((finetuned.double() - base.double())[None], torch.device("cpu"))
    return u[0].contiguous(), s[0].contiguous(), vh[0].contiguous()


def _svd_batch(deltas: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched thin SVD of a (b, m, n) stack: fp32 on a GPU, float64 on the CPU (cheap there)."""
    if device.type == "cpu":
        u, s, vh = torch.linalg.svd(deltas.double(), full_matrices=False)
    else:
        u, s, vh = torch.linalg.svd(deltas.to(device, torch.float32), full_matrices=False)
    return u.float().cpu(), s.float().cpu(), vh.float().cpu()


def batched_svds(
    deltas: list[torch.Tensor], device: torch.device, batch_size: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], dict]:
    """SVDs of same-shape matrices, ``batch_size`` at a time on ``device``.

    On out-of-memory the batch is halved and retried; a single matrix that still does not fit
    goes to the CPU. Returns the factors in input order and what happened (for the log).
    """
    results: list = []
    events = {"device": str(device), "batch_size": batch_size, "halvings": 0, "cpu_fallbacks": 0}
    start, size = 0, max(1, batch_size)
    while start < len(deltas):
        chunk = deltas[start:start + size]
        try:
            u, s, vh = _svd_batch(chunk[0][None] if len(chunk) == 1 else torch.stack(chunk), device)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error) or device.type == "cpu":
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if size > 1:
                size = max(1, size // 2)
                events["halvings"] += 1
                log.warning("SVD out of memory on %s: batch size now %d", device, size)
                continue
            log.warning("SVD of one %s matrix does not fit on %s: computed on the CPU", tuple(chunk[0].shape), device)
            events["cpu_fallbacks"] += 1
            u, s, vh = _svd_batch(chunk[0][None], torch.device("cpu"))
        results.extend(zip(u.unbind(0), s.unbind(0), vh.unbind(0)))
        start += len(chunk)
    events["final_batch_size"] = size
    return [(u.contiguous(), s.contiguous(), vh.contiguous()) for u, s, vh in results], events


def _shape_batches(names: list[str], shapes: dict[str, tuple], batch_size: int) -> list[list[str]]:
    """Names grouped by shape, in runs of at most ``batch_size`` (order within a shape kept)."""
    by_shape: dict[tuple, list[str]] = {}
    for name in names:
        by_shape.setdefault(tuple(shapes[name]), []).append(name)
    return [group[i:i + batch_size] for group in by_shape.values() for i in range(0, len(group), batch_size)]


def compute_svd_cache(
    base_weights: str | Path,
    finetuned_weights: str | Path,
    out_dir: str | Path,
    include_embeddings: bool = True,
    progress: bool = True,
    device: str | torch.device = "cpu",
    batch_size: int = 1,
) -> dict:
    """Decompose every selected dW and write factors.safetensors and spectrum.json.

    Memory is bounded by one batch: tensors are read lazily (``safe_open``) a batch of
    same-shape matrices at a time and the factors are streamed to disk as they are computed,
    so the base model, the fine-tuned model and all factors are never held at once.
    """
    device = torch.device(device)
    base_shapes, ft_shapes = tensor_shapes(base_weights), tensor_shapes(finetuned_weights)
    check_matching(base_shapes, ft_shapes)
    names = decomposed_names(base_shapes, include_embeddings)
    if not names:
        raise CheckpointMismatchError(f"no 2-D weight matrix to decompose in {base_weights}")
    batch_size = max(1, int(batch_size))
    records: dict[str, dict] = {}
    ranks: dict[str, int] = {}
    out_dir = Path(out_dir)
    fallbacks = {"halvings": 0, "cpu_fallbacks": 0}
    with StreamingSafetensorsWriter(out_dir / "factors.safetensors") as writer, \
            safe_open(str(base_weights), framework="pt") as base, \
            safe_open(str(finetuned_weights), framework="pt") as ft, \
            tqdm(total=len(names), desc="svd", unit="matrix", disable=not progress, mininterval=5) as bar:
        for batch in _shape_batches(names, base_shapes, batch_size):
            # Only the norms of W_base and W_ft are needed after the difference: each pair is
            # dropped as soon as its dW exists, so a batch holds dW and its factors, not the weights.
            deltas, norms = [], []
            for name in batch:
                w_base, w_ft = base.get_tensor(name), ft.get_tensor(name)
                norms.append((tuple(w_base.shape), _norm(w_base), _norm(w_ft)))
                deltas.append(w_ft.double() - w_base.double() if device.type == "cpu" else w_ft.float() - w_base.float())
                del w_base, w_ft
            factors, events = batched_svds(deltas, device, batch_size)
            del deltas
            for key in fallbacks:
                fallbacks[key] += events[key]
            batch_size = events["final_batch_size"]  # keep a halved size for the next batches
            for name, (shape, base_norm, ft_norm), (u, s, vh) in zip(batch, norms, factors):
                writer.add(f"U/{name}", u)
                writer.add(f"S/{name}", s)
                writer.add(f"Vh/{name}", vh)
                ranks[name] = int((s > _noise_floor(shape, base_norm, ft_norm)).sum())
                records[name] = _matrix_record(name, shape, base_norm, s, ranks[name])
            del factors
            bar.update(len(batch))
        for name in sorted(set(ft_shapes) - set(names)):
            writer.add(f"finetuned/{name}", ft.get_tensor(name))
        writer.close({"decomposed": json.dumps(names), "numerical_rank": json.dumps(ranks)})
    matrices = [records[name] for name in names]
    fractions = [m["energy90_fraction"] for m in matrices if not math.isnan(m["energy90_fraction"])]
    spectrum = {
        "include_embeddings": include_embeddings,
        "energy_level": ENERGY_LEVEL,
        "n_matrices": len(matrices),
        "mean_energy90_fraction": float(np.mean(fractions)) if fractions else math.nan,
        "passthrough": sorted(set(ft_shapes) - set(names)),
        "device": str(device),
        "oom_batch_halvings": fallbacks["halvings"],
        "oom_cpu_fallbacks": fallbacks["cpu_fallbacks"],
        "matrices": matrices,
    }
    write_json(out_dir / "spectrum.json", spectrum)
    log.info(
        "SVD cache: %d matrices on %s, mean 90%%-energy fraction %.3f", len(matrices), device,
        spectrum["mean_energy90_fraction"],
    )
    return spectrum


def _matrix_record(name: str, shape: tuple[int, int], base_norm: float, s: torch.Tensor, numerical: int) -> dict:
    k90, frac90 = energy_fraction(s)
    delta_norm = float(torch.linalg.vector_norm(s.double()))
    return {
        "name": name,
        "shape": list(shape),
        "rank": int(s.numel()),
        "numerical_rank": numerical,
        "energy90_components": k90,
        "energy90_fraction": frac90,
        "delta_frobenius": delta_norm,
        "relative_update": delta_norm / base_norm if base_norm > 0 else math.nan,
        "singular_values": [float(x) for x in s],
    }


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
