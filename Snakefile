# Post-hoc spectral editing of fine-tuning updates.
# fine-tune -> SVD cache of dW -> spectral edits -> evaluation cells -> tables and figures.
# The logic lives in the spectral_edit package beside this file; rules and scripts stay thin.

import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")

# This process and the jobs import spectral_edit as installed (setup.sh: pip install -e .). A job
# in a conda env (--use-conda), where it is not installed, finds it in this checkout through
# PYTHONPATH, which Snakemake also passes to cluster jobs (envvars).
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p)


envvars:
    "PYTHONPATH",


from spectral_edit import layout
from spectral_edit.benchmarks.spec import check_benchmarks
from spectral_edit.plan.config import SCHEMA_PATH, canonical, check_config, read_config_file, validate_schema
from spectral_edit.errors import ConfigError
from spectral_edit.data.prompts import check_label_words

# Snakemake's own reader gives a traceback for a binary or non-UTF-8 file; say it in one line.
# (A file given with --configfile is read by Snakemake's command line before this file runs.)
if os.path.isfile("config.yaml"):
    read_config_file("config.yaml")


configfile: "config.yaml"


report: "rules/captions/workflow.rst"


try:
    validate(config, str(SCHEMA_PATH))
except WorkflowError as error:
    # Snakemake's message is the whole jsonschema report; say it in one line naming the key.
    validate_schema(config)
    raise ConfigError(str(error)) from None
check_config(config)
# Every benchmark a task is scored on is known to lm-eval and loads; its definition digest is a
# param of its cells (spectral_edit/benchmarks/spec.py).
BENCHMARK_DIGESTS = check_benchmarks(config)
# Label words must start with distinct tokens: checked here for every model already materialised.
check_label_words(config, lambda model: layout.BASE_MODEL_DIR.format(model=model))
# Params are compared by their repr: keys in one order, whatever order the files wrote them in.
_canonical = canonical(config)
config.clear()
config.update(_canonical)


wildcard_constraints:
    model=r"[^/]+",
    dataset=r"[^/]+",
    seed=r"\d+",
    finetune=r"[^/]+",
    method=r"[^/]+",
    retention=r"[0-9.e-]+|none",
    ncal=r"\d+",
    benchmark=r"[^/]+",


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/finetune.smk"
include: "rules/svd.smk"
include: "rules/evaluate.smk"
include: "rules/benchmarks.smk"
include: "rules/aggregate.smk"
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
