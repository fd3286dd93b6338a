rule prepare_dataset:
    """Training split, group-balanced evaluation split and group metadata of a dataset."""
    output:
        train=layout.DATA_DIR + "/train.jsonl",
        eval=layout.DATA_DIR + "/eval.jsonl",
        meta=layout.DATA_DIR + "/meta.json",
    params:
        # eval_prompt is read by the evaluation cells only; leaving it out keeps a change of it
        # from rerunning the data and everything trained on it.
        spec=lambda w: {k: v for k, v in config["datasets"][w.dataset].items() if k != "eval_prompt"},
    log:
        layout.LOGS + "/prepare_dataset/{dataset}.log",
    threads: 1
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/prepare_dataset.py"
