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
        spec=data_spec,
    script:
        "../workflow_scripts/prepare_dataset.py"
