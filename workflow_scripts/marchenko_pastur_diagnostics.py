from pathlib import Path

from spectral_edit.analysis.diagnostics import dg_hard_table, marchenko_pastur_figure
from spectral_edit.atomic import atomic_path
from spectral_edit.edit.svd_cache import read_spectrum
from spectral_edit.jobs import job_logging

with job_logging(snakemake.log[0], snakemake.threads, "marchenko_pastur") as log:
    spectrum = read_spectrum(snakemake.input.spectrum)
    table = dg_hard_table(spectrum, snakemake.params.dg_hard)
    with atomic_path(snakemake.output.table) as tmp:
        table.to_csv(tmp, index=False)
    marchenko_pastur_figure(
        spectrum,
        table,
        int(snakemake.params.layers),
        Path(snakemake.output.figures[0]).with_suffix(""),
        [Path(p).suffix[1:] for p in snakemake.output.figures],
    )
    log.info(
        "DG-Hard keeps %d of %d components; median KS distance of the discarded spectrum to MP: %.3f",
        table["rank_kept"].sum(),
        table["rank"].sum(),
        table["ks_discarded_vs_mp"].median(),
    )
