rule finetune:
    """SFT of a base model on a dataset with one seed, by a named recipe (full, LoRA, SpecLoRA)."""
    input:
        base_config=rules.base_model.output.config,
        base_weights=rules.base_model.output.weights,
        train=rules.prepare_dataset.output.train,
    output:
        config=f"{layout.FINETUNE_DIR}/config.json",
        weights=f"{layout.FINETUNE_DIR}/model.safetensors",
        train_log=f"{layout.FINETUNE_DIR}/train_log.json",
    log:
        layout.log("finetune/{model}/{dataset}/seed{seed}/{finetune}.log"),
    conda:
        CONDA_ENV
    threads: CHECKPOINT_JOB_THREADS
    resources:
        **cluster_resources("finetune", with_recipe=True),
    params:
        recipe=lambda w: recipe_of(w.finetune, w.dataset),
        prompt=dataset_prompt,
        runtime=config["runtime"],
    script:
        "../workflow_scripts/finetune.py"
