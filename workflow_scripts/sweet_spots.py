# The cells at Table 1's sweet spots, for export_sweet_spots.
import pandas as pd

from spectral_edit.analysis.table1 import sweet_spot_cells
from spectral_edit.atomic import write_json
from spectral_edit.jobs import job_logging

with job_logging(snakemake.log[0], snakemake.threads, "sweet_spots", pin_torch=False) as log:
    cells, without = sweet_spot_cells(pd.read_csv(snakemake.input.table1), snakemake.params.seeds, snakemake.params.methods)
    for cell in cells:
        log.info("sweet spot: %s", cell)
    for line in without:
        log.info("%s", line)
    if not cells:
        log.warning("Table 1 has no sweet spot of %s to export", ", ".join(snakemake.params.methods))
    write_json(snakemake.output[0], {"cells": cells, "without_sweet_spot": without})
