rule prepare_dataset:
    """Training split, group-balanced evaluation split and group metadata of a dataset."""
    output:
        train=layout.DATA_DIR + "/train.jsonl",
        eval=layout.DATA_DIR + "/eval.jsonl",
        meta=layout.DATA_DIR + "/meta.json",
    params:
        spec=lambda w: config["datasets"][w.dataset],
    log:
        layout.LOGS + "/prepare_dataset/{dataset}.log",
    threads: 1
    conda:
        CONDA_ENV
    script:
        "../workflow_scripts/prepare_dataset.py"
