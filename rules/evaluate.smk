# Evaluation cells. An edited model is built in memory from the base weights, the fine-tuned
# weights and the SVD cache; it is never written to disk. The cells of one checkpoint are
# evaluated by one server process that loads the model once (spectral_edit.evaluate.client).
# A cell claims the cores its server computes with (EVALUATION_THREADS, rules/common.smk), so
# the scheduler never runs two cells that wait on one server while a core idles.


rule evaluate_edit:
    """One (model, dataset, seed, fine-tune, method, retention) cell."""
    input:
        unpack(edit_inputs),
    output:
        layout.CELL,
    log:
        layout.log("evaluate/{model}/{dataset}/seed{seed}/{finetune}/{method}/retention-{retention}.log"),
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
        prompt=evaluation_prompt,
        unedited_params=config["edit"]["unedited_params"],
        batch_size=config["evaluation"]["batch_size"],
        runtime=config["runtime"],
    script:
        "../workflow_scripts/evaluate_cell.py"


rule evaluate_finetuned:
    """Reference cell: the unedited fine-tuned model (also the training-time controls)."""
    input:
        model_config=rules.finetune.output.config,
        model_weights=rules.finetune.output.weights,
        base_weights=rules.base_model.output.weights,  # the evaluation server loads the base model
        eval=rules.prepare_dataset.output.eval,
        meta=rules.prepare_dataset.output.meta,
    output:
        layout.FINETUNED_CELL,
    log:
        layout.log("evaluate/{model}/{dataset}/seed{seed}/{finetune}/finetuned.log"),
    group:
        CELL_GROUP
    conda:
        CONDA_ENV
    threads: EVALUATION_THREADS
    resources:
        **cluster_resources("evaluate"),
    params:
        kind="finetuned",
        prompt=evaluation_prompt,
        batch_size=config["evaluation"]["batch_size"],
        runtime=config["runtime"],
    script:
        "../workflow_scripts/evaluate_cell.py"


rule evaluate_base:
    """Reference cell: the base model (no fine-tuning, so no seed)."""
    input:
        model_config=rules.base_model.output.config,
        model_weights=rules.base_model.output.weights,
        eval=rules.prepare_dataset.output.eval,
        meta=rules.prepare_dataset.output.meta,
    output:
        layout.BASE_CELL,
    log:
        layout.log("evaluate/{model}/{dataset}/base.log"),
    conda:
        CONDA_ENV
    threads: EVALUATION_THREADS
    resources:
        **cluster_resources("evaluate"),
    params:
        kind="base",
        prompt=evaluation_prompt,
        batch_size=config["evaluation"]["batch_size"],
        runtime=config["runtime"],
    script:
        "../workflow_scripts/evaluate_cell.py"


# Held-out benchmarks: the same three kinds of model, evaluated on another prepared dataset.
# A `use rule ... with:` block replaces a section whole (input, output, log), except params:
# Snakemake (9.1 and later) replaces only the params it names and keeps the rule's others
# (kind among them), so only the prompt is named here.


use rule evaluate_edit as evaluate_heldout_edit with:
    input:
        unpack(heldout_edit_inputs),
    output:
        layout.HELDOUT_CELL,
    log:
        layout.log("heldout/{model}/{dataset}/seed{seed}/{finetune}/{method}/retention-{retention}/{benchmark}.log"),
    params:
        prompt=benchmark_prompt,


use rule evaluate_finetuned as evaluate_heldout_finetuned with:
    input:
        model_config=rules.finetune.output.config,
        model_weights=rules.finetune.output.weights,
        base_weights=rules.base_model.output.weights,
        eval=lambda w: benchmark_data(w)["eval"],
        meta=lambda w: benchmark_data(w)["meta"],
    output:
        layout.HELDOUT_FINETUNED,
    log:
        layout.log("heldout/{model}/{dataset}/seed{seed}/{finetune}/finetuned/{benchmark}.log"),
    params:
        prompt=benchmark_prompt,


use rule evaluate_base as evaluate_heldout_base with:
    input:
        model_config=rules.base_model.output.config,
        model_weights=rules.base_model.output.weights,
        eval=lambda w: benchmark_data(w)["eval"],
        meta=lambda w: benchmark_data(w)["meta"],
    output:
        layout.HELDOUT_BASE,
    log:
        layout.log("heldout/{model}/base/{benchmark}.log"),
    params:
        prompt=benchmark_prompt,
