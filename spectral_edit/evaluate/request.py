"""What an evaluation cell's job asks for, by the kind of cell its rule names (params.kind in
rules/evaluate.smk and rules/benchmarks.smk): an edited model, the fine-tuned reference or the
base reference, each scored on its task, a held-out dataset or an lm-eval benchmark.

Standard library only: a cell that goes through the evaluation server never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from spectral_edit.edit.record import EditSpec

CELL_KINDS = ("edit", "finetuned", "base")
# The kinds whose model is built from a fine-tuned checkpoint, which a checkpoint's server serves.
SERVED_KINDS = ("edit", "finetuned")
# What a kind's rule must name: the wildcards its cell keys and request are built from.
_NEEDED_WILDCARDS = {"edit": ("seed", "finetune", "method", "retention"), "finetuned": ("seed", "finetune"), "base": ()}


@dataclass(frozen=True)
class CellJob:
    """One cell job: ``request`` holds ``CellEvaluator.run``'s arguments (``edit`` an
    :class:`EditSpec`, ``weights`` the checkpoint whose tensors a served model takes).
    ``model_dir`` is the model an in-process evaluation loads (for an edited cell the base
    model); a served cell's server loads the base model ``server_model_dir`` and is keyed on
    the fine-tuned ``checkpoint`` (both None for the base reference, which is never served)."""

    kind: str
    cell: dict
    request: dict
    model_dir: str
    server_model_dir: str | None = None
    checkpoint: str | None = None

    @property
    def servable(self) -> bool:
        return self.kind in SERVED_KINDS

    def in_process_request(self) -> dict:
        """The request for ``evaluate_cell`` in this process: it loads ``model_dir``, which for a
        reference cell is already the model evaluated, so no weights are copied in."""
        return {k: v for k, v in self.request.items() if k != "weights"}


def cell_job(kind: str, wildcards: Mapping, inputs, params) -> CellJob:
    """The job of a cell of ``kind`` from its rule's wildcards, input and params.

    The cell keys are (model, dataset, benchmark, seed, finetune, method, retention), with
    method "finetuned" or "base" for the references; a wrong kind, or one its rule's wildcards
    do not fit, stops here with the rule named.
    """
    if kind not in CELL_KINDS:
        raise ValueError(f"evaluation cell: params.kind is {kind!r}, not one of {list(CELL_KINDS)} (rules/evaluate.smk)")
    missing = [name for name in _NEEDED_WILDCARDS[kind] if name not in wildcards.keys()]
    if missing:
        raise ValueError(
            f"evaluation cell: a {kind!r} cell needs the wildcards {list(_NEEDED_WILDCARDS[kind])}; "
            f"its rule has {list(wildcards.keys())} (wrong params.kind?)"
        )
    cell = {"model": wildcards["model"], "dataset": wildcards.get("dataset"), "benchmark": wildcards.get("benchmark")}
    request: dict = {"batch_size": params.batch_size}
    if hasattr(params, "benchmark"):
        request["benchmark"] = params.benchmark
    else:
        request.update(eval_path=inputs.eval, meta_path=inputs.meta, dataset_spec=params.prompt)
    checkpoint = server_model_dir = None
    if kind == "edit":
        edit = EditSpec.from_job(wildcards, inputs, params)
        cell.update(seed=edit.seed, finetune=wildcards["finetune"], method=wildcards["method"], retention=edit.retention)
        request["edit"] = edit
        model_dir = server_model_dir = _parent(inputs.base_weights)
        checkpoint = edit.finetuned_weights
    elif kind == "finetuned":
        cell.update(seed=int(wildcards["seed"]), finetune=wildcards["finetune"], method="finetuned", retention=None)
        request["weights"] = checkpoint = inputs.model_weights
        model_dir, server_model_dir = _parent(inputs.model_weights), _parent(inputs.base_weights)
    else:
        cell.update(seed=None, finetune=None, method="base", retention=None)
        model_dir = _parent(inputs.model_weights)
    request["cell"] = cell
    return CellJob(kind, cell, request, model_dir, server_model_dir, checkpoint)


def _parent(weights) -> str:
    return str(Path(weights).parent)
