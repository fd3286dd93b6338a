"""Computing the SVD cache of a fine-tuning update dW = W_ft - W_base: which matrices are
decomposed, their SVDs (batched by shape, on a GPU when there is one), their numerical ranks
and spectral statistics. The file it writes is described in spectral_edit.edit.svd_cache.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from spectral_edit.atomic import write_json
from spectral_edit.edit.svd_cache import cache_metadata, stored_factors
from spectral_edit.errors import CheckpointMismatchError
from spectral_edit.runtime import in_halving_batches
from spectral_edit.safetensors_stream import StreamingSafetensorsWriter, open_safetensors

log = logging.getLogger(__name__)

# Token embeddings and output heads: by name, as transformers' decoder-only models call them.
EMBEDDING_PATTERN = re.compile(r"(^|\.)(embed_tokens|wte|wpe|word_embeddings|embed_in|embed_out|lm_head)(\.|$)")
ENERGY_LEVEL = 0.9


def is_embedding(name: str) -> bool:
    return bool(EMBEDDING_PATTERN.search(name))


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    with open_safetensors(path) as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


def check_matching(base: dict[str, tuple], finetuned: dict[str, tuple], base_name="base", ft_name="fine-tuned") -> None:
    """Raise a one-line error at the first tensor whose name or shape differs."""
    only_base = sorted(set(base) - set(finetuned))
    only_ft = sorted(set(finetuned) - set(base))
    if only_base:
        raise CheckpointMismatchError(
            f"checkpoint mismatch: {only_base[0]!r} is in the {base_name} checkpoint but not the {ft_name} one"
        )
    if only_ft:
        raise CheckpointMismatchError(
            f"checkpoint mismatch: {only_ft[0]!r} is in the {ft_name} checkpoint but not the {base_name} one"
        )
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

    def run(start: int, stop: int, on: torch.device = device) -> None:
        chunk = deltas[start:stop]
        u, s, vh = _svd_batch(chunk[0][None] if len(chunk) == 1 else torch.stack(chunk), on)
        results.extend(zip(u.unbind(0), s.unbind(0), vh.unbind(0)))

    def on_cpu(start: int) -> None:
        log.warning("SVD of one %s matrix does not fit on %s: computed on the CPU", tuple(deltas[start].shape), device)
        run(start, start + 1, torch.device("cpu"))

    events = in_halving_batches(len(deltas), batch_size, run, device, "SVD", None if device.type == "cpu" else on_cpu)
    fallbacks = events.pop("fallbacks")
    events = {"device": str(device), **events, "cpu_fallbacks": fallbacks}
    return [(u.contiguous(), s.contiguous(), vh.contiguous()) for u, s, vh in results], events


def _shape_batches(names: list[str], shapes: dict[str, tuple], batch_size: int) -> list[list[str]]:
    """Names grouped by shape, in runs of at most ``batch_size`` (order within a shape kept)."""
    by_shape: dict[tuple, list[str]] = {}
    for name in names:
        by_shape.setdefault(tuple(shapes[name]), []).append(name)
    return [group[i : i + batch_size] for group in by_shape.values() for i in range(0, len(group), batch_size)]


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
    with (
        StreamingSafetensorsWriter(out_dir / "factors.safetensors") as writer,
        open_safetensors(base_weights) as base,
        open_safetensors(finetuned_weights) as ft,
        tqdm(total=len(names), desc="svd", unit="matrix", disable=not progress, mininterval=5) as bar,
    ):
        for batch in _shape_batches(names, base_shapes, batch_size):
            # Only the norms of W_base and W_ft are needed after the difference: each pair is
            # dropped as soon as its dW exists, so a batch holds dW and its factors, not the weights.
            deltas, norms = [], []
            for name in batch:
                w_base, w_ft = base.get_tensor(name), ft.get_tensor(name)
                for tensor, path in ((w_base, base_weights), (w_ft, finetuned_weights)):
                    if not bool(torch.isfinite(tensor).all()):
                        raise FloatingPointError(f"{path}: tensor {name!r} has non-finite values (NaN or inf)")
                norms.append((tuple(w_base.shape), _norm(w_base), _norm(w_ft)))
                deltas.append(w_ft.double() - w_base.double() if device.type == "cpu" else w_ft.float() - w_base.float())
                del w_base, w_ft
            factors, events = batched_svds(deltas, device, batch_size)
            del deltas
            for key in fallbacks:
                fallbacks[key] += events[key]
            batch_size = events["final_batch_size"]  # keep a halved size for the next batches
            for name, (shape, base_norm, ft_norm), (u, s, vh) in zip(batch, norms, factors):
                for key, tensor in stored_factors(name, shape, u, s, vh).items():
                    writer.add(key, tensor)
                ranks[name] = int((s > _noise_floor(shape, base_norm, ft_norm)).sum())
                records[name] = _matrix_record(name, shape, base_norm, s, ranks[name])
            del factors
            bar.update(len(batch))
        writer.close(cache_metadata(names, sorted(set(ft_shapes) - set(names)), ranks))
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
        "SVD cache: %d matrices on %s, mean 90%%-energy fraction %.3f",
        len(matrices),
        device,
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
