"""Build an edited model in memory: W~ = W_base + U diag(S') V^T for every cached matrix.

S' comes from a spectral method (for top-k: the k largest singular values, the rest zero).
The update is rebuilt from dW = W_ft - W_base, read from the two checkpoints a matrix at a
time, and the cache's singular vectors of one side (``rebuild.rebuild_update``). The edited
model is never written to disk: an evaluation cell builds it, evaluates it and keeps the metrics.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from spectral_edit.edit.methods import MatrixContext, SpectralMethod, get_method, layer_index, split_result
from spectral_edit.edit.rebuild import low_rank_factors, rebuild_update
from spectral_edit.edit.record import EditSpec, as_edit_spec
from spectral_edit.edit.svd_cache import cached_names, cached_numerical_ranks, iter_factors
from spectral_edit.errors import CheckpointMismatchError
from spectral_edit.safetensors_stream import open_safetensors

log = logging.getLogger(__name__)


def new_singular_values(
    method: SpectralMethod, singular_values: torch.Tensor, context: MatrixContext, record: dict | None = None
) -> torch.Tensor:
    """S' from the method; what it reports about the matrix goes into ``record``."""
    result, details = split_result(method.edit(singular_values, context))
    if record is not None:
        record.update(details)
    if result.shape != singular_values.shape:
        raise RuntimeError(f"method {method.name} returned shape {tuple(result.shape)} for {context.name}")
    if torch.any(result < 0) or not torch.all(torch.isfinite(result)):
        raise RuntimeError(f"method {method.name} returned negative or non-finite singular values for {context.name}")
    return result


