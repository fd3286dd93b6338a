# Serves the evaluation rules: an edited cell (the input has an SVD cache), the fine-tuned
# reference and the base reference, on the task's evaluation split or a held-out benchmark's.
from spectral_edit.cells import evaluate_cell
from spectral_edit.jobs import job_logging
from spectral_edit.layout import parse_retention

w = snakemake.wildcards
inp = snakemake.input
with job_logging(snakemake.log[0], snakemake.threads, "evaluate"):
    cell = {"model": w.model, "dataset": w.get("dataset"), "benchmark": w.get("benchmark")}
    edit = None
    if "factors" in inp.keys():
        retention = parse_retention(w.retention)
        method = snakemake.params.method
        cell.update(seed=int(w.seed), finetune=w.finetune, method=w.method, retention=retention)
        edit = {
            "factors": inp.factors,
            "finetuned_weights": inp.finetuned_weights,
            "method": method["name"],
            "params": method["params"],
            "retention": retention,
            "seed": int(w.seed),
            "unedited_params": snakemake.params.unedited_params,
            "sensitivities": inp.get("sensitivities"),
        }
        model_file = inp.base_weights
    elif "seed" in w.keys():
        cell.update(seed=int(w.seed), finetune=w.finetune, method="finetuned", retention=None)
        model_file = inp.model_weights
    else:
        cell.update(seed=None, finetune=None, method="base", retention=None)
        model_file = inp.model_weights
    evaluate_cell(
        model_dir=model_file.rsplit("/", 1)[0],
        eval_path=inp.eval,
        meta_path=inp.meta,
        dataset_spec=snakemake.params.prompt,
        out_path=snakemake.output[0],
        cell=cell,
        edit=edit,
        batch_size=snakemake.params.batch_size,
        runtime=snakemake.params.runtime,
    )
