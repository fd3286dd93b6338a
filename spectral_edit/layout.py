"""Where every artifact lives, relative to the working directory.

The Snakemake rules use these templates as their output patterns, and the library uses them
to find files, so the two never disagree. One file per cell: every piece caches on its own.
"""

from __future__ import annotations

RESULTS = "results"
LOGS = "logs"

# Base model materialised once per model (a Hugging Face directory with safetensors).
BASE_MODEL_DIR = RESULTS + "/models/{model}"
# Prepared dataset splits per dataset.
DATA_DIR = RESULTS + "/data/{dataset}"
# Fine-tuned checkpoint per (model, dataset, seed).
FINETUNE_DIR = RESULTS + "/finetune/{model}/{dataset}/seed{seed}"
# SVD cache of dW per (model, dataset, seed).
SVD_DIR = RESULTS + "/svd/{model}/{dataset}/seed{seed}"
# Evaluation cells.
CELL = RESULTS + "/cells/{model}/{dataset}/seed{seed}/{method}/r{retention}.json"
FINETUNED_CELL = RESULTS + "/cells/{model}/{dataset}/seed{seed}/finetuned.json"
BASE_CELL = RESULTS + "/cells/{model}/{dataset}/base.json"
# Aggregates.
TABLES_DIR = RESULTS + "/tables"
FIGURES_DIR = RESULTS + "/figures"

FIGURES = ("trajectory", "retention_sweep", "method_comparison", "spectrum")
FIGURE_FORMATS = ("png", "pdf")


def format_retention(retention: float) -> str:
    """The retention as it appears in file names: shortest exact decimal, e.g. 0.05 -> '0.05'."""
    text = repr(float(retention))
    return text[:-2] if text.endswith(".0") else text

