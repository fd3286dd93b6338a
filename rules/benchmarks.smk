# Standard benchmarks through lm-evaluation-harness (spectral_edit/benchmarks/). Every model of
# the grid (base, fine-tuned, edited) is scored on each benchmark its task names, inside its
# checkpoint's evaluation server on the in-memory model; one file per (cell, benchmark).


rule benchmark_task:
    """The data and lm-eval task YAML of a benchmark this project generates."""
    output:
        task_yaml=f"{layout.BENCHMARK_TASK_DIR}/task.yaml",
        task_data=f"{layout.BENCHMARK_TASK_DIR}/test.jsonl",
        fewshot=f"{layout.BENCHMARK_TASK_DIR}/train.jsonl",
    log:
        layout.log("benchmark_task/{benchmark}.log"),
    conda:
        CONDA_ENV
    threads: 1
    params:
        spec=lambda w: resolve_benchmark(config, w.benchmark),
    script:
        "../workflow_scripts/benchmark_task.py"


rule benchmark_edit:
    """An edited cell scored on one benchmark."""
    input:
        unpack(lambda w: {**{k: v for k, v in edit_inputs(w).items() if k not in ("eval", "meta")}, **benchmark_task_files(w)}),
    output:
        layout.BENCHMARK_CELL,
    log:
        layout.log("benchmarks/{model}/{dataset}/seed{seed}/{finetune}/{method}/retention-{retention}/{benchmark}.log"),
    group:
        CELL_GROUP
    conda:
        CONDA_ENV
    threads: EVALUATION_THREADS
    resources:
        **cluster_resources("evaluate"),
    params:
        kind="edit",
        method=method_of,
        benchmark=benchmark_params,
        unedited_params=config["edit"]["unedited_params"],
        batch_size=config["evaluation"]["batch_size"],
        runtime=config["runtime"],
    script:
        "../workflow_scripts/evaluate_cell.py"


rule benchmark_finetuned:
    """The unedited fine-tuned model scored on one benchmark."""
    input:
        unpack(benchmark_task_files),
        model_config=rules.finetune.output.config,
        model_weights=rules.finetune.output.weights,
        base_weights=rules.base_model.output.weights,  # the evaluation server loads the base model
    output:
        layout.BENCHMARK_FINETUNED,
    log:
        layout.log("benchmarks/{model}/{dataset}/seed{seed}/{finetune}/finetuned/{benchmark}.log"),
    group:
        CELL_GROUP
    conda:
        CONDA_ENV
    threads: EVALUATION_THREADS
    resources:
        **cluster_resources("evaluate"),
    params:
        kind="finetuned",
        benchmark=benchmark_params,
        batch_size=config["evaluation"]["batch_size"],
        runtime=config["runtime"],
    script:
        "../workflow_scripts/evaluate_cell.py"


rule benchmark_base:
    """The base model scored on one benchmark (in its own process)."""
    input:
        unpack(benchmark_task_files),
        model_config=rules.base_model.output.config,
        model_weights=rules.base_model.output.weights,
    output:
        layout.BENCHMARK_BASE,
    log:
        layout.log("benchmarks/{model}/base/{benchmark}.log"),
    conda:
        CONDA_ENV
    threads: EVALUATION_THREADS
    resources:
        **cluster_resources("evaluate"),
    params:
        kind="base",
        benchmark=benchmark_params,
        batch_size=config["evaluation"]["batch_size"],
        runtime=config["runtime"],
    script:
        "../workflow_scripts/evaluate_cell.py"
