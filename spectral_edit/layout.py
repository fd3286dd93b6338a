"""Where every artifact lives, relative to the working directory.

The Snakemake rules use these templates as their output patterns, and the library uses them
to find files, so the two never disagree. One file per cell: every piece caches on its own.
A fine-tune is named by a recipe (``full``, ``lora-r16``, ``speclora-k32``, ...), so every
recipe's checkpoint, SVD cache and cells sit side by side.
"""

from __future__ import annotations

RESULTS = "results"
LOGS = "logs"

# Base model materialised once per model (a Hugging Face directory with safetensors).
BASE_MODEL_DIR = RESULTS + "/models/{model}"
# Prepared dataset splits per dataset.
DATA_DIR = RESULTS + "/data/{dataset}"
# Fine-tuned checkpoint per (model, dataset, seed, recipe).
FINETUNE_DIR = RESULTS + "/finetune/{model}/{dataset}/seed{seed}/{finetune}"
# SVD cache of dW per fine-tuned checkpoint, and the version of its file format (a param of
# the SVD rule, so caches written in an older format are recomputed).
SVD_DIR = RESULTS + "/svd/{model}/{dataset}/seed{seed}/{finetune}"
SVD_CACHE_FORMAT = "compact-v1"
# Calibration-gradient sensitivities per fine-tuned checkpoint and calibration size.
SENSITIVITY = RESULTS + "/sensitivity/{model}/{dataset}/seed{seed}/{finetune}/ncal{ncal}.safetensors"
# Evaluation cells. A method without a retention has the retention key "none".
CELL = RESULTS + "/cells/{model}/{dataset}/seed{seed}/{finetune}/{method}/retention-{retention}.json"
FINETUNED_CELL = RESULTS + "/cells/{model}/{dataset}/seed{seed}/{finetune}/finetuned.json"
BASE_CELL = RESULTS + "/cells/{model}/{dataset}/base.json"
# Held-out benchmarks: the same models evaluated on other prepared datasets.
HELDOUT_CELL = RESULTS + "/heldout/{model}/{dataset}/seed{seed}/{finetune}/{method}/retention-{retention}/{benchmark}.json"
HELDOUT_FINETUNED = RESULTS + "/heldout/{model}/{dataset}/seed{seed}/{finetune}/finetuned/{benchmark}.json"
HELDOUT_BASE = RESULTS + "/heldout/{model}/base/{benchmark}.json"
# Standard benchmarks scored through lm-evaluation-harness (spectral_edit.benchmarks): one file
# per (cell, benchmark) with lm-eval's metrics and per-sample scores; the task YAML and data of a
# benchmark this project generates.
BENCHMARK_CELL = RESULTS + "/benchmarks/{model}/{dataset}/seed{seed}/{finetune}/{method}/retention-{retention}/{benchmark}.json"
BENCHMARK_FINETUNED = RESULTS + "/benchmarks/{model}/{dataset}/seed{seed}/{finetune}/finetuned/{benchmark}.json"
BENCHMARK_BASE = RESULTS + "/benchmarks/{model}/base/{benchmark}.json"
BENCHMARK_TASK_DIR = RESULTS + "/benchmark_tasks/{benchmark}"
# A cell taken out: the edited model (a Hugging Face directory) and the edited update (a PEFT
# LoRA adapter on the base model); the list of Table 1's sweet-spot cells to export.
EXPORT_DIR = RESULTS + "/export/{model}/{dataset}/seed{seed}/{finetune}/{method}/retention-{retention}"
EXPORT_MODEL = EXPORT_DIR + "/model"
EXPORT_ADAPTER = EXPORT_DIR + "/adapter"
SWEET_SPOTS = RESULTS + "/export/sweet_spots.json"
# Per-checkpoint diagnostics of dW.
DIAGNOSTICS_DIR = RESULTS + "/diagnostics/{model}/{dataset}/seed{seed}/{finetune}"
# Aggregates.
TABLES_DIR = RESULTS + "/tables"
FIGURES_DIR = RESULTS + "/figures"

NO_RETENTION = "none"
FIGURE_FORMATS = ("png", "pdf")


def log(relative: str) -> str:
    """A job's log file under logs/, e.g. log("finetune/{model}.log") -> "logs/finetune/{model}.log"."""
    return f"{LOGS}/{relative}"


def format_retention(retention: float | None) -> str:
    """The retention as it appears in file names: shortest exact decimal, e.g. 0.05 -> '0.05'."""
    if retention is None:
        return NO_RETENTION
    text = repr(float(retention))
    return text[:-2] if text.endswith(".0") else text


def parse_retention(text: str) -> float | None:
    return None if text == NO_RETENTION else float(text)
