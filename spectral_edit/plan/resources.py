"""Cluster resources of each rule, from the model's size and the fine-tuning length.

Rules take these as Snakemake ``resources`` (the SLURM executor turns them into sbatch flags:
``gpu`` -> --gpus, ``mem_mb`` -> --mem, ``runtime`` -> -t minutes, ``cpus_per_task``); a
profile's ``set-resources`` overrides any of them per rule. The sizes are rules of thumb, stated
here so that a user can see why a job asks for what it asks:
  * weights in fp32 take 4 bytes per parameter; full SFT with AdamW keeps weights, gradients
    and two moments in fp32: 16 bytes per parameter, plus activations (x 1.25);
  * a job needs a GPU only when the runtime device is not the CPU;
  * full SFT that does not fit one GPU is sharded (FSDP) over the next power of two GPUs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# Parameters (billions) of the sources whose size is known without reading a file.
KNOWN_SIZES_B = {"random": 0.01, "gguf_package": 0.135}
DEFAULT_SIZE_B = 1.0


def model_size_b(spec: Mapping) -> float:
    """Billions of parameters: the model's ``parameters_b`` or a default by source."""
    if "parameters_b" in spec:
        return float(spec["parameters_b"])
    return KNOWN_SIZES_B.get(spec.get("source"), DEFAULT_SIZE_B)


def wants_gpu(config: Mapping) -> bool:
    return config["runtime"]["device"] != "cpu"


def finetune_gpus(size_b: float, recipe: Mapping, gpu_memory_gb: float) -> int:
    """GPUs for one fine-tune: 1 unless full SFT's optimizer state outgrows one GPU."""
    if recipe["kind"] != "full":
        return 1  # LoRA / SpecLoRA: frozen weights in bf16 plus small adapters
    need_gb = 16 * size_b * 1.25
    gpus = max(1, math.ceil(need_gb / gpu_memory_gb))
    return 1 << (gpus - 1).bit_length()  # next power of two


def _training_minutes(size_b: float, hyper: Mapping, gpus: int) -> int:
    # 6 * params * tokens FLOPs at a conservative 100 TFLOP/s per GPU, x 3 for safety.
    tokens = int(hyper["steps"]) * int(hyper["batch_size"]) * int(hyper["gradient_accumulation_steps"]) * int(hyper["max_length"])
    seconds = 6 * size_b * 1e9 * tokens / (gpus * 1e14) * 3
    return int(30 + math.ceil(seconds / 60))


def rule_resources(rule: str, spec: Mapping, config: Mapping, recipe: Mapping | None = None) -> dict:
    """{gpu, mem_mb, runtime, cpus_per_task} for one job of ``rule`` on the model ``spec``."""
    size = model_size_b(spec)
    gpu_memory_gb = float(config["cluster"]["gpu_memory_gb"])
    fp32_gb = 4 * size
    gpu = wants_gpu(config)
    if rule == "finetune":
        recipe = recipe or {"kind": "full"}
        gpus = finetune_gpus(size, recipe, gpu_memory_gb) if gpu else 0
        return {
            "gpu": gpus,
            "mem_mb": int(1024 * (8 + 3 * fp32_gb)),
            "runtime": _training_minutes(size, recipe.get("hyper") or config["finetune"], max(gpus, 1)),
            "cpus_per_task": 4 * max(gpus, 1),
        }
    if rule == "svd_cache":
        # Streaming: a batch of matrices at a time, so memory grows slowly with the model.
        return {"gpu": int(gpu), "mem_mb": int(1024 * (8 + 0.5 * fp32_gb)), "runtime": int(30 + 20 * size), "cpus_per_task": 4}
    if rule == "sensitivities":
        return {"gpu": int(gpu), "mem_mb": int(1024 * (8 + 2 * fp32_gb)), "runtime": int(30 + 10 * size), "cpus_per_task": 4}
    if rule == "evaluate":
        return {"gpu": int(gpu), "mem_mb": int(1024 * (4 + 1.5 * fp32_gb)), "runtime": int(5 + 2 * size), "cpus_per_task": 2}
    if rule == "base_model":
        return {"gpu": 0, "mem_mb": int(1024 * (4 + 2 * fp32_gb)), "runtime": 60, "cpus_per_task": 2}
    # Data preparation, diagnostics, tables and figures: small CPU jobs.
    return {"gpu": 0, "mem_mb": 4096, "runtime": 30, "cpus_per_task": 1}
