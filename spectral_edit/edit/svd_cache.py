"""The SVD cache of a fine-tuning update dW = W_ft - W_base, compact: per 2-D matrix, the
singular values and the singular vectors of the matrix's smaller side only.

It is computed once per (model, dataset, seed) and reused by every method and retention.
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
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from spectral_edit.atomic import write_json
from spectral_edit.errors import CheckpointMismatchError
from spectral_edit.layout import SVD_CACHE_FORMAT as CACHE_FORMAT
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
                writer.add(f"S/{name}", s)
                if stored_side(shape) == "right":
                    writer.add(f"V/{name}", vh.T.contiguous())
                else:
                    writer.add(f"U/{name}", u)
                ranks[name] = int((s > _noise_floor(shape, base_norm, ft_norm)).sum())
                records[name] = _matrix_record(name, shape, base_norm, s, ranks[name])
            del factors
            bar.update(len(batch))
        writer.close(
            {
                "format": CACHE_FORMAT,
                "decomposed": json.dumps(names),
                "passthrough": json.dumps(sorted(set(ft_shapes) - set(names))),
                "numerical_rank": json.dumps(ranks),
            }
        )
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


def _ratios(s: torch.Tensor, s_new: torch.Tensor) -> torch.Tensor:
    """s'/s per component; a component with sigma = 0 (dW has nothing along it) stays 0."""
    if torch.any((s == 0) & (s_new != 0)):
        raise ValueError("an edit gave weight to a component whose singular value is 0: it cannot be rebuilt from dW")
    return torch.where(s > 0, s_new.double() / torch.where(s > 0, s.double(), 1.0), 0.0)


def rebuild_update(delta: torch.Tensor, s: torch.Tensor, s_new: torch.Tensor, side: str, basis: torch.Tensor) -> torch.Tensor:
    """sum_i s'_i u_i v_i^T from dW and the stored side's vectors, in ``delta``'s dtype and device.

    The cheaper of two equal forms: through the components that are kept (dW V_k diag(s'/s) V_k^T,
    top-k at a small retention), or as dW plus the change of those that move (bottom-k keeping
    most of the spectrum); one scale for every component (uniform shrink) is lambda * dW.
    """
    ratio = _ratios(s, s_new)
    live = s > 0
    # One scale up to the float32 rounding of S' (the reweighting methods compute in float64).
    if bool(live.all()) and float(ratio.max() - ratio.min()) <= 1e-6 * float(ratio.abs().max()):
        return delta * float(ratio.mean())
    kept = torch.nonzero(ratio != 0, as_tuple=True)[0]
    changed = torch.nonzero(live & (ratio != 1), as_tuple=True)[0]
    use_kept = kept.numel() <= changed.numel()
    index = kept if use_kept else changed
    if index.numel() == 0:
        return torch.zeros_like(delta) if use_kept else delta.clone()
    q = basis[:, index].to(delta)
    scale = (ratio[index] if use_kept else ratio[index] - 1).to(delta)
    part = ((delta @ q) * scale) @ q.T if side == "right" else (q * scale) @ (q.T @ delta)
    return part if use_kept else delta + part


def low_rank_factors(
    delta: torch.Tensor, s: torch.Tensor, s_new: torch.Tensor, side: str, basis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A), m x k and k x n, with B @ A = sum_i s'_i u_i v_i^T over the k kept components
    (s'_i != 0, s_i > 0): the kept form of :func:`rebuild_update` split in two, so that an edit
    can be written as a LoRA adapter of rank k. The stored side's vectors carry no scale; the
    other factor is dW's projection on them times s'/s (= diag(s') times the other side's vectors).
    """
    ratio = _ratios(s, s_new)
    index = torch.nonzero(ratio != 0, as_tuple=True)[0]
    q = basis[:, index].to(delta)
    scale = ratio[index].to(delta)
    if side == "right":
        return (delta @ q) * scale, q.T.contiguous()
    return q.contiguous(), ((q * scale).T @ delta).contiguous()


def leading_vectors(
    delta: torch.Tensor, s: torch.Tensor, side: str, basis: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U[:, :count], V[:, :count]): the stored side's leading vectors and the other side's,
    computed from dW (u_i = dW v_i / sigma_i, v_i = dW^T u_i / sigma_i); columns with sigma = 0
    are left 0. For diagnostics and sensitivities that need both sides."""
    q = basis[:, :count].to(delta)
    sigma = s[:count].to(delta)
    inverse = torch.where(sigma > 0, 1 / torch.where(sigma > 0, sigma, 1), 0)
    if side == "right":
        return (delta @ q) * inverse, q
    return q, (delta.T @ q) * inverse
