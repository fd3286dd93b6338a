"""Figure 6: one fine-tuning step (forward, backward, clipping, AdamW) with the fused AdamW the
workflow uses against the foreach AdamW that the Trainer uses by default, each in a child process
of its own (bench/children/adamw_steps.py) so that neither inherits the other's freed memory."""

from __future__ import annotations

import json

import torch

from bench.common import repo_env, run_child
from spectral_edit.data import read_split
from spectral_edit.data.prompts import examples_of, formatter_for
from spectral_edit.models import load_tokenizer


def fused_vs_foreach_adamw(paths: dict, config: dict, steps: int = 6) -> None:
    keys = paths["keys"]
    hyper = config["finetune"]
    formatter = formatter_for(load_tokenizer(paths["base"]), config["datasets"][keys["dataset"]])
    frame = read_split(paths["data"] / "train.jsonl").head(int(hyper["batch_size"]))
    rows = [
        formatter.training_features(e, int(y), int(hyper["max_length"]))
        for e, y in zip(examples_of(frame, ["text"]), frame["label"])
    ]
    width = max(len(r["input_ids"]) for r in rows)
    batch = {
        "input_ids": [r["input_ids"] + [0] * (width - len(r["input_ids"])) for r in rows],
        "labels": [r["labels"] + [-100] * (width - len(r["labels"])) for r in rows],
        "attention_mask": [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows],
    }
    threads = torch.get_num_threads()
    result = {}
    for fused in (False, True):
        result[fused] = run_child(
            "adamw_steps.py",
            str(paths["base"]),
            "1" if fused else "0",
            str(steps),
            str(threads),
            json.dumps(batch),
            env=repo_env(),
        )
    print(
        f"[6] fine-tuning step ({len(rows)} examples, {width} tokens, {threads} threads, mean of {steps}): "
        f"{result[True]['step']:.2f} s with fused AdamW (optimizer {result[True]['optimizer']:.2f} s) vs "
        f"{result[False]['step']:.2f} s with foreach AdamW (optimizer {result[False]['optimizer']:.2f} s) "
        f"-> {result[False]['step'] / result[True]['step']:.2f}x per step"
    )
