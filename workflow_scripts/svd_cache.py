from pathlib import Path

from spectral_edit.edit.svd import compute_svd_cache
from spectral_edit.jobs import job_logging
from spectral_edit.plan.records import Runtime
from spectral_edit.runtime import resolve as resolve_runtime

with job_logging(snakemake.log[0], snakemake.threads, "svd_cache"):
    device, _ = resolve_runtime(Runtime.from_mapping(snakemake.params.runtime))
    compute_svd_cache(
        snakemake.input.base_weights,
        snakemake.input.finetuned_weights,
        str(Path(snakemake.output.factors).parent),
        include_embeddings=snakemake.params.include_embeddings,
        device=device,
        batch_size=snakemake.params.batch_size,
    )
