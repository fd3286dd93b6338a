rule base_model:
    """Materialise a base model once: load it from its source, save safetensors."""
    output:
        config=f"{layout.BASE_MODEL_DIR}/config.json",
        weights=f"{layout.BASE_MODEL_DIR}/model.safetensors",
    log:
        layout.log("base_model/{model}.log"),
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **cluster_resources("base_model"),
    params:
        spec=lambda w: config["models"][w.model],
    script:
        "../workflow_scripts/base_model.py"
