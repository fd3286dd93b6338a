from spectral_edit.jobs import job_logging
from spectral_edit.models import materialise_base_model

with job_logging(snakemake.log[0], snakemake.threads, "base_model"):
    out_dir = snakemake.output.weights.rsplit("/", 1)[0]
    materialise_base_model(snakemake.params.spec, out_dir, name=snakemake.wildcards.model)
