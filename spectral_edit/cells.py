"""One evaluation cell: build the model (base, fine-tuned, or edited), evaluate, write JSON."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Mapping

from .atomic import write_json
from .data import read_meta, read_split
from .edit import apply_spectral_edit, read_sensitivities
from .evaluate import evaluate_model
from .methods import get_method
from .models import load_model, load_tokenizer
from .prompts import formatter_for
from .runtime import resolve as resolve_runtime

log = logging.getLogger(__name__)


def evaluate_cell(
    *,
    model_dir: str | Path,
    eval_path: str | Path,
    meta_path: str | Path,
    dataset_spec: Mapping,
    out_path: str | Path,
    cell: Mapping,
    edit: Mapping | None = None,
    batch_size: int = 16,
    progress: bool = True,
    runtime: Mapping | None = None,
) -> dict:
    """Evaluate one cell and write ``out_path``.

    ``cell`` names it (model, dataset, seed, method, retention). ``edit``, when given, turns
    the model in ``model_dir`` (the base model) into the edited one: keys ``factors``,
    ``finetuned_weights`` (the checkpoint dW is read from, with the base model's weights),
    ``method`` (a registered method), ``params``, ``retention`` (or None), ``seed``,
    ``unedited_params`` and, for methods that need them, ``sensitivities`` (a file).
    """
    started = time.time()
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir)
    edit_stats = None
    if edit is not None:
        extras = read_sensitivities(edit["sensitivities"]) if edit.get("sensitivities") else None
        edit_stats = apply_spectral_edit(
            model,
            edit["factors"],
            get_method(edit["method"]),
            edit.get("params", {}),
            edit.get("retention"),
            int(edit.get("seed", 0)),
            edit.get("unedited_params", "finetuned"),
            extras=extras,
            finetuned_weights=edit["finetuned_weights"],
        )
        log.info("edited %d matrices, kept %d of %d components", edit_stats["matrices"],
                 edit_stats["kept_components"], edit_stats["total_components"])
    device, dtype = resolve_runtime(runtime)
    model = model.to(device=device, dtype=dtype)  # after the fp32 edit
    formatter = formatter_for(tokenizer, dataset_spec)
    result = evaluate_model(model, formatter, read_split(eval_path), read_meta(meta_path), batch_size, progress)
    metrics = result["metrics"]
    log.info("accuracy %.4f gap %.4f worst-group %.4f", metrics["accuracy"], metrics["gap"], metrics["worst_group_accuracy"])
    record = {
        "cell": dict(cell),
        "edit": {**{k: v for k, v in (edit or {}).items() if k not in ("factors", "sensitivities", "finetuned_weights")}, **edit_stats}
        if edit else None,
        "metrics": metrics,
        "runtime": {"device": str(device), "dtype": str(dtype).replace("torch.", "")},
        "seconds": time.time() - started,
        # Where it ran: a cluster job id is provenance (and lets a test see grouped cells).
        "job": {"slurm_job_id": os.environ.get("SLURM_JOB_ID"), "host": socket.gethostname()},
        "examples": result["examples"],
    }
    write_json(out_path, record)
    return record