def read_sensitivities(path: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """{matrix name: {"sensitivity_abs": s, "sensitivity_signed": g}} from a sensitivities file."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    with open_safetensors(path) as handle:
        for key in handle.keys():
            kind, name = key.split("/", 1)
            out.setdefault(name, {})[f"sensitivity_{kind}"] = handle.get_tensor(key)
    return out


def edit_arguments(edit: EditSpec | Mapping) -> dict:
    """The arguments of :func:`iter_matrix_edits` (and, with ``unedited_params`` and where
    W_base comes from, :func:`apply_spectral_edit`) of a cell's edit record, read here once for
    the evaluation cells and the exports alike: the method, its inputs, and the sensitivities
    file read for a method that needs one."""
    edit = as_edit_spec(edit)
    return {
        "factors_path": edit.factors,
        "method": get_method(edit.method),
        "params": edit.params,
        "retention": edit.retention,
        "seed": edit.seed,
        "extras": read_sensitivities(edit.sensitivities) if edit.sensitivities else None,
        "finetuned_weights": edit.finetuned_weights,
    }


@dataclass
class MatrixEdit:
    """One decomposed matrix of a cell's edit: W_base, dW, its spectrum S and the method's S'."""

    name: str
    w_base: torch.Tensor
    delta: torch.Tensor
    s: torch.Tensor
    s_new: torch.Tensor
    side: str
    basis: torch.Tensor
    record: dict

    def update(self) -> torch.Tensor:
        """The edited update sum_i s'_i u_i v_i^T (what W_base gains)."""
        return rebuild_update(self.delta, self.s, self.s_new, self.side, self.basis)

    def low_rank_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A) with B @ A the edited update, of rank the number of kept components."""
        return low_rank_factors(self.delta, self.s, self.s_new, self.side, self.basis)


@torch.no_grad()
def iter_matrix_edits(
    factors_path: str | Path,
    method: SpectralMethod,
    params: Mapping[str, object],
    retention: float | None,
    seed: int,
    extras: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    *,
    state: Mapping[str, torch.Tensor],
    finetuned_weights: str | Path,
    base_weights: str | Path | None = None,
    resident: dict | None = None,
) -> Iterator[MatrixEdit]:
    """Each decomposed matrix of the cache with the method's new singular values.

    ``state`` is the model's state dict: its shapes are checked against the checkpoint and the
    cache, and W_base comes from it unless ``base_weights`` names the base checkpoint. The same
    edit is applied in place by :func:`apply_spectral_edit` and exported by ``spectral_edit.export.artifacts``.
    """
    decomposed, passthrough = cached_names(factors_path)
    ranks = cached_numerical_ranks(factors_path)
    for name in decomposed + passthrough:
        if name not in state:
            raise CheckpointMismatchError(f"checkpoint mismatch: cached tensor {name!r} is not a parameter of the base model")
    layers = [layer_index(name) for name in decomposed]
    num_layers = max((i for i in layers if i is not None), default=-1) + 1
    with (
        open_safetensors(finetuned_weights) as finetuned,
        open_safetensors(base_weights) if base_weights else contextlib.nullcontext() as base,
    ):
        for name, s, side, basis in iter_factors(factors_path, decomposed):
            target = state[name]
            if resident is not None and name in resident:
                w_base, delta = resident[name]
            else:
                w_ft = finetuned.get_tensor(name)
                if tuple(target.shape) != tuple(w_ft.shape) or len(s) != min(w_ft.shape):
                    raise CheckpointMismatchError(
                        f"checkpoint mismatch: {name!r} has shape {tuple(target.shape)} in the base model, "
                        f"{tuple(w_ft.shape)} in the fine-tuned checkpoint and rank {len(s)} in the SVD cache"
                    )
                # float32 like the checkpoints (as the full-factor cache's U diag(S') V^T was): the
                # rounding of dW and of the product is ~1e-7 of dW; float64 doubled a cell's edit time.
                w_base = (base.get_tensor(name) if base_weights else target).to(target.device, torch.float32, copy=True)
                delta = w_ft.to(target.device, torch.float32) - w_base
                del w_ft
                if resident is not None:
                    resident[name] = (w_base, delta)
            context = MatrixContext(
                name,
                tuple(target.shape),
                retention,
                seed,
                params,
                numerical_rank=ranks.get(name),
                num_layers=num_layers,
                extras=(extras or {}).get(name, {}),
            )
            record: dict = {"name": name}
            s_new = new_singular_values(method, s, context, record)
            record["kept_components"] = int(torch.count_nonzero(s_new))
            yield MatrixEdit(name, w_base, delta, s, s_new, side, basis, record)


@torch.no_grad()
def apply_spectral_edit(
    model: torch.nn.Module,
    factors_path: str | Path,
    method: SpectralMethod,
    params: Mapping[str, object],
    retention: float | None,
    seed: int,
    unedited_params: str = "finetuned",
    extras: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    *,
    finetuned_weights: str | Path,
    base_weights: str | Path | None = None,
    resident: dict | None = None,
) -> dict:
    """Turn a loaded model into the edited model, in place. Returns edit statistics.

    W_base comes from ``base_weights`` when given (then the model may hold anything of the
    right shapes, e.g. the previous cell's edit: every checkpoint tensor is overwritten), else
    from the model itself, which must then be the base model. ``extras`` maps a matrix name to
    the extra inputs its method needs (e.g. sensitivities). The statistics hold, per matrix,
    what the method reported (e.g. DG-Hard's kept rank). ``resident``, a dict kept by the
    caller, holds each matrix's (W_base, dW) after the first edit, so that later edits of the
    same checkpoint read no file (the evaluation server keeps one per checkpoint).
    """
    state = model.state_dict()  # shares storage with the parameters (tied weights appear twice)
    edits = iter_matrix_edits(
        factors_path,
        method,
        params,
        retention,
        seed,
        extras,
        state=state,
        finetuned_weights=finetuned_weights,
        base_weights=base_weights,
        resident=resident,
    )
    per_matrix = []
    totals = {"kept": 0, "components": 0, "energy_kept": 0.0, "energy": 0.0}
    for matrix in edits:
        state[matrix.name].copy_(matrix.w_base + matrix.update())
        per_matrix.append(matrix.record)
        totals["kept"] += matrix.record["kept_components"]
        totals["components"] += matrix.s.numel()
        totals["energy_kept"] += float((matrix.s_new.double() ** 2).sum())
        totals["energy"] += float((matrix.s.double() ** 2).sum())
    # Tensors that are not decomposed (norms): fine-tuned or base values, by the switch (with
    # "base" and no base file, the model's own values are the base ones).
    passthrough = cached_names(factors_path)[1]
    source = finetuned_weights if unedited_params == "finetuned" else base_weights
    if source is not None:
        with open_safetensors(source) as handle:
            for name in passthrough:
                state[name].copy_(handle.get_tensor(name))
    return {
        "matrices": len(per_matrix),
        "kept_components": totals["kept"],
        "total_components": totals["components"],
        "energy_kept_fraction": totals["energy_kept"] / totals["energy"] if totals["energy"] > 0 else float("nan"),
        "unedited_params": unedited_params,
        "per_matrix": per_matrix,
    }
