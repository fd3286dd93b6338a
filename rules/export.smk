# Taking results out: any cell as a Hugging Face model directory and as an exact PEFT LoRA
# adapter (spectral_edit.export), by its path under results/export/, and Table 1's sweet spots
# with `snakemake export_sweet_spots`.

import json
from pathlib import Path


def export_inputs(wildcards):
    """The edit's inputs (as its evaluation cell has them) and the three cells of the card."""
    inputs = {k: v for k, v in edit_inputs(wildcards).items() if k not in ("eval",)}
    inputs["cell"] = layout.CELL.format(**wildcards)
    inputs["finetuned_cell"] = layout.FINETUNED_CELL.format(**wildcards)
    inputs["base_cell"] = layout.BASE_CELL.format(model=wildcards.model, dataset=wildcards.dataset)
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


rule export_model:
    """One cell's edited model as a Hugging Face model directory with a model card."""
    input:
        unpack(export_inputs),
    output:
        directory(layout.EXPORT_MODEL),
    params:
        form="model",
        method=method_of,
        unedited_params=config["edit"]["unedited_params"],
        export=config["export"],
        card=card_config,
    resources:
        **cluster_resources("evaluate"),
    log:
        layout.LOGS + "/export/{model}/{dataset}/seed{seed}/{finetune}/{method}/retention-{retention}/model.log",
    threads: 1
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/export_cell.py"


use rule export_model as export_adapter with:
    output:
        directory(layout.EXPORT_ADAPTER),
    params:
        form="adapter",
        method=method_of,
        unedited_params=config["edit"]["unedited_params"],
        export=config["export"],
        card=card_config,
    log:
        layout.LOGS + "/export/{model}/{dataset}/seed{seed}/{finetune}/{method}/retention-{retention}/adapter.log",


checkpoint sweet_spots:
    """Table 1's sweet-spot cells of the headline method (what export_sweet_spots exports)."""
    input:
        table1=rules.aggregate.output.table1,
    output:
        layout.SWEET_SPOTS,
    params:
        methods=[config["analysis"]["sweet_spot_method"]],
        seeds=config["grid"]["seeds"],
    log:
        layout.LOGS + "/sweet_spots.log",
    threads: 1
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/sweet_spots.py"


def sweet_spot_exports(wildcards):
    listing = json.loads(Path(checkpoints.sweet_spots.get().output[0]).read_text())
    return [template.format(**cell) for cell in listing["cells"] for template in (layout.EXPORT_MODEL, layout.EXPORT_ADAPTER)]


rule export_sweet_spots:
    """Target: the model and the adapter of every sweet spot of Table 1."""
    input:
        listing=layout.SWEET_SPOTS,
        exports=sweet_spot_exports,
