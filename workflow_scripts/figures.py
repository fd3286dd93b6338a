from pathlib import Path

import pandas as pd

from spectral_edit.analysis.figures import FigureInputs, draw_figures
from spectral_edit.jobs import job_logging

with job_logging(snakemake.log[0], snakemake.threads, "figures") as log:
    names = list(dict.fromkeys(Path(p).stem for p in snakemake.output))
    inputs = FigureInputs(
        summary=pd.read_csv(snakemake.input.summary),
        table1=pd.read_csv(snakemake.input.table1),
        spectra=snakemake.params.spectra,
        analysis=snakemake.params.analysis,
        controls=snakemake.params.controls,
        repair_summary=pd.read_csv(snakemake.input.repair_summary),
        regimes=pd.read_csv(snakemake.input.regimes),
        guided_vs_random=pd.read_csv(snakemake.input.guided_vs_random),
        reward_risk=pd.read_csv(snakemake.input.reward_risk),
        cell_comparison=pd.read_csv(snakemake.input.cell_comparison),
    )
    written = draw_figures(inputs, Path(snakemake.output[0]).parent, names)
    log.info("wrote %s", ", ".join(str(p) for p in written))
