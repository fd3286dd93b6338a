# Serves the evaluation rules: an edited cell (the input has an SVD cache), the fine-tuned
# reference and the base reference, on the task's evaluation split or a held-out benchmark's.
# Edited and fine-tuned cells go to their checkpoint's evaluation server (one model load for
# all of them; evaluation.server in the config); this process then never imports torch.
import time
from pathlib import Path

from spectral_edit.atomic import write_json
from spectral_edit.jobs import job_logging
from spectral_edit.layout import LOGS, parse_retention

w = snakemake.wildcards
inp = snakemake.input
server = snakemake.config["evaluation"]["server"]
through_server = server["enabled"] and "seed" in w.keys()
with job_logging(snakemake.log[0], snakemake.threads, "evaluate", pin_torch=not through_server) as log:
    started = time.time()
    cell = {"model": w.model, "dataset": w.get("dataset"), "benchmark": w.get("benchmark")}
    request = {
        "eval_path": inp.eval,
        "meta_path": inp.meta,
        "dataset_spec": snakemake.params.prompt,
        "batch_size": snakemake.params.batch_size,
    }
    if "factors" in inp.keys():
        retention = parse_retention(w.retention)
        method = snakemake.params.method
        cell.update(seed=int(w.seed), finetune=w.finetune, method=w.method, retention=retention)
        request["edit"] = {
            "factors": inp.factors,
            "finetuned_weights": inp.finetuned_weights,
            "method": method["name"],
            "params": method["params"],
            "retention": retention,
            "seed": int(w.seed),
            "unedited_params": snakemake.params.unedited_params,
            "sensitivities": inp.get("sensitivities"),
        }
        finetuned_weights = inp.finetuned_weights
    elif "seed" in w.keys():
        cell.update(seed=int(w.seed), finetune=w.finetune, method="finetuned", retention=None)
        request["weights"] = finetuned_weights = inp.model_weights
    else:
        cell.update(seed=None, finetune=None, method="base", retention=None)
    request["cell"] = cell
    if through_server:
        from spectral_edit.evaluation_client import serve_cell

        record = serve_cell(
            request,
            model_dir=str(Path(inp.base_weights).parent),
            checkpoint_files=[finetuned_weights],
            runtime=snakemake.params.runtime,
            threads=snakemake.threads,
            server_log=f"{LOGS}/evaluation_server/{w.model}/{w.dataset}/seed{w.seed}/{w.finetune}.log",
            idle_seconds=server["idle_seconds"],
            resident_gb=server["resident_gb"],
            startup_seconds=server["startup_seconds"],
            stall_seconds=server["stall_seconds"],
            note=log.info,
        )
        record["seconds"] = time.time() - started
        log.info(
            "accuracy %.4f gap %.4f (server pid %s with %d torch threads, its cell %d)",
            record["metrics"]["accuracy"],
            record["metrics"]["gap"],
            record["server"]["pid"],
            record["server"]["threads"],
            record["server"]["cells_served"],
        )
        write_json(snakemake.output[0], record)
    else:
        from spectral_edit.cells import evaluate_cell

        edit = request.pop("edit", None)
        weights = request.pop("weights", None)
        evaluate_cell(
            # An edited cell loads the base model; a reference cell the model it evaluates.
            model_dir=str(Path(inp.base_weights if edit else weights or inp.model_weights).parent),
            out_path=snakemake.output[0],
            edit=edit,
            runtime=snakemake.params.runtime,
            **request,
        )
