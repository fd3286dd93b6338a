from pathlib import Path

from spectral_edit.benchmarks.synthetic import write_benchmark
from spectral_edit.jobs import job_logging

with job_logging(snakemake.log[0], snakemake.threads, "benchmark_task", pin_torch=False) as log:
    written = write_benchmark(snakemake.params.spec, Path(snakemake.output.task_yaml).parent)
    log.info("wrote %s", written)
