from pathlib import Path

from spectral_edit.data.prompts import check_label_words_with
from spectral_edit.jobs import job_logging
from spectral_edit.models import load_tokenizer, materialise_base_model

with job_logging(snakemake.log[0], snakemake.threads, "base_model"):
    out_dir = str(Path(snakemake.output.weights).parent)
    materialise_base_model(snakemake.params.spec, out_dir, name=snakemake.wildcards.model)
    # Label words that share a first token under this tokenizer stop the workflow here, before
    # any fine-tune (with the tokenizer on disk, planning checks it from then on).
    check_label_words_with(load_tokenizer(out_dir), snakemake.config, snakemake.wildcards.model)
