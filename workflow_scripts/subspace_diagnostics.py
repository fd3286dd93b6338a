from pathlib import Path

from spectral_edit.analysis.diagnostics import subspace_alignment, subspace_figure
from spectral_edit.atomic import atomic_path
from spectral_edit.jobs import job_logging

w = snakemake.wildcards
with job_logging(snakemake.log[0], snakemake.threads, "subspace_diagnostics") as log:
    results, table = subspace_alignment(
        snakemake.input.factors, snakemake.input.base_weights, snakemake.input.finetuned_weights, int(snakemake.params.top_m)
    )
    with atomic_path(snakemake.output.table) as tmp:
        table.to_csv(tmp, index=False)
    title = f"Subspace alignment of dW across layers: {w.model} / {w.dataset} / seed {w.seed} / {w.finetune}"
    subspace_figure(
        results, title, Path(snakemake.output.figures[0]).with_suffix(""), [Path(p).suffix[1:] for p in snakemake.output.figures]
    )
    log.info("\n%s", table.to_string(index=False))
