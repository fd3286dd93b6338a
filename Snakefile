# Post-hoc spectral editing of fine-tuning updates.
# fine-tune -> SVD cache of dW -> spectral edits -> evaluation cells -> tables and figures.
# The logic lives in the spectral_edit package beside this file; rules and scripts stay thin.
# This file is the table of contents: the config, one include per stage, and the targets.

import os

from snakemake.utils import min_version

from spectral_edit.plan.config import read_config_file

# The version setup.sh and envs/ pin and the tests run: its `use rule ... with: params:` replaces
# only the params it names (rules/evaluate.smk, rules/export.smk), which early 9.x did not.
min_version("9.27")

# Snakemake's own reader gives a traceback for a binary or non-UTF-8 file; say it in one line.
# (A file given with --configfile is read by Snakemake's command line before this file runs.)
if os.path.isfile("config.yaml"):
    read_config_file("config.yaml")


configfile: "config.yaml"


report: "rules/captions/workflow.rst"


# The config validated and made canonical, the job environment, and the helpers the rules share.
include: "rules/common.smk"
# Base models materialised from their source.
include: "rules/models.smk"
# Datasets prepared: training split, group-balanced evaluation split.
include: "rules/data.smk"
# Fine-tunes of each base model by recipe and seed.
include: "rules/finetune.smk"
# SVD cache of each fine-tune's update dW, calibration sensitivities, spectral diagnostics.
include: "rules/svd.smk"
# Evaluation cells: base, fine-tuned and edited models on their task and held-out datasets.
include: "rules/evaluate.smk"
# Standard benchmarks through lm-evaluation-harness, for the same models.
include: "rules/benchmarks.smk"
# Tables and figures from all cells.
include: "rules/aggregate.smk"
# Export: any cell as a model directory and a LoRA adapter; Table 1's sweet spots.
include: "rules/export.smk"


# Small bookkeeping jobs run where Snakemake runs, not as cluster jobs.
localrules:
    all,
    benchmark_task,
    aggregate,
    figures,
    sweet_spots,
    export_sweet_spots,


rule all:
    default_target: True
    input:
        rules.aggregate.output,
        rules.figures.output,
        diagnostics_targets(),
