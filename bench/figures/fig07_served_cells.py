"""Figure 7: an edited cell served by its checkpoint's evaluation server (a client process,
bench/children/cell_served.py, as a cell job runs it; the server already up) against the
evaluation pass alone on the same edited model, and against a cell in its own process
(bench/children/cell_own_process.py: imports, model load, edit, evaluation, as before the server),
over the same cells, with identical per-example scores; then every edited cell of the checkpoint
run by ``snakemake --cores 2`` itself, served against each cell in its own process, beside the
evaluation passes alone (``--dataset`` picks the checkpoint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import REPO, repo_env, run_child, where
from spectral_edit import layout
from spectral_edit.data import read_meta, read_split
from spectral_edit.data.prompts import formatter_for
from spectral_edit.runtime import resolve as resolve_runtime


def served_cells(paths: dict, config: dict, configfiles: list[Path], scratch: Path, runtime: dict) -> None:
    """Both parts of figure 7, one after the other."""
    served_cells_vs_evaluation_pass(paths, config, scratch, runtime)
    checkpoint_cells_through_snakemake(paths, config, configfiles, scratch, runtime)


def served_cells_vs_evaluation_pass(
    paths: dict, config: dict, scratch: Path, runtime: dict, methods=("top_k", "bottom_k", "uniform_shrink")
) -> None:
    from spectral_edit.evaluate.cells import CellEvaluator

    keys = paths["keys"]
    spec = config["datasets"][keys["dataset"]]
    threads = torch.get_num_threads()
    retention = config["grid"]["retentions"][0]
    env = repo_env(TMPDIR=tempfile.mkdtemp(prefix="se-bench-", dir="/tmp"))

    def request(method: str) -> dict:
        return {
            "eval_path": str(paths["data"] / "eval.jsonl"),
            "meta_path": str(paths["data"] / "meta.json"),
            "dataset_spec": spec,
            "batch_size": config["evaluation"]["batch_size"],
            "cell": {"method": method},
            "edit": {
                "factors": str(paths["svd"] / "factors.safetensors"),
                "finetuned_weights": str(paths["finetuned"] / "model.safetensors"),
                "method": method,
                "params": {},
                "retention": retention,
                "seed": keys["seed"],
                "unedited_params": config["edit"]["unedited_params"],
            },
        }

    def child(name: str, argument: dict) -> dict:
        return run_child(name, json.dumps(argument), str(threads), env=env)

    served_arguments = {
        "model_dir": str(paths["base"]),
        "checkpoint_files": [str(paths["finetuned"] / "model.safetensors")],
        "runtime": runtime,
        "threads": threads,
        "server_log": str(scratch / "server.log"),
        "idle_seconds": 600,
    }
    child("cell_served.py", {**served_arguments, "request": request("top_k")})  # starts the server: not timed
    served = {m: child("cell_served.py", {**served_arguments, "request": request(m)}) for m in methods}
    own = {
        m: child(
            "cell_own_process.py",
            {**request(m), "model_dir": str(paths["base"]), "runtime": runtime, "out_path": str(scratch / f"own-{m}.json")},
        )
        for m in methods
    }
    evaluator = CellEvaluator(paths["base"], runtime)
    passes = {}
    for method in methods:
        evaluator.run(**request(method), progress=False)  # the edit, then time the evaluation pass alone
        frame = read_split(paths["data"] / "eval.jsonl")
        formatter = formatter_for(evaluator.tokenizer, spec)
        started = time.perf_counter()
        from spectral_edit.evaluate.scoring import evaluate_model

        evaluate_model(
            evaluator.model, formatter, frame, read_meta(paths["data"] / "meta.json"), config["evaluation"]["batch_size"], False
        )
        passes[method] = time.perf_counter() - started
    subprocess.run(["pkill", "-f", f"spectral_edit.evaluate.server.*{env['TMPDIR']}"], check=False)
    t_served, t_own, t_pass = (
        sum(x[m]["seconds"] if isinstance(x[m], dict) else x[m] for m in methods) / len(methods) for x in (served, own, passes)
    )
    same = all(served[m]["examples"] == own[m]["examples"] for m in methods)
    print(
        f"[7] edited cell ({', '.join(methods)} at retention {retention}, {where(*resolve_runtime(runtime), threads)}, mean): "
        f"{t_served:.1f} s served by the checkpoint's server vs {t_pass:.1f} s for the evaluation pass alone "
        f"-> {t_served / t_pass:.2f}x; {t_own:.1f} s as its own process (before) -> {t_own / t_served:.2f}x faster; "
        f"identical per-example scores: {same}"
    )


def checkpoint_cells_through_snakemake(paths: dict, config: dict, configfiles: list[Path], scratch: Path, runtime: dict) -> None:
    """Figure 7, second part: every edited cell of one checkpoint run by Snakemake itself
    (--cores 2, as the README's command runs them), served by the checkpoint's server against
    each cell in its own process (evaluation.server.enabled false), beside the evaluation passes
    alone. Each run has a scratch directory whose results/ links the existing base model, data,
    fine-tune and SVD cache, so only the cells run and the repo's results are not touched."""
    from spectral_edit.evaluate.cells import CellEvaluator
    from spectral_edit.evaluate.scoring import evaluate_model

    keys, grid = paths["keys"], config["grid"]
    cells = [{"method": m, "retention": layout.format_retention(r)} for m in grid["methods"] for r in grid["retentions"]]
    targets = [layout.CELL.format(**keys, **cell) for cell in cells]
    own_process = scratch / "own-process.yaml"
    own_process.write_text("evaluation:\n  server:\n    enabled: false\n")
    runtime_overlay = scratch / "runtime.yaml"
    runtime_overlay.write_text(json.dumps({"runtime": runtime}))  # JSON is YAML
    seconds = {}
    for arrangement, overlay in (("served", []), ("own process", [own_process])):
        workdir = scratch / arrangement.replace(" ", "-")
        for part in ("models", "data", "finetune", "svd"):
            (workdir / layout.RESULTS).mkdir(parents=True, exist_ok=True)
            (workdir / layout.RESULTS / part).symlink_to(paths["base"].parents[1] / part)
        command = [
            str(Path(sys.executable).with_name("snakemake")), "-s", str(REPO / "Snakefile"), "-d", str(workdir),
            "--cores", "2", "--allowed-rules", "evaluate_edit", "--configfile",
            *map(str, [*configfiles, runtime_overlay, *overlay]),
            "--", *targets,
        ]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, "TMPDIR": str(scratch)})
        seconds[arrangement] = time.perf_counter() - started

    def examples(arrangement: str, target: str) -> list:
        return json.loads((scratch / arrangement / target).read_text())["examples"]

    same = all(examples("served", t) == examples("own-process", t) for t in targets)
    spec = config["datasets"][keys["dataset"]]
    evaluator = CellEvaluator(paths["base"], runtime)
    frame, meta = read_split(paths["data"] / "eval.jsonl"), read_meta(paths["data"] / "meta.json")
    passes = 0.0
    for cell in cells:
        edit = {
            "factors": str(paths["svd"] / "factors.safetensors"),
            "finetuned_weights": str(paths["finetuned"] / "model.safetensors"),
            "method": cell["method"],
            "params": {},
            "retention": float(cell["retention"]),
            "seed": keys["seed"],
            "unedited_params": config["edit"]["unedited_params"],
        }
        evaluator.run(
            eval_path=str(paths["data"] / "eval.jsonl"), meta_path=str(paths["data"] / "meta.json"), dataset_spec=spec,
            batch_size=config["evaluation"]["batch_size"], cell=dict(cell), edit=edit, progress=False,
        )  # fmt: skip
        formatter = formatter_for(evaluator.tokenizer, spec)
        started = time.perf_counter()
        evaluate_model(evaluator.model, formatter, frame, meta, config["evaluation"]["batch_size"], False)
        passes += time.perf_counter() - started
    print(
        f"[7] all {len(cells)} edited cells of {keys['dataset']} ({len(frame)} examples each) through snakemake --cores 2: "
        f"{seconds['served']:.0f} s served vs {seconds['own process']:.0f} s each in its own process "
        f"({seconds['own process'] / seconds['served']:.2f}x); the {len(cells)} evaluation passes alone {passes:.0f} s "
        f"({where(*resolve_runtime(runtime), torch.get_num_threads())}) -> "
        f"served at {seconds['served'] / passes:.2f}x the passes; "
        f"identical per-example scores: {same}"
    )
