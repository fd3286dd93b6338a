# Serves the evaluation rules: an edited cell (its wildcards name a method), the fine-tuned
# reference (a seed, no method) and the base reference (neither), scored on the task's label
# words, a held-out dataset's, or a benchmark through lm-evaluation-harness (params.benchmark).
# Edited and fine-tuned cells go to their checkpoint's evaluation server (one model load for
# all of them; evaluation.server in the config); this process then never imports torch.
import time
from pathlib import Path

from spectral_edit.atomic import write_json
from spectral_edit.jobs import job_logging
from spectral_edit.layout import LOGS, parse_retention

w = snakemake.wildcards
inp = snakemake.input
params = snakemake.params
server = snakemake.config["evaluation"]["server"]
through_server = server["enabled"] and "seed" in w.keys()
with job_logging(snakemake.log[0], snakemake.threads, "evaluate", pin_torch=not through_server) as log:
    started = time.time()
    cell = {"model": w.model, "dataset": w.get("dataset"), "benchmark": w.get("benchmark")}
    request = {"batch_size": params.batch_size}
    if hasattr(params, "benchmark"):
        request["benchmark"] = params.benchmark
    else:
        request.update(eval_path=inp.eval, meta_path=inp.meta, dataset_spec=params.prompt)
    if "method" in w.keys():
        retention = parse_retention(w.retention)
        method = params.method
        cell.update(seed=int(w.seed), finetune=w.finetune, method=w.method, retention=retention)
        request["edit"] = {
            "factors": inp.factors,
            "finetuned_weights": inp.finetuned_weights,
            "method": method["name"],
            "params": method["params"],
            "retention": retention,
            "seed": int(w.seed),
            "unedited_params": params.unedited_params,
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
        from spectral_edit.evaluate.client import serve_cell

        record = serve_cell(
            request,
            model_dir=str(Path(inp.base_weights).parent),
            checkpoint_files=[finetuned_weights],
            runtime=params.runtime,
            threads=snakemake.threads,
            server_log=f"{LOGS}/evaluation_server/{w.model}/{w.dataset}/seed{w.seed}/{w.finetune}.log",
            idle_seconds=server["idle_seconds"],
            resident_gb=server["resident_gb"],
            startup_seconds=server["startup_seconds"],
            stall_seconds=server["stall_seconds"],
            note=log.info,
        )
        record["seconds"] = time.time() - started
        score = record["benchmark"] if "benchmark" in record else record["metrics"]
        log.info(
            "%s (server pid %s with %d torch threads, its cell %d)",
            f"{score['metric']} {score['score']:.4f}"
            if "benchmark" in record
            else f"accuracy {score['accuracy']:.4f} gap {score['gap']:.4f}",
            record["server"]["pid"],
            record["server"]["threads"],
            record["server"]["cells_served"],
        )
        write_json(snakemake.output[0], record)
    else:
        from spectral_edit.evaluate.cells import evaluate_cell

        edit = request.get("edit")
        weights = request.pop("weights", None)
        evaluate_cell(
            # An edited cell loads the base model; a reference cell the model it evaluates.
            model_dir=str(Path(inp.base_weights if edit else weights or inp.model_weights).parent),
            out_path=snakemake.output[0],
            runtime=params.runtime,
            **request,
        )
    if cell.get("method") == "finetuned" and cell["benchmark"] is None:
        # A fine-tune that learned only the label prior is named here, in its own cell's log.
        import json

        from spectral_edit.data import read_meta
        from spectral_edit.evaluate.metrics import LABEL_PRIOR_SHARE, label_prior_note, top_answer

        meta = read_meta(inp.meta)
        answer, share = top_answer([e["prediction"] for e in json.loads(Path(snakemake.output[0]).read_text())["examples"]])
        if share >= LABEL_PRIOR_SHARE:
            log.warning(label_prior_note(meta["label_words"][answer], share, meta.get("train_label_shares"), w.dataset))
