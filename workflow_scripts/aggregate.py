from spectral_edit.aggregate import build_tables
from spectral_edit.atomic import atomic_path, write_text
from spectral_edit.jobs import job_logging

with job_logging(snakemake.log[0], snakemake.threads, "aggregate") as log:
    tables = build_tables(
        list(snakemake.input.cells) + list(snakemake.input.references),
        snakemake.params.analysis,
        controls=snakemake.params.controls,
        heldout_paths=list(snakemake.input.heldout),
        # A grid dataset's meta.json is its input, in the grid's order.
        metas=dict(zip(snakemake.config["grid"]["datasets"], snakemake.input.metas)),
    )
    for name in ("cells", "summary", "table1", "regimes", "comparisons", "heldout", "repair", "repair_summary"):
        with atomic_path(getattr(snakemake.output, name)) as tmp:
            tables[name].to_csv(tmp, index=False)
    for name in ("summary_md", "table1_md", "repair_md"):
        write_text(getattr(snakemake.output, name), tables[name])
    log.info("\n%s", tables["table1_md"])
