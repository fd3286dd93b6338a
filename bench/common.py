"""What the bench figures share: the repository and the main job's results they read, where a
figure ran, child processes (bench/children/) and the timed matmul the FLOP rates compare with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from spectral_edit import layout

REPO = Path(__file__).resolve().parents[1]
CHILDREN = REPO / "bench" / "children"


def where(device: torch.device, dtype: torch.dtype, threads: int) -> str:
    """Where a figure ran: the GPU's name, or the CPU threads; and the dtype."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} threads"
    return f"{name}, {str(dtype).replace('torch.', '')}"


def results_paths(workdir: Path, config: dict, dataset: str | None = None) -> dict:
    """The main job's base model, fine-tuned checkpoint, SVD cache and data of the grid's first
    cell (or ``dataset``'s), with the cell's keys; exits if the main job has not written them."""
    grid = config["grid"]
    keys = {"model": grid["models"][0], "dataset": dataset or grid["datasets"][0], "seed": grid["seeds"][0], "finetune": "full"}
    paths = {
        "base": workdir / layout.BASE_MODEL_DIR.format(**keys),
        "finetuned": workdir / layout.FINETUNE_DIR.format(**keys),
        "svd": workdir / layout.SVD_DIR.format(**keys),
        "data": workdir / layout.DATA_DIR.format(**keys),
    }
    needed = [
        paths["base"] / "model.safetensors",
        paths["finetuned"] / "model.safetensors",
        paths["svd"] / "factors.safetensors",
        paths["data"] / "eval.jsonl",
    ]
    for path in needed:
        if not path.is_file():
            sys.exit(f"bench: {path} is missing: run the main job (snakemake --cores 2) first")
    return {**paths, "keys": keys}


def repo_env(**extra: str) -> dict:
    """The environment of a child process: this one's, with the repository importable."""
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def child_command(name: str, *arguments: str) -> list[str]:
    """The command line running bench/children/``name`` with ``arguments``."""
    return [sys.executable, str(CHILDREN / name), *arguments]


def last_json_line(stdout: str) -> dict:
    """A child's result: the JSON object on the last line it printed."""
    return json.loads(stdout.strip().splitlines()[-1])


def run_child(name: str, *arguments: str, env: dict) -> dict:
    """Runs bench/children/``name`` to the end (failing if it fails) and returns its result."""
    out = subprocess.run(child_command(name, *arguments), capture_output=True, text=True, check=True, env=env)
    return last_json_line(out.stdout)


def launch_measured(command: list[str], out: Path, env: dict) -> dict:
    """Runs ``command`` (its stdout into ``out``) under bench/children/measure_process.py: its
    wall time and peak resident memory, measured from a small process rather than from the bench,
    whose resident size a forked child's ru_maxrss would start from."""
    result = subprocess.run(child_command("measure_process.py", str(out), *command), capture_output=True, text=True, env=env)
    measured = last_json_line(result.stdout)
    if measured["rc"] != 0:
        sys.exit(f"bench: {command[0]} failed:\n{measured['stderr']}")
    return measured


def matmul_rate(m: int, k: int, n: int, threads: int, repeats: int = 20) -> float:
    """FLOP/s of a timed (m x k) @ (k x n) float32 matmul on ``threads`` threads (best of runs)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * m * k * n / best
