"""Figure 10: the same fine-tuning steps of the default three ways, each in a process of its own
(bench/children/finetune_steps.py): the workflow's (the language-model head only at the positions
the loss reads, no NaN filling of new tensors), the workflow's before (the Trainer's own loss, NaN
filling) and a plain Hugging Face Trainer, and then two of the workflow's side by side with one
thread each (as two fine-tunes run on 2 cores); seconds a step and the FLOP rate of 6 x parameters
x tokens against a timed matmul of the model's shape, with the difference between the first two
runs' loss curves and final weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from bench.common import child_command, last_json_line, matmul_rate, repo_env
from spectral_edit.data import read_split
from spectral_edit.models import load_tokenizer


def finetuning_step_rates(paths: dict, config: dict, scratch: Path, steps: int = 12) -> None:
    from safetensors.torch import load_file

    from spectral_edit.data.prompts import training_features

    keys = paths["keys"]
    dataset = config["datasets"][keys["dataset"]]
    spec = {k: dataset[k] for k in ("prompt", "label_words", "max_text_tokens") if k in dataset}
    hyper = {**config["finetune"], "steps": steps}
    threads = torch.get_num_threads()
    train = paths["data"] / "train.jsonl"

    def launch(mode: str, threads: int, name: str) -> subprocess.Popen:
        return subprocess.Popen(
            child_command("finetune_steps.py", mode, str(paths["base"]), str(train), json.dumps(spec), json.dumps(hyper),
                          str(threads), str(scratch / f"finetune-{name}")),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=repo_env(),
        )  # fmt: skip

    def result(process: subprocess.Popen) -> dict:
        out, _ = process.communicate()
        if process.returncode:
            sys.exit(f"bench: a fine-tuning child failed (exit {process.returncode})")
        return last_json_line(out)

    runs = {mode: result(launch(mode, threads, mode)) for mode in ("before", "answer_only", "plain")}
    # Two fine-tunes side by side, one thread each, as the workflow runs two on 2 cores.
    pair = [launch("answer_only", 1, f"pair-{i}") for i in range(2)]
    runs["pair"] = [result(process) for process in pair][0]
    # Tokens a step computes: the mean example length times the batch (padding left out).
    features, _ = training_features(load_tokenizer(paths["base"]), spec, read_split(train), int(hyper["max_length"]))
    tokens = np.mean([len(f["input_ids"]) for f in features]) * int(hyper["batch_size"])
    model_config = json.loads((paths["base"] / "config.json").read_text())
    parameters = sum(t.numel() for t in load_file(paths["base"] / "model.safetensors").values())
    peak = matmul_rate(int(tokens), model_config["hidden_size"], model_config["intermediate_size"], threads)
    seconds = {mode: float(np.median(run["steps"][1:])) for mode, run in runs.items()}  # the first allocates the optimizer
    rate = {mode: 6 * parameters * tokens / s for mode, s in seconds.items()}
    loss_difference = max(abs(a - b) for a, b in zip(runs["answer_only"]["loss"], runs["before"]["loss"]))
    new, old = load_file(runs["answer_only"]["weights"]), load_file(runs["before"]["weights"])
    weight_difference = max(float((new[k] - old[k]).abs().max()) for k in new)
    described = {
        "answer_only": "head only where the loss reads it (the workflow)",
        "before": "the Trainer's own loss and NaN-filled new tensors (the workflow before)",
        "plain": "a plain Hugging Face Trainer (foreach AdamW)",
        "pair": "head only where the loss reads it, one thread, beside another such fine-tune",
    }
    print(
        f"[10] fine-tuning steps of the default ({hyper['batch_size']} examples, {tokens:.0f} tokens, {threads} threads, "
        f"median of {steps - 1}; 6 x {parameters / 1e6:.1f} M parameters x tokens per step against a timed "
        f"{int(tokens)}x{model_config['hidden_size']} @ {model_config['hidden_size']}x{model_config['intermediate_size']} "
        f"matmul at {peak / 1e9:.0f} GFLOP/s):"
    )
    for mode in ("answer_only", "before", "plain", "pair"):
        print(
            f"    {described[mode]}: {seconds[mode]:.2f} s a step, {1 / seconds[mode]:.2f} steps/s, "
            f"{rate[mode] / 1e9:.0f} GFLOP/s ({100 * rate[mode] / peak:.0f} % of the matmul)"
        )
    print(
        f"    -> {seconds['before'] / seconds['answer_only']:.2f}x the steps per second of before "
        f"({2 * seconds['before'] / seconds['pair']:.2f}x with two fine-tunes side by side, one thread each), "
        f"{seconds['plain'] / seconds['answer_only']:.2f}x the plain Trainer's; loss curves within {loss_difference:.1e}, "
        f"weights within {weight_difference:.1e}"
    )
