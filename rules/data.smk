rule prepare_dataset:
    """Training split, group-balanced evaluation split and group metadata of a dataset."""
    output:
        train=f"{layout.DATA_DIR}/train.jsonl",
        eval=f"{layout.DATA_DIR}/eval.jsonl",
        meta=f"{layout.DATA_DIR}/meta.json",
    log:
        layout.log("prepare_dataset/{dataset}.log"),
    conda:
        CONDA_ENV
    threads: 1
    params:
        # eval_prompt is read by the evaluation cells only; leaving it out keeps a change of it
        # from rerunning the data and everything trained on it.
        spec=lambda w: {k: v for k, v in config["datasets"][w.dataset].items() if k != "eval_prompt"},
    script:
        "../workflow_scripts/prepare_dataset.py"
