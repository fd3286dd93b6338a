rule base_model:
    """Materialise a base model once: load it from its source, save safetensors."""
    output:
        config=layout.BASE_MODEL_DIR + "/config.json",
        weights=layout.BASE_MODEL_DIR + "/model.safetensors",
    params:
        spec=lambda w: config["models"][w.model],
    resources:
        **cluster_resources("base_model"),
    log:
        layout.LOGS + "/base_model/{model}.log",
    threads: 1
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/base_model.py"
