rule finetune:
    """SFT of a base model on a dataset with one seed, by a named recipe (full, LoRA, SpecLoRA)."""
    input:
        base_config=rules.base_model.output.config,
        base_weights=rules.base_model.output.weights,
        train=rules.prepare_dataset.output.train,
    output:
        config=layout.FINETUNE_DIR + "/config.json",
        weights=layout.FINETUNE_DIR + "/model.safetensors",
        train_log=layout.FINETUNE_DIR + "/train_log.json",
    params:
        recipe=lambda w: resolved_recipe(w.finetune),
        prompt=dataset_prompt,
        runtime=config["runtime"],
    resources:
        **cluster_resources("finetune", with_recipe=True),
    log:
        layout.LOGS + "/finetune/{model}/{dataset}/seed{seed}/{finetune}.log",
    threads: workflow.cores
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/finetune.py"
