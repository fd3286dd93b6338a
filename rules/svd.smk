rule svd_cache:
    """U, S, V^T of dW = W_ft - W_base for every 2-D matrix, once per fine-tuned checkpoint."""
    input:
        base_weights=rules.base_model.output.weights,
        finetuned_weights=rules.finetune.output.weights,
    output:
        factors=layout.SVD_DIR + "/factors.safetensors",
        spectrum=layout.SVD_DIR + "/spectrum.json",
    params:
        include_embeddings=config["svd"]["include_embeddings"],
    log:
        layout.LOGS + "/svd_cache/{model}/{dataset}/seed{seed}.log",
    threads: workflow.cores
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/svd_cache.py"
