"""Figure 3: peak memory of the SVD stage (a child process, bench/children/svd_peak_memory.py: its
anonymous resident memory, sampled) against the size of one model's weights, net of the memory of
a child that only imports the same modules."""

from __future__ import annotations

from pathlib import Path

from bench.common import repo_env, run_child


def svd_stage_peak_memory(paths: dict, config: dict, scratch: Path) -> None:
    def child(run: bool) -> float:
        return run_child(
            "svd_peak_memory.py",
            str(paths["base"] / "model.safetensors"),
            str(paths["finetuned"] / "model.safetensors"),
            str(scratch / "svd-memory"),
            "1" if config["svd"]["include_embeddings"] else "0",
            "1" if run else "0",
            env=repo_env(),
        )["peak_anon_mb"]

    imports_only, svd_stage = child(False), child(True)
    model_mb = (paths["finetuned"] / "model.safetensors").stat().st_size / 2**20
    factors_mb = (scratch / "svd-memory" / "factors.safetensors").stat().st_size / 2**20
    net = svd_stage - imports_only
    print(
        f"[3] SVD stage peak anonymous memory {svd_stage:.0f} MB, {net:.0f} MB above the imports ({imports_only:.0f} MB); "
        f"one model's weights {model_mb:.0f} MB, all factors {factors_mb:.0f} MB "
        f"-> peak / model size {net / model_mb:.2f} (holding both models and the factors: "
        f"{(2 * model_mb + factors_mb) / model_mb:.2f})"
    )
