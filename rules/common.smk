# The config checked and made canonical, the job environment, and the helpers shared by the
# rules: config lookups used as params (a change reruns the rule) and the lists of targets the
# grid asks for. Input, params and resources functions run once per job (thousands on the
# paper grid), so what depends only on a name is resolved once.

import functools
import json
import os
from pathlib import Path

import torch
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from spectral_edit import layout
from spectral_edit.benchmarks.spec import check_benchmarks, dataset_benchmarks, resolve_benchmark
from spectral_edit.data import is_instruction
from spectral_edit.data.prompts import check_label_words
from spectral_edit.errors import ConfigError
from spectral_edit.plan.config import (
    SCHEMA_PATH,
    canonical,
    check_config,
    grid_cells,
    grid_finetunes,
    recipe_for_dataset,
    resolve_finetune,
    resolve_method,
    validate_schema,
)
from spectral_edit.analysis.figures import figure_names  # the registry alone: no matplotlib until a figure is drawn
from spectral_edit.plan.resources import rule_resources

# This process and the jobs import spectral_edit as installed (setup.sh: pip install -e .). A job
# in a conda env (--use-conda), where it is not installed, finds it in this checkout through
# PYTHONPATH, which Snakemake also passes to cluster jobs (envvars).
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (workflow.basedir, os.environ.get("PYTHONPATH")) if p)


envvars:
    "PYTHONPATH",


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


CONDA_ENV = "../envs/spectral-edit.yaml"

# Cores of one evaluation cell, and the torch threads of the server that computes it. A served
# cell is a client that waits on its checkpoint's server, which evaluates one cell at a time:
# with one core per cell, Snakemake ran two cells of one checkpoint side by side, one of them
# waiting while its core idled. Claiming every core (or evaluation.threads of them, so that
# servers of several checkpoints run side by side on a large machine) keeps what the scheduler
# counts and what the server computes with the same. On 2 cores one server with 2 threads
# scored 8.6 examples/s, two servers of one thread each 8.9 together: the same (README).
EVALUATION_THREADS = min(workflow.cores, config["evaluation"].get("threads") or workflow.cores)


