# One cell taken out: the edited model (params.form "model") or the edited update as a PEFT
# LoRA adapter ("adapter"), each with a model card (spectral_edit.export.artifacts, .model_card).
import json
from pathlib import Path

import spectral_edit
from spectral_edit.edit.record import EditSpec
from spectral_edit.export.artifacts import export_adapter, export_model
from spectral_edit.export.model_card import benchmark_statistics, cell_statistics, model_card, workflow_commit
from spectral_edit.jobs import job_logging

w = snakemake.wildcards
inp = snakemake.input
params = snakemake.params
with job_logging(snakemake.log[0], snakemake.threads, f"export {params.form}") as log:
    edit = EditSpec.from_job(w, inp, params)  # as the cell's evaluation built it
    base_dir = Path(inp.base_weights).parent
    model_spec = params.card["model"][w.model]
    base_id = model_spec.get("id") if model_spec.get("source") == "hub" else None
    # The card's numbers: the label-word cell against its references (a label-word task), and
    # each lm-eval benchmark's (spectral_edit.export.model_card).
    statistics, edit_record = None, None
    if "cell" in inp.keys():
        records = {name: json.loads(Path(inp[name]).read_text()) for name in ("cell", "finetuned_cell", "base_cell")}
        statistics = cell_statistics(
            records["cell"],
            records["finetuned_cell"],
            records["base_cell"],
            json.loads(Path(inp.meta).read_text()),
            params.card["bootstrap"],
        )
        edit_record = records["cell"]
    benchmarks = {
        key.split(":", 1)[1]: {"cell": inp[key], "finetuned": inp[f"benchmark_finetuned:{key.split(':', 1)[1]}"],
                               "base": inp[f"benchmark_base:{key.split(':', 1)[1]}"]}
        for key in inp.keys() if key.startswith("benchmark:")
    }  # fmt: skip
    benchmark_rows = benchmark_statistics(benchmarks, params.card["bootstrap"])
    if edit_record is None:
        edit_record = json.loads(Path(next(iter(benchmarks.values()))["cell"]).read_text())
    provenance = {
        "commit": workflow_commit(Path(spectral_edit.__file__).resolve().parents[1]),
        "base_model": base_id or f"{w.model} ({model_spec.get('source')}), materialised at {base_dir}",
        "config": params.card,
    }
    edit_summary = {**edit_record["edit"], "method_name": edit.method}
    edit_summary.pop("per_matrix", None)
    if params.form == "model":
        card = model_card(
            form="model",
            cell=edit_record,
            statistics=statistics,
            edit_summary=edit_summary,
            provenance=provenance,
            base_id=base_id,
            benchmarks=benchmark_rows,
        )
        export_model(
            base_dir,
            edit,
            snakemake.output[0],
            dtype=params.export["dtype"],
            max_shard_size=params.export["max_shard_size"],
            card=card,
        )
    else:
        summary = export_adapter(
            base_dir,
            edit,
            snakemake.output[0],
            base_name=base_id,
            card=lambda summary: model_card(
                form="adapter",
                cell=edit_record,
                statistics=statistics,
                edit_summary={**edit_summary, **summary},
                provenance=provenance,
                base_id=base_id,
                benchmarks=benchmark_rows,
            ),
        )
        log.info(
            "adapter: %d LoRA modules, %d whole modules, %.1f MB",
            summary["modules"],
            len(summary["modules_to_save"]),
            summary["adapter_bytes"] / 1e6,
        )
