rule svd_cache:
    """U, S, V^T of dW = W_ft - W_base for every 2-D matrix, once per fine-tuned checkpoint."""
    input:
        base_weights=rules.base_model.output.weights,
        finetuned_weights=rules.finetune.output.weights,
    output:
        factors=f"{layout.SVD_DIR}/factors.safetensors",
        spectrum=f"{layout.SVD_DIR}/spectrum.json",
    log:
        layout.log("svd_cache/{model}/{dataset}/seed{seed}/{finetune}.log"),
    conda:
        CONDA_ENV
    threads: CHECKPOINT_JOB_THREADS
    resources:
        **cluster_resources("svd_cache"),
    params:
        cache_format=layout.SVD_CACHE_FORMAT,  # a new format reruns caches written in an older one
        include_embeddings=config["svd"]["include_embeddings"],
        batch_size=config["svd"]["batch_size"],
        runtime=config["runtime"],
    script:
        "../workflow_scripts/svd_cache.py"


rule sensitivities:
    """Calibration-gradient sensitivities g_k = u_k^T G v_k (Spectral Surgery), per checkpoint."""
    input:
        model_config=rules.finetune.output.config,
        model_weights=rules.finetune.output.weights,
        base_weights=rules.base_model.output.weights,
        factors=rules.svd_cache.output.factors,
        train=rules.prepare_dataset.output.train,
    output:
        layout.SENSITIVITY,
    log:
        layout.log("sensitivities/{model}/{dataset}/seed{seed}/{finetune}/ncal{ncal}.log"),
    conda:
        CONDA_ENV
    threads: CHECKPOINT_JOB_THREADS
    resources:
        **cluster_resources("sensitivities"),
    params:
        prompt=dataset_prompt,
        max_length=lambda w: recipe_of(w.finetune, w.dataset)["hyper"]["max_length"],
        runtime=config["runtime"],
    script:
        "../workflow_scripts/sensitivities.py"


rule subspace_diagnostics:
    """Cross-layer alignment of the update's singular subspaces (Spectral Surgery Fig. 1)."""
    input:
        factors=rules.svd_cache.output.factors,
        base_weights=rules.base_model.output.weights,
        finetuned_weights=rules.finetune.output.weights,
    output:
        table=f"{layout.DIAGNOSTICS_DIR}/subspace_alignment.csv",
        figures=diagnostic_figures("subspace_alignment"),
    log:
        layout.log("diagnostics/{model}/{dataset}/seed{seed}/{finetune}/subspace.log"),
    conda:
        CONDA_ENV
    threads: 1
    params:
        top_m=config["diagnostics"]["subspace_top_m"],
    script:
        "../workflow_scripts/subspace_diagnostics.py"


rule marchenko_pastur_diagnostics:
    """DG-Hard's kept rank per matrix and the discarded spectrum against the MP bulk."""
    input:
        spectrum=rules.svd_cache.output.spectrum,
    output:
        table=f"{layout.DIAGNOSTICS_DIR}/dg_hard_ranks.csv",
        figures=diagnostic_figures("marchenko_pastur"),
    log:
        layout.log("diagnostics/{model}/{dataset}/seed{seed}/{finetune}/marchenko_pastur.log"),
    conda:
        CONDA_ENV
    threads: 1
    params:
        dg_hard=dg_hard_params(),
        layers=config["diagnostics"]["representative_layers"],
    script:
        "../workflow_scripts/marchenko_pastur_diagnostics.py"
