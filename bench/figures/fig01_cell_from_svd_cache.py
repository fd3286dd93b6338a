"""Figure 1: one edit-and-evaluate cell from the cached SVD against the same cell when the SVD of
every dW has to be computed for it (ratio of wall times; the cell metrics must be identical)."""

from __future__ import annotations

import time
from pathlib import Path

from spectral_edit.edit.svd import compute_svd_cache
from spectral_edit.evaluate.cells import evaluate_cell


def cell_from_cache_vs_recomputed_svd(paths: dict, config: dict, retention: float, scratch: Path) -> None:
    keys = paths["keys"]
    spec = config["datasets"][keys["dataset"]]

    def cell(factors: Path, out: Path) -> dict:
        return evaluate_cell(
            model_dir=paths["base"],
            eval_path=paths["data"] / "eval.jsonl",
            meta_path=paths["data"] / "meta.json",
            dataset_spec=spec,
            out_path=out,
            cell={**keys, "method": "top_k", "retention": retention},
            edit={
                "factors": str(factors),
                "finetuned_weights": str(paths["finetuned"] / "model.safetensors"),
                "method": "top_k",
                "params": {},
                "retention": retention,
                "seed": keys["seed"],
                "unedited_params": config["edit"]["unedited_params"],
            },
            batch_size=config["evaluation"]["batch_size"],
            progress=False,
            runtime=config["runtime"],
        )

    started = time.perf_counter()
    cached = cell(paths["svd"] / "factors.safetensors", scratch / "cached.json")
    t_cached = time.perf_counter() - started

    started = time.perf_counter()
    compute_svd_cache(
        paths["base"] / "model.safetensors",
        paths["finetuned"] / "model.safetensors",
        scratch / "svd",
        include_embeddings=config["svd"]["include_embeddings"],
        progress=False,
    )
    t_svd = time.perf_counter() - started
    started = time.perf_counter()
    recomputed = cell(scratch / "svd" / "factors.safetensors", scratch / "recomputed.json")
    t_after_svd = time.perf_counter() - started
    same = cached["metrics"] == recomputed["metrics"]
    print(
        f"[1] top_k cell at retention {retention}: {t_cached:.1f} s from the SVD cache; "
        f"{t_svd + t_after_svd:.1f} s recomputing the SVD for it ({t_svd:.1f} s SVD + {t_after_svd:.1f} s cell) "
        f"-> cache speed-up {(t_svd + t_after_svd) / t_cached:.1f}x; identical metrics: {same}"
    )
