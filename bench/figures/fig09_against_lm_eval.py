"""Figure 9: the workflow's evaluation of the fine-tuned model (bench/children/workflow_evaluation.py)
against lm-evaluation-harness on the same prompts (a task over the same split, the chat template
applied, the same batch size and threads), each a whole process (wall time and peak resident
memory), with identical predictions and the largest log-probability difference; and the FLOP
rate the workflow's scoring achieves on the tokens it computes against a timed torch.matmul of a
layer's size. lm-eval is a dependency of the workflow (setup.sh installs it)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from bench.common import REPO, child_command, launch_measured, matmul_rate
from spectral_edit.data import read_split
from spectral_edit.runtime import resolve as resolve_runtime


def _lm_eval_scores(output_dir: Path, n: int) -> np.ndarray:
    """Per document, the log-likelihood of each choice, from lm-eval's --log_samples file."""
    samples = sorted(output_dir.rglob("samples_*.jsonl"))
    rows = {}
    for line in samples[-1].read_text().splitlines():
        sample = json.loads(line)
        rows[int(sample["doc_id"])] = [float(choice[0]) for choice in sample["filtered_resps"]]
    return np.array([rows[i] for i in range(n)])


def against_lm_evaluation_harness(paths: dict, config: dict, n_examples: int, scratch: Path, runtime: dict) -> None:
    lm_eval = Path(sys.executable).with_name("lm_eval")
    if not lm_eval.exists():
        print("[9] lm-evaluation-harness is not installed (bash setup.sh installs it): comparison skipped")
        return
    from spectral_edit.benchmarks.lm_eval_task import write_task

    keys = paths["keys"]
    spec = config["datasets"][keys["dataset"]]
    batch_size, threads = config["evaluation"]["batch_size"], torch.get_num_threads()
    device, dtype = resolve_runtime(runtime)
    dtype_name = str(dtype).replace("torch.", "")
    n = min(n_examples, len(read_split(paths["data"] / "eval.jsonl")))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    command = child_command(
        "workflow_evaluation.py",
        str(paths["finetuned"]),
        str(paths["data"]),
        json.dumps(spec),
        device.type,
        dtype_name,
        str(n),
        str(batch_size),
        str(threads),
    )
    ours = launch_measured(command + ["0"], scratch / "ours.json", env)
    result = json.loads((scratch / "ours.json").read_text())
    launch_measured(command + ["1"], scratch / "profiled.json", env)
    result.update({k: v for k, v in json.loads((scratch / "profiled.json").read_text()).items() if k in ("profiled_s", "mm_s")})
    task = write_task(paths["data"], scratch / "tasks", spec.get("eval_prompt", spec["prompt"]))
    theirs = launch_measured(
        [
            str(lm_eval),
            "--model",
            "hf",
            "--model_args",
            f"pretrained={paths['finetuned']},dtype={dtype_name}",
            "--include_path",
            str(task.parent),
            "--tasks",
            task.stem,
            "--apply_chat_template",
            "--batch_size",
            str(batch_size),
            "--limit",
            str(n),
            "--device",
            device.type,
            "--log_samples",
            "--output_path",
            str(scratch / "lm-eval"),
        ],
        scratch / "lm-eval.log",
        env,
    )
    reference = _lm_eval_scores(scratch / "lm-eval", n)
    scores = np.array(result["scores"])
    same = int((scores.argmax(1) == reference.argmax(1)).sum())
    # lm-eval moves the context's trailing whitespace (the newline after the assistant header)
    # into each choice, so its log-likelihoods carry log p(newline) for every choice alike; the
    # difference between label words (what decides the prediction) is comparable.
    margin = (scores - scores[:, :1]) - (reference - reference[:, :1])
    offset = np.abs(scores - reference).max()
    difference = (
        f"{np.abs(margin).max():.1e} between label words (each score {offset:.1e}, lm-eval adding the assistant header's newline)"
        if result["single_token_labels"]
        else "n/a (lm-eval scores whole label words, the workflow their first token)"
    )
    print(
        f"[9] {n} prompts, batch {batch_size}, {threads} threads, whole process: workflow {ours['wall_s']:.1f} s and "
        f"{ours['peak_mb'] / 1024:.2f} GB vs lm-evaluation-harness {theirs['wall_s']:.1f} s and "
        f"{theirs['peak_mb'] / 1024:.2f} GB "
        f"-> {theirs['wall_s'] / ours['wall_s']:.2f}x faster, {theirs['peak_mb'] / ours['peak_mb']:.2f}x less memory; "
        f"identical predictions {same}/{n}, max |log p difference| {difference}"
    )
    # FLOP rate of the scoring on the tokens it computes: 2 FLOPs per weight of the decoder's
    # matrices per token (attention scores are < 1 % at these lengths), plus the LM head once
    # per prompt, against a matmul of one MLP projection over one batch's tokens.
    model_config = json.loads((paths["finetuned"] / "config.json").read_text())
    from safetensors import safe_open

    from spectral_edit.edit.svd import is_embedding

    with safe_open(str(paths["finetuned"] / "model.safetensors"), framework="pt") as handle:
        shapes = {k: handle.get_slice(k).get_shape() for k in handle.keys()}
    decoder_weights = sum(a * b for k, (a, *rest) in shapes.items() if rest and not is_embedding(k) for b in rest)
    hidden, vocab = model_config["hidden_size"], model_config["vocab_size"]
    flops = 2 * decoder_weights * result["computed_tokens"] + 2 * hidden * vocab * n
    achieved = flops / result["scoring_s"]
    rows = max(1, round(batch_size * (result["computed_tokens"] - result["head_tokens"]) / n))
    peak = matmul_rate(rows, hidden, model_config["intermediate_size"], threads)
    in_mm = flops / result["mm_s"]
    print(
        f"    scoring {result['scoring_s']:.1f} s of it: {result['computed_tokens']} tokens computed for "
        f"{result['prompt_tokens']} prompt tokens (shared head of {result['head_tokens']} run once, padding included) "
        f"-> {achieved / 1e9:.1f} GFLOP/s against {peak / 1e9:.1f} GFLOP/s of a timed {rows}x{hidden} @ "
        f"{hidden}x{model_config['intermediate_size']} matmul ({100 * achieved / peak:.0f} %); profiled, the matrix "
        f"products take {100 * result['mm_s'] / result['profiled_s']:.0f} % of the scoring time at "
        f"{in_mm / 1e9:.1f} GFLOP/s ({100 * in_mm / peak:.0f} %), the rest is norms, rotary embedding, SiLU and attention"
    )
