# Helpers shared by the rules: config lookups used as params (a change reruns the rule).

from spectral_edit.config import grid_cells, resolve_method

CONDA_ENV = "../envs/spectral-edit.yaml"


def dataset_prompt(wildcards):
    """What fine-tuning and evaluation read from a dataset's config."""
    spec = config["datasets"][wildcards.dataset]
    return {"prompt": spec["prompt"], "label_words": list(spec["label_words"])}


def method_of(wildcards):
    method, params = resolve_method(config, wildcards.method)
    return {"name": method.name, "params": params}


def all_cells():
    return [layout.CELL.format(**cell.wildcards()) for cell in grid_cells(config)]


def reference_cells():
    grid = config["grid"]
    finetuned = expand(layout.FINETUNED_CELL, model=grid["models"], dataset=grid["datasets"], seed=grid["seeds"])
    base = expand(layout.BASE_CELL, model=grid["models"], dataset=grid["datasets"])
    return finetuned + base


def all_spectra():
    """Every SVD spectrum of the grid, with the cell it belongs to."""
    grid = config["grid"]
    return [
        {"model": m, "dataset": d, "seed": s, "path": layout.SVD_DIR.format(model=m, dataset=d, seed=s) + "/spectrum.json"}
        for m in grid["models"]
        for d in grid["datasets"]
        for s in grid["seeds"]
    ]
