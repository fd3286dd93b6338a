from spectral_edit.finetune import finetune
from spectral_edit.jobs import job_logging

with job_logging(snakemake.log[0], snakemake.threads, "finetune"):
    recipe = dict(snakemake.params.recipe)
    finetune(
        base_dir=snakemake.input.base_weights.rsplit("/", 1)[0],
        train_path=snakemake.input.train,
        out_dir=snakemake.output.weights.rsplit("/", 1)[0],
        dataset_spec=snakemake.params.prompt,
        hyper=recipe.pop("hyper"),
        seed=int(snakemake.wildcards.seed),
        recipe=recipe,
        runtime=snakemake.params.runtime,
        # Read from the config, not a param: how often to checkpoint does not change the
        # result, so changing it must not rerun the fine-tune.
        checkpoint_every=snakemake.config["checkpoint"]["every_steps"],
    )
