from spectral_edit.aggregate import build_tables
from spectral_edit.atomic import atomic_path, write_text
from spectral_edit.jobs import job_logging

with job_logging(snakemake.log[0], snakemake.threads, "aggregate") as log:
    tables = build_tables(
        list(snakemake.input.cells) + list(snakemake.input.references),
        snakemake.params.analysis,
        controls=snakemake.params.controls,
    )
    for name in ("cells", "summary", "table1"):
        with atomic_path(getattr(snakemake.output, name)) as tmp:
            tables[name].to_csv(tmp, index=False)
    write_text(snakemake.output.summary_md, tables["summary_md"])
    write_text(snakemake.output.table1_md, tables["table1_md"])
    log.info("\n%s", tables["table1_md"])
