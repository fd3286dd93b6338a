from pathlib import Path

from spectral_edit.data import prepare_dataset
from spectral_edit.jobs import job_logging

with job_logging(snakemake.log[0], snakemake.threads, "prepare_dataset"):
    out_dir = str(Path(snakemake.output.meta).parent)
    prepare_dataset(snakemake.params.spec, out_dir, name=snakemake.wildcards.dataset)
