"""One evaluation cell: build the model (base, fine-tuned, or edited), evaluate, write JSON.

``CellEvaluator`` holds a loaded model and tokenizer and serves any number of cells of one
checkpoint: before each cell it overwrites every checkpoint tensor of the model (with the edit,
the fine-tuned weights, or the base weights), so no cell sees another's state. The evaluation
server (``evaluation_server``) keeps one alive per checkpoint; ``evaluate_cell`` makes one for a
single cell in this process.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from spectral_edit.atomic import write_json
from spectral_edit.data import read_meta, read_split
from spectral_edit.data.prompts import formatter_for
from spectral_edit.edit.apply import apply_spectral_edit, edit_arguments
from spectral_edit.edit.record import EditSpec, as_edit_spec
from spectral_edit.errors import CheckpointMismatchError
from spectral_edit.evaluate.scoring import evaluate_model
from spectral_edit.models import load_model, load_tokenizer
from spectral_edit.runtime import resolve as resolve_runtime
from spectral_edit.safetensors_stream import open_safetensors

log = logging.getLogger(__name__)


@torch.no_grad()
def load_weights(model: torch.nn.Module, weights: str | Path) -> None:
    """Copy every tensor of a safetensors file into the model's parameters of the same name."""
    state = model.state_dict()
    with open_safetensors(weights) as handle:
        for name in handle.keys():
            if name not in state or tuple(state[name].shape) != tuple(handle.get_slice(name).get_shape()):
                raise CheckpointMismatchError(f"checkpoint mismatch: {name!r} of {weights} does not fit the model")
            state[name].copy_(handle.get_tensor(name))


class CellEvaluator:
    """A model of one architecture, loaded once, that evaluates cells one after another.

    ``model_dir`` is the model to load (for edited cells: the base model). ``weights`` of
    :meth:`run` names the checkpoint whose tensors the model takes for that cell (None: keep
    the loaded ones, for a single cell).
    """

    def __init__(self, model_dir: str | Path, runtime: Mapping | None = None, resident_gb: float = 0.0):
        started = time.time()
        # Keep W_base and dW of the edited matrices in memory after the first edit when they fit
        # in ``resident_gb``: a served cell then reads no file (its edit is a few matrix products).
        self.resident_bytes = resident_gb * 1e9
        self.resident: dict = {}
        self.resident_key = None
        self.model_dir = Path(model_dir)
        self.device, self.dtype = resolve_runtime(runtime)
        self.tokenizer = load_tokenizer(model_dir)
        self.model = load_model(model_dir).to(device=self.device, dtype=self.dtype)
        self.load_seconds = time.time() - started
        self.cells_served = 0
        self.task_managers: dict = {}  # lm-eval's task index per include path, built once

    def _resident_for(self, key: tuple) -> dict | None:
        """The resident (W_base, dW) store of one checkpoint, if both fit the budget (fp32)."""
        if 2 * _matrix_bytes(self.model) > self.resident_bytes:
            return None
        if key != self.resident_key:
            self.resident, self.resident_key = {}, key
        return self.resident

    def run(
        self,
        *,
        cell: Mapping,
        eval_path: str | Path | None = None,
        meta_path: str | Path | None = None,
        dataset_spec: Mapping | None = None,
        benchmark: Mapping | None = None,
        edit: EditSpec | Mapping | None = None,
        weights: str | Path | None = None,
        batch_size: int = 16,
        progress: bool = True,
    ) -> dict:
        """Evaluate one cell and return its record (what ``evaluate_cell`` writes).

        The cell is scored on a prepared split by its label words (``eval_path``, ``meta_path``,
        ``dataset_spec``) or on a benchmark through lm-evaluation-harness (``benchmark``, a
        resolved entry of the config's benchmarks section; spectral_edit.benchmarks).

        ``edit``, when given, turns the model into the edited one (an :class:`EditSpec`, or a
        mapping of its fields); its ``base_weights`` default to the loaded model's own file.
        The record shows the edit without its files, and the edit's statistics.
        """
        started = time.time()
        edit = as_edit_spec(edit) if edit is not None else None
        edit_stats = self._prepare(edit, weights)
        record = {"cell": dict(cell), "edit": {**edit.shown(), **edit_stats} if edit else None}
        if benchmark is not None:
            from spectral_edit.benchmarks.harness import run_benchmark

            record["benchmark"] = run_benchmark(self.model, self.tokenizer, benchmark, batch_size, self.task_managers)
        else:
            formatter = formatter_for(self.tokenizer, dataset_spec)
            result = evaluate_model(self.model, formatter, read_split(eval_path), read_meta(meta_path), batch_size, progress)
            metrics = result["metrics"]
            log.info(
                "accuracy %.4f gap %.4f worst-group %.4f", metrics["accuracy"], metrics["gap"], metrics["worst_group_accuracy"]
            )
            record.update(metrics=metrics, examples=result["examples"])
        self.cells_served += 1
        record.update(
            runtime={"device": str(self.device), "dtype": str(self.dtype).replace("torch.", "")},
            seconds=time.time() - started,
            # Where it ran: a cluster job id is provenance (and lets a test see grouped cells).
            job={"slurm_job_id": os.environ.get("SLURM_JOB_ID"), "host": socket.gethostname()},
        )
        # The per-sample part last, so that a reader of the file sees the numbers first.
        for key in ("benchmark", "examples"):
            if key in record:
                record[key] = record.pop(key)
        return record

    def _prepare(self, edit: EditSpec | None, weights: str | Path | None) -> dict | None:
        """Give the model the cell's weights: the edit, a checkpoint's tensors, or (neither)
        those it has; returns the edit's statistics."""
        edit_stats = None
        if edit is not None:
            base_weights = edit.base_weights or self.model_dir / "model.safetensors"
            resident = self._resident_for((edit.finetuned_weights, str(base_weights), edit.factors))
            edit_stats = apply_spectral_edit(
                self.model,
                unedited_params=edit.unedited_params,
                # W_base from the file, not the model: the model may be in bf16 or hold the last cell's edit.
                base_weights=base_weights,
                resident=resident,
                **edit_arguments(edit),
            )
            log.info(
                "edited %d matrices, kept %d of %d components",
                edit_stats["matrices"],
                edit_stats["kept_components"],
                edit_stats["total_components"],
            )
        elif weights is not None:
            load_weights(self.model, weights)
        return edit_stats


def _matrix_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * 4 for p in model.parameters() if p.dim() == 2)


def evaluate_cell(*, model_dir: str | Path, out_path: str | Path, runtime: Mapping | None = None, **request) -> dict:
    """Evaluate one cell in this process and write ``out_path``.

    ``request`` holds :meth:`CellEvaluator.run`'s arguments (``cell`` names it: model, dataset,
    seed, method, retention). ``model_dir`` is the model to evaluate, or for an edited cell
    (``edit`` given) the base model.
    """
    started = time.time()
    evaluator = CellEvaluator(model_dir, runtime)
    record = evaluator.run(**request)
    record["seconds"] = time.time() - started
    write_json(out_path, record)
    return record
