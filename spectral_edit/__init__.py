"""Post-hoc spectral editing of fine-tuning updates.

The library behind the Snakemake workflow: model and dataset preparation, full fine-tuning,
the per-matrix SVD cache of dW = W_ft - W_base, spectral edit methods, likelihood-based
group evaluation, aggregation and figures. It never imports Snakemake, so every piece can be
used from a notebook.
"""

__version__ = "0.1.0"