def _checkpoint_job_threads():
    """Cores of a job that runs once per checkpoint: the fine-tune, the SVD cache, the
    calibration sensitivities. On a local CPU run the checkpoints of the grid split the cores,
    so that such jobs of two checkpoints run side by side: on 2 cores a fine-tuning step of the
    default takes about 1.8 s on two threads and 2.5-2.8 s on one thread beside the other
    fine-tune (1.34x the machine's steps per second: bench figure 10), the SVD cache 29.7 s on
    two threads and 40 s for both side by side on one thread each (README, "Run time"). The split depends only on the config and --cores, so a rerun on the same
    machine computes with the same thread counts (the weights depend on them: README,
    "Reproducibility"); --set-threads finetune=N overrides it. A GPU run, or a SLURM job (whose
    cpus_per_task the resources set), keeps every core: checkpoints there do not share a device.
    """
    if not (workflow.local_exec and workflow.is_main_process):
        return workflow.cores
    device = config["runtime"]["device"]
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return workflow.cores
    checkpoints = len(_grid_checkpoints(grid_finetunes(config)))
    return max(1, workflow.cores // max(1, min(checkpoints, workflow.cores)))


def prompt_of(name, evaluation=False):
    """What fine-tuning (and calibration) or evaluation reads from a dataset's config.

    Evaluation takes ``eval_prompt`` when set, so changing it reruns only the evaluations;
    the resolved value is the param, so spelling out the default changes nothing.
    """
    spec = config["datasets"][name]
    if is_instruction(spec):
        # The chats are in the prepared split; only how they are rendered is read here.
        return {"kind": "instruction", **({"chat_template": False} if spec.get("chat_template") is False else {})}
    keys = ("prompt", "label_words", "max_text_tokens")
    prompt = {key: spec[key] for key in keys if key in spec}
    if evaluation and "eval_prompt" in spec:
        prompt["prompt"] = spec["eval_prompt"]
    return prompt


def dataset_prompt(wildcards):
    return prompt_of(wildcards.dataset)


def evaluation_prompt(wildcards):
    return prompt_of(wildcards.dataset, evaluation=True)


def benchmark_prompt(wildcards):
    return prompt_of(wildcards.benchmark, evaluation=True)


def benchmark_data(wildcards):
    directory = layout.DATA_DIR.format(dataset=wildcards.benchmark)
    return {"eval": f"{directory}/eval.jsonl", "meta": f"{directory}/meta.json"}


@functools.cache
def resolved_method(name):
    """(registered method, its parameters, the digest of its code) of a grid method name."""
    method, params = resolve_method(config, name)
    return method, params, method.source_digest


@functools.cache
def resolved_recipe(name):
    return resolve_finetune(config, name)


@functools.cache
def recipe_of(name, dataset):
    """A recipe with the dataset's own hyperparameters (datasets.<name>.finetune) over it."""
    return recipe_for_dataset(config, name, dataset)


def data_spec(wildcards):
    """What preparing a dataset reads: its spec without the keys only later stages use
    (evaluation prompt, benchmark lists, fine-tuning hyperparameters), so that changing those
    does not rerun the data and everything trained on it."""
    later = ("eval_prompt", "heldout", "benchmarks", "finetune", "chat_template")
    return {k: v for k, v in config["datasets"][wildcards.dataset].items() if k not in later}


def method_of(wildcards):
    method, params, code = resolved_method(wildcards.method)
    return {"name": method.name, "params": params, "code": code}


def checkpoint_dirs(wildcards):
    return {key: value.format(**wildcards) for key, value in (("finetune", layout.FINETUNE_DIR), ("svd", layout.SVD_DIR))}


def edit_inputs(wildcards):
    """Inputs of an edited cell; methods that need calibration sensitivities get that file."""
    method, params, _ = resolved_method(wildcards.method)
    dirs = checkpoint_dirs(wildcards)
    inputs = {
        "base_config": f"{layout.BASE_MODEL_DIR.format(model=wildcards.model)}/config.json",
        "base_weights": f"{layout.BASE_MODEL_DIR.format(model=wildcards.model)}/model.safetensors",
        "factors": f"{dirs['svd']}/factors.safetensors",
        "finetuned_weights": f"{dirs['finetune']}/model.safetensors",
        "eval": f"{layout.DATA_DIR.format(dataset=wildcards.dataset)}/eval.jsonl",
        "meta": f"{layout.DATA_DIR.format(dataset=wildcards.dataset)}/meta.json",
    }
    if "sensitivities" in method.needs:
        inputs["sensitivities"] = layout.SENSITIVITY.format(ncal=int(params["calibration_size"]), **wildcards)
    return inputs


def _grid_checkpoints(finetunes):
    """The wildcards of every fine-tuned checkpoint of the grid with these recipes."""
    grid = config["grid"]
    return [
        {"model": m, "dataset": d, "seed": s, "finetune": f}
        for m in grid["models"]
        for d in grid["datasets"]
        for s in grid["seeds"]
        for f in finetunes
    ]


def _grid_product(template, finetunes):
    return [template.format(**checkpoint) for checkpoint in _grid_checkpoints(finetunes)]


def label_word_dataset(name):
    return not is_instruction(config["datasets"][name])


def all_cells():
    """Every edited cell scored on its task's label words (instruction tasks have none)."""
    return [layout.CELL.format(**cell.wildcards()) for cell in grid_cells(config) if label_word_dataset(cell.dataset)]


def reference_cells():
    grid = config["grid"]
    checkpoints = _grid_checkpoints(grid_finetunes(config))
    finetuned = [layout.FINETUNED_CELL.format(**c) for c in checkpoints if label_word_dataset(c["dataset"])]
    base = expand(layout.BASE_CELL, model=grid["models"], dataset=[d for d in grid["datasets"] if label_word_dataset(d)])
    return finetuned + base


def heldout_of(dataset):
    """The label-word datasets a task names as held-out benchmarks (its lm-eval ones: benchmarks_of)."""
    return [b for b in config["datasets"][dataset].get("heldout", []) or [] if b in config["datasets"]]


def benchmarks_of(dataset):
    """Every lm-eval benchmark a task is scored on: its own, then its held-out ones."""
    targets, heldout = dataset_benchmarks(config, dataset)
    return targets + heldout


def benchmark_cells():
    """Every model of the grid (edited, fine-tuned, base) on each task's lm-eval benchmarks."""
    grid = config["grid"]
    paths = []
    for cell in grid_cells(config):
        paths += [layout.BENCHMARK_CELL.format(benchmark=b, **cell.wildcards()) for b in benchmarks_of(cell.dataset)]
    for checkpoint in _grid_checkpoints(grid_finetunes(config)):
        for b in benchmarks_of(checkpoint["dataset"]):
            paths.append(layout.BENCHMARK_FINETUNED.format(benchmark=b, **checkpoint))
            paths.append(layout.BENCHMARK_BASE.format(model=checkpoint["model"], benchmark=b))
    return list(dict.fromkeys(paths))


def benchmark_roles():
    """[task, benchmark, "target" | "heldout"] of every lm-eval benchmark a grid task is scored on."""
    roles = []
    for dataset in config["grid"]["datasets"]:
        targets, heldout = dataset_benchmarks(config, dataset)
        roles += [[dataset, b, "target"] for b in targets] + [[dataset, b, "heldout"] for b in heldout]
    return roles


@functools.cache
def surgery_policies():
    """{grid method: its Spectral Surgery policy} (Figs. 3 and 4 pick their methods by policy)."""
    policies = {}
    for name in config["grid"]["methods"]:
        method, params = resolved_method(name)[:2]
        if method.name == "spectral_surgery":
            policies[name] = params["policy"]
    return policies


def benchmark_params(wildcards):
    """A benchmark's settings and the digest of its definition: a change of either reruns its cells."""
    return {**resolve_benchmark(config, wildcards.benchmark), "definition": BENCHMARK_DIGESTS[wildcards.benchmark]}


def benchmark_task_files(wildcards):
    """The task YAML and data a generated benchmark's cells read (none for lm-eval's own tasks)."""
    spec = resolve_benchmark(config, wildcards.benchmark)
    if spec["source"] == "lm_eval":
        return {}
    directory = layout.BENCHMARK_TASK_DIR.format(benchmark=wildcards.benchmark)
    return {"task_yaml": f"{directory}/task.yaml", "task_data": f"{directory}/test.jsonl"}


def heldout_cells():
    """Every model of the grid (edited, fine-tuned, base) on each task's held-out benchmarks."""
    grid = config["grid"]
    paths = []
    for cell in grid_cells(config):
        paths += [layout.HELDOUT_CELL.format(benchmark=b, **cell.wildcards()) for b in heldout_of(cell.dataset)]
    for m in grid["models"]:
        for d in grid["datasets"]:
            for b in heldout_of(d):
                paths.append(layout.HELDOUT_BASE.format(model=m, benchmark=b))
                paths += [
                    layout.HELDOUT_FINETUNED.format(model=m, dataset=d, seed=s, finetune=f, benchmark=b)
                    for s in grid["seeds"]
                    for f in grid_finetunes(config)
                ]
    return list(dict.fromkeys(paths))


def all_spectra():
    """Every SVD spectrum of the edited fine-tunes, with the checkpoint it belongs to."""
    return [
        {**checkpoint, "path": f"{layout.SVD_DIR.format(**checkpoint)}/spectrum.json"}
        for checkpoint in _grid_checkpoints(config["grid"]["finetunes"])
    ]


def dg_hard_params():
    """Parameters of the first DG-Hard method in the grid (None when the grid has none)."""
    for name in config["grid"]["methods"]:
        method, params = resolve_method(config, name)
        if method.name == "dg_hard":
            return params
    return None


def diagnostics_targets():
    names = ["subspace_alignment.csv"]
    if dg_hard_params() is not None:
        names.append("dg_hard_ranks.csv")
    return [f"{path}/{name}" for path in _grid_product(layout.DIAGNOSTICS_DIR, config["grid"]["finetunes"]) for name in names]


def figure_targets():
    """Every figure as PNG and PDF; the PNGs go into the report with their captions."""
    targets = []
    for name in figure_names(config, surgery_policies()):
        for ext in layout.FIGURE_FORMATS:
            path = f"{layout.FIGURES_DIR}/{name}.{ext}"
            targets.append(report(path, caption=f"captions/{name}.rst", category="Figures") if ext == "png" else path)
    return targets


def diagnostic_figures(name):
    """A diagnostic figure per checkpoint, PNG in the report (one subcategory per checkpoint)."""
    png = report(
        f"{layout.DIAGNOSTICS_DIR}/{name}.png",
        caption=f"captions/{name}.rst",
        category="Diagnostics",
        subcategory="{model} / {dataset} / seed {seed} / {finetune}",
    )
    return [png, f"{layout.DIAGNOSTICS_DIR}/{name}.pdf"]


def cluster_resources(kind, with_recipe=False):
    """Resources of a rule's jobs from the model's size (spectral_edit/plan/resources.py).

    A profile's set-resources overrides them per rule; a local run ignores gpu and runtime.
    """

    @functools.cache
    def resources_of(model, finetune, dataset=None):
        spec = config["models"][model] if model else {}
        recipe = (recipe_of(finetune, dataset) if dataset else resolved_recipe(finetune)) if finetune else None
        return rule_resources(kind, spec, config, recipe)

    def pick(key):
        def value(wildcards):
            model = wildcards.model if "model" in wildcards.keys() else None
            if with_recipe:
                return resources_of(model, wildcards.finetune, wildcards.dataset)[key]
            return resources_of(model, None)[key]

        return value

    # Snakemake evaluates a callable resource for every job (~0.2 ms each, mostly its own
    # signature inspection), thousands of times on the paper grid. A key whose value is the
    # same for every model in the config (gpu and cpus_per_task of most rules) is given as
    # that constant. Recipes are not folded over: a target may name one outside the grid.
    by_model = [resources_of(model, None) for model in config["models"]] if not with_recipe else []
    resources = {}
    for key in ("gpu", "mem_mb", "runtime", "cpus_per_task"):
        values = {spec[key] for spec in by_model}
        resources[key] = values.pop() if len(values) == 1 else pick(key)
    if kind == "evaluate":
        resources["cell_slots"] = 1  # see profiles/slurm: grouped cells run one at a time
    return resources


# On a cluster the evaluation cells of one fine-tuned checkpoint are submitted together: the
# profile's group-components sets how many cells one SLURM job runs. Locally groups are inactive.
CELL_GROUP = "cells_{model}_{dataset}_seed{seed}_{finetune}"


# Held-out benchmarks and exports.


def heldout_edit_inputs(wildcards):
    return {**edit_inputs(wildcards), **benchmark_data(wildcards)}


def export_inputs(wildcards):
    """The edit's inputs (as its evaluation cell has them) and the cells of the model card: the
    label-word cell with its fine-tuned and base references, and each lm-eval benchmark's."""
    inputs = {k: v for k, v in edit_inputs(wildcards).items() if k not in ("eval",)}
    if label_word_dataset(wildcards.dataset):
        inputs["cell"] = layout.CELL.format(**wildcards)
        inputs["finetuned_cell"] = layout.FINETUNED_CELL.format(**wildcards)
        inputs["base_cell"] = layout.BASE_CELL.format(model=wildcards.model, dataset=wildcards.dataset)
    for b in benchmarks_of(wildcards.dataset):
        inputs[f"benchmark:{b}"] = layout.BENCHMARK_CELL.format(benchmark=b, **wildcards)
        inputs[f"benchmark_finetuned:{b}"] = layout.BENCHMARK_FINETUNED.format(benchmark=b, **wildcards)
        inputs[f"benchmark_base:{b}"] = layout.BENCHMARK_BASE.format(benchmark=b, model=wildcards.model)
    return inputs


def card_config(wildcards):
    """What made the cell, as its model card states it (and a rerun trigger of the export)."""
    method, params, _ = resolved_method(wildcards.method)
    return {
        "model": {wildcards.model: config["models"][wildcards.model]},
        "dataset": {wildcards.dataset: config["datasets"][wildcards.dataset]},
        "finetune": {wildcards.finetune: resolved_recipe(wildcards.finetune)},
        "method": {wildcards.method: {"method": method.name, **params}},
        "edit": config["edit"],
        "evaluation": {"batch_size": config["evaluation"]["batch_size"]},
        "bootstrap": config["analysis"]["bootstrap"],
    }


def sweet_spot_exports(wildcards):
    listing = json.loads(Path(checkpoints.sweet_spots.get().output[0]).read_text())
    return [template.format(**cell) for cell in listing["cells"] for template in (layout.EXPORT_MODEL, layout.EXPORT_ADAPTER)]


def _check_local_device():
    """A CUDA device asked for where a local run has none: one line before any job (on a
    cluster the login node plans and the jobs' nodes have the GPUs, so it is not checked)."""
    device = config["runtime"]["device"]
    if workflow.local_exec and workflow.is_main_process and device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config: runtime.device is {device!r} but this machine has no CUDA device")


_check_local_device()
CHECKPOINT_JOB_THREADS = _checkpoint_job_threads()
