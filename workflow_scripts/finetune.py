from pathlib import Path

import torch

from spectral_edit.jobs import job_logging
from spectral_edit.plan.records import Runtime
from spectral_edit.runtime import resolve as resolve_runtime
from spectral_edit.train.distributed import launch_finetune
from spectral_edit.train.finetune import finetune

with job_logging(snakemake.log[0], snakemake.threads, "finetune"):
    runtime = Runtime.from_mapping(snakemake.params.runtime)
    recipe = dict(snakemake.params.recipe)
    arguments = dict(
        base_dir=str(Path(snakemake.input.base_weights).parent),
        train_path=snakemake.input.train,
        out_dir=str(Path(snakemake.output.weights).parent),
        dataset_spec=snakemake.params.prompt,
        hyper=recipe.pop("hyper"),
        seed=int(snakemake.wildcards.seed),
        recipe=recipe,
        runtime=snakemake.params.runtime,
        # Read from the config, not a param: how often to checkpoint does not change the
        # result, so changing it must not rerun the fine-tune.
        checkpoint_every=snakemake.config["checkpoint"]["every_steps"],
    )
    device, _ = resolve_runtime(runtime)
    # The GPUs the job asked for, as far as this machine has them (a local run may have fewer).
    gpus = min(int(getattr(snakemake.resources, "gpu", 0) or 0), torch.cuda.device_count())
    if gpus > 1 and device.type == "cuda":
        # A model whose full SFT does not fit one GPU (spectral_edit.plan.resources): one process
        # per GPU under torchrun, sharded with FSDP; per-rank logs beside this job's log.
        launch_finetune(gpus, arguments, log_dir=snakemake.log[0] + ".ranks")
    else:
        finetune(**arguments)
