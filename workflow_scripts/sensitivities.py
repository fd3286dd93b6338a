from pathlib import Path

from spectral_edit.edit.sensitivity import compute_sensitivities
from spectral_edit.jobs import job_logging
from spectral_edit.plan.records import Runtime

with job_logging(snakemake.log[0], snakemake.threads, "sensitivities"):
    compute_sensitivities(
        model_dir=str(Path(snakemake.input.model_weights).parent),
        factors_path=snakemake.input.factors,
        base_weights=snakemake.input.base_weights,
        train_path=snakemake.input.train,
        dataset_spec=snakemake.params.prompt,
        out_path=snakemake.output[0],
        calibration_size=int(snakemake.wildcards.ncal),
        seed=int(snakemake.wildcards.seed),
        max_length=int(snakemake.params.max_length),
        runtime=Runtime.from_mapping(snakemake.params.runtime),
    )
