# Taking results out: any cell as a Hugging Face model directory and as an exact PEFT LoRA
# adapter (spectral_edit.export.artifacts), by its path under results/export/, and Table 1's sweet spots
# with `snakemake export_sweet_spots`.


rule export_model:
    """One cell's edited model as a Hugging Face model directory with a model card."""
    input:
        unpack(export_inputs),
    output:
        directory(layout.EXPORT_MODEL),
    log:
        layout.log("export/{model}/{dataset}/seed{seed}/{finetune}/{method}/retention-{retention}/model.log"),
    conda:
        CONDA_ENV
    threads: 1
    resources:
        **cluster_resources("base_model"),  # CPU work: load, edit, save; no GPU
    params:
        form="model",
        method=method_of,
        unedited_params=config["edit"]["unedited_params"],
        export=config["export"],
        card=card_config,
    script:
        "../workflow_scripts/export_cell.py"


use rule export_model as export_adapter with:
    output:
        directory(layout.EXPORT_ADAPTER),
    log:
        layout.log("export/{model}/{dataset}/seed{seed}/{finetune}/{method}/retention-{retention}/adapter.log"),
    params:
        form="adapter",  # the other params are export_model's (Snakemake replaces only those named)


checkpoint sweet_spots:
    """Table 1's sweet-spot cells of the headline method (what export_sweet_spots exports)."""
    input:
        table1=rules.aggregate.output.table1,
    output:
        layout.SWEET_SPOTS,
    log:
        layout.log("sweet_spots.log"),
    conda:
        CONDA_ENV
    threads: 1
    params:
        methods=[config["analysis"]["sweet_spot_method"]],
        seeds=config["grid"]["seeds"],
    script:
        "../workflow_scripts/sweet_spots.py"


rule export_sweet_spots:
    """Target: the model and the adapter of every sweet spot of Table 1."""
    input:
        listing=layout.SWEET_SPOTS,
        exports=sweet_spot_exports,
