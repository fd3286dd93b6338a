# Serves the evaluation rules: an edited cell, the fine-tuned reference or the base reference
# (params.kind), scored on the task's label words, a held-out dataset's, or a benchmark through
# lm-evaluation-harness (params.benchmark). Edited and fine-tuned cells go to their checkpoint's
# evaluation server (one model load for all of them; evaluation.server in the config); this
# process then never imports torch.
import time
from pathlib import Path

from spectral_edit.atomic import write_json
from spectral_edit.evaluate.request import cell_job
from spectral_edit.jobs import job_logging
from spectral_edit.layout import LOGS

w = snakemake.wildcards
inp = snakemake.input
params = snakemake.params
server = snakemake.config["evaluation"]["server"]
job = cell_job(params.get("kind"), w, inp, params)
through_server = server["enabled"] and job.servable
with job_logging(snakemake.log[0], snakemake.threads, "evaluate", pin_torch=not through_server) as log:
    started = time.time()
    if through_server:
        from spectral_edit.evaluate.client import serve_cell

        record = serve_cell(
            job.request,
            model_dir=job.server_model_dir,
            checkpoint_files=[job.checkpoint],
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

        evaluate_cell(model_dir=job.model_dir, out_path=snakemake.output[0], runtime=params.runtime, **job.in_process_request())
    if job.kind == "finetuned" and job.cell["benchmark"] is None:
        # A fine-tune that learned only the label prior is named here, in its own cell's log.
        import json

        from spectral_edit.data import read_meta
        from spectral_edit.evaluate.metrics import LABEL_PRIOR_SHARE, label_prior_note, top_answer

        meta = read_meta(inp.meta)
        answer, share = top_answer([e["prediction"] for e in json.loads(Path(snakemake.output[0]).read_text())["examples"]])
        if share >= LABEL_PRIOR_SHARE:
            log.warning(label_prior_note(meta["label_words"][answer], share, meta.get("train_label_shares"), w.dataset))
