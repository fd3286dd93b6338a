"""Benchmarks of the workflow's costs, printed as figures (nothing here asserts a time).

Run after the main job (``snakemake --cores 2``) so the embedded default's base model,
fine-tuned checkpoint, SVD cache and evaluation split exist under ``results/``:

    .venv/bin/python bench/run.py

It prints these figures, each measured side by side in this one run:

1. one edit-and-evaluate cell from the cached SVD against the same cell when the SVD of every
   dW has to be computed for it (ratio of wall times; the cell metrics must be identical);
2. evaluation throughput of ``spectral_edit.evaluate.scoring`` (left-padded batches, LM head at the
   answer position only) against a straightforward ``transformers`` loop over the same prompts
   (one full forward pass per prompt), with the number of identical predictions;
3. peak memory of the SVD stage (a child process: its anonymous resident memory, sampled) against
   the size of one model's weights, net of the memory of a child that only imports the same
   modules;
4. wall time of ``snakemake -n --configfile config/paper.yaml`` (planning the paper's grid);
5. evaluation with the prompts' shared head run once against every prompt run whole (the same
   batches; identical predictions, largest log-probability difference);
6. one fine-tuning step (forward, backward, clipping, AdamW) with the fused AdamW the workflow
   uses against the foreach AdamW that the Trainer uses by default;
7. an edited cell served by its checkpoint's evaluation server (a client process, as a cell job
   runs it; the server already up) against the evaluation pass alone on the same edited model,
   and against a cell in its own process (imports, model load, edit, evaluation: before the
   server), over the same cells; identical per-example scores; then every edited cell of the
   checkpoint run by ``snakemake --cores 2`` itself, served against each cell in its own
   process, beside the evaluation passes alone (``--dataset`` picks the checkpoint);
8. the SVD cache of the checkpoint against the full U, S, V^T it replaced (computed from the
   shapes), and the same for the 7B-shaped models of the paper grid;
9. the workflow's evaluation of the fine-tuned model against lm-evaluation-harness on the same
   prompts (a task over the same split, the chat template applied, the same batch size and
   threads), each a whole process (wall time and peak resident memory), with identical
   predictions and the largest log-probability difference; and the FLOP rate the workflow's
   scoring achieves on the tokens it computes against a timed torch.matmul of a layer's size.
   lm-eval is a dependency of the workflow (setup.sh installs it).
10. the same fine-tuning steps of the default three ways, each in a process of its own: the
   workflow's (the language-model head only at the positions the loss reads, no NaN filling of
   new tensors), the workflow's before (the Trainer's own loss, NaN filling) and a plain Hugging
   Face Trainer, and then two of the workflow's side by side with one thread each (as two
   fine-tunes run on 2 cores); seconds a step and the FLOP rate of 6 x parameters x tokens
   against a timed matmul of the model's shape, with the difference between the first two
   runs' loss curves and final weights.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from spectral_edit import layout  # noqa: E402
from spectral_edit.data import read_meta, read_split  # noqa: E402
from spectral_edit.data.prompts import examples_of, formatter_for  # noqa: E402
from spectral_edit.edit.svd_cache import compute_svd_cache, read_spectrum  # noqa: E402
from spectral_edit.evaluate.cells import evaluate_cell  # noqa: E402
from spectral_edit.evaluate.scoring import label_log_probs, shared_prefix_length  # noqa: E402
from spectral_edit.models import load_model, load_tokenizer  # noqa: E402
from spectral_edit.plan.config import load_config  # noqa: E402
from spectral_edit.runtime import resolve as resolve_runtime  # noqa: E402

# Child process of figure 3: runs the SVD stage (or only the imports) and reports its peak memory.
# The child samples its anonymous resident memory (RssAnon: tensors and buffers it allocated)
# every 5 ms; VmHWM would also count the pages of the memory-mapped safetensors files it reads,
# which are page cache the kernel can drop, and getrusage's ru_maxrss would carry over the
# resident size of this (large) process that the child is forked from.
_SVD_CHILD = """
import json, re, sys, threading, time
def anon_mb():
    return int(re.search(r"RssAnon:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
peak = [anon_mb()]
def sample():
    while True:
        peak[0] = max(peak[0], anon_mb())
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
from spectral_edit.edit.svd_cache import compute_svd_cache
base, finetuned, out, include_embeddings, run = sys.argv[1:6]
if run == "1":
    compute_svd_cache(base, finetuned, out, include_embeddings=include_embeddings == "1", progress=False)
time.sleep(0.05)
print(json.dumps({"peak_anon_mb": max(peak[0], anon_mb())}))
"""


def _where(device: torch.device, dtype: torch.dtype, threads: int) -> str:
    """Where a figure ran: the GPU's name, or the CPU threads; and the dtype."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {threads} threads"
    return f"{name}, {str(dtype).replace('torch.', '')}"


def _paths(workdir: Path, config: dict, dataset: str | None = None) -> dict:
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


def evaluation_throughput(paths: dict, config: dict, n_examples: int, runtime: dict) -> None:
    keys = paths["keys"]
    spec = config["datasets"][keys["dataset"]]
    device, dtype = resolve_runtime(runtime)
    model = load_model(paths["finetuned"]).to(device, dtype)
    formatter = formatter_for(load_tokenizer(paths["finetuned"]), spec)
    frame = read_split(paths["data"] / "eval.jsonl").head(n_examples)
    examples = examples_of(frame, read_meta(paths["data"] / "meta.json").get("text_fields", ["text"]))
    threads = torch.get_num_threads()

    started = time.perf_counter()
    ours = label_log_probs(model, formatter, examples, config["evaluation"]["batch_size"], progress=False)
    t_ours = time.perf_counter() - started

    # The straightforward way: the model's own forward pass on each prompt, full logits.
    label_ids = formatter.label_token_ids
    plain = np.zeros_like(ours)
    started = time.perf_counter()
    with torch.no_grad():
        for i, example in enumerate(examples):
            logits = model(input_ids=torch.tensor([formatter.prompt_ids(example)], device=device)).logits[0, -1]
            plain[i] = torch.log_softmax(logits.float(), -1)[label_ids].double().cpu().numpy()
    t_plain = time.perf_counter() - started
    same = int((ours.argmax(1) == plain.argmax(1)).sum())
    print(
        f"[2] evaluation of {len(examples)} prompts ({_where(device, dtype, threads)}): "
        f"{len(examples) / t_ours:.2f} examples/s batched "
        f"(batch {config['evaluation']['batch_size']}) vs {len(examples) / t_plain:.2f} examples/s plain transformers "
        f"-> {t_plain / t_ours:.2f}x; identical predictions {same}/{len(examples)}, "
        f"max |log p difference| {np.abs(ours - plain).max():.1e}"
    )


def svd_stage_peak_memory(paths: dict, config: dict, scratch: Path) -> None:
    def child(run: bool) -> float:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _SVD_CHILD,
                str(paths["base"] / "model.safetensors"),
                str(paths["finetuned"] / "model.safetensors"),
                str(scratch / "svd-memory"),
                "1" if config["svd"]["include_embeddings"] else "0",
                "1" if run else "0",
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_anon_mb"]

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


def paper_grid_dry_run() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        result = subprocess.run(
            [
                str(Path(sys.executable).with_name("snakemake")),
                "-s",
                str(REPO / "Snakefile"),
                "-d",
                workdir,
                "-n",
                "--configfile",
                str(REPO / "config" / "paper.yaml"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        )
        elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"bench: the paper grid dry run failed:\n{result.stderr[-2000:]}")
    total = next(line.split()[-1] for line in result.stdout.splitlines() if line.startswith("total"))
    print(f"[4] snakemake -n --configfile config/paper.yaml: {elapsed:.1f} s wall to plan {total} jobs")


def shared_prefix_vs_whole_prompts(paths: dict, config: dict, n_examples: int) -> None:
    keys = paths["keys"]
    spec = config["datasets"][keys["dataset"]]
    model = load_model(paths["finetuned"]).eval()
    formatter = formatter_for(load_tokenizer(paths["finetuned"]), spec)
    frame = read_split(paths["data"] / "eval.jsonl").head(n_examples)
    examples = examples_of(frame, read_meta(paths["data"] / "meta.json").get("text_fields", ["text"]))
    encoded = [formatter.prompt_ids(e) for e in examples]
    timings, scores = {}, {}
    for shared in (False, True):
        started = time.perf_counter()
        scores[shared] = label_log_probs(model, formatter, examples, config["evaluation"]["batch_size"], False, shared)
        timings[shared] = time.perf_counter() - started
    same = int((scores[True].argmax(1) == scores[False].argmax(1)).sum())
    print(
        f"[5] shared prompt head ({shared_prefix_length(encoded)} of {np.mean([len(e) for e in encoded]):.0f} tokens "
        f"on average) run once: {timings[True]:.1f} s vs {timings[False]:.1f} s with every prompt whole "
        f"-> {timings[False] / timings[True]:.2f}x; identical predictions {same}/{len(examples)}, "
        f"max |log p difference| {np.abs(scores[True] - scores[False]).max():.1e}"
    )


# Child process of figure 6: fine-tuning steps with one AdamW implementation, on its own so
# that neither variant inherits the other's freed memory.
_STEP_CHILD = """
import json, sys, time, torch
from spectral_edit.models import load_model
base, fused, steps, threads, batch_json = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
batch = {k: torch.tensor(v) for k, v in json.loads(batch_json).items()}
model = load_model(base).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=fused, foreach=not fused)
step_s = optimizer_s = 0.0
for step in range(steps + 1):  # the first step allocates the optimizer state: not timed
    started = time.perf_counter()
    model(**batch).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    middle = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad()
    if step:
        step_s += time.perf_counter() - started
        optimizer_s += time.perf_counter() - middle
print(json.dumps({"step": step_s / steps, "optimizer": optimizer_s / steps}))
"""


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
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                _STEP_CHILD,
                str(paths["base"]),
                "1" if fused else "0",
                str(steps),
                str(threads),
                json.dumps(batch),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        result[fused] = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"[6] fine-tuning step ({len(rows)} examples, {width} tokens, {threads} threads, mean of {steps}): "
        f"{result[True]['step']:.2f} s with fused AdamW (optimizer {result[True]['optimizer']:.2f} s) vs "
        f"{result[False]['step']:.2f} s with foreach AdamW (optimizer {result[False]['optimizer']:.2f} s) "
        f"-> {result[False]['step'] / result[True]['step']:.2f}x per step"
    )


_PER_PROCESS_CELL = """
import json, sys, time
started = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[2]))
from spectral_edit.evaluate.cells import evaluate_cell
request = json.loads(sys.argv[1])
record = evaluate_cell(out_path=request.pop("out_path"), progress=False, **request)
print(json.dumps({"seconds": time.perf_counter() - started, "examples": record["examples"]}))
"""

_SERVED_CELL = """
import json, sys, time
started = time.perf_counter()
from spectral_edit.evaluate.client import serve_cell
arguments = json.loads(sys.argv[1])
record = serve_cell(arguments.pop("request"), note=lambda *_: None, **arguments)
print(json.dumps({"seconds": time.perf_counter() - started, "examples": record["examples"],
                  "pid": record["server"]["pid"]}))
"""


def served_cells_vs_evaluation_pass(
    paths: dict, config: dict, scratch: Path, runtime: dict, methods=("top_k", "bottom_k", "uniform_shrink")
) -> None:
    from spectral_edit.evaluate.cells import CellEvaluator

    keys = paths["keys"]
    spec = config["datasets"][keys["dataset"]]
    threads = torch.get_num_threads()
    retention = config["grid"]["retentions"][0]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": tempfile.mkdtemp(prefix="se-bench-", dir="/tmp")}

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

    def child(code: str, argument: dict) -> dict:
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(argument), str(threads)], capture_output=True, text=True, check=True, env=env
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    served_arguments = {
        "model_dir": str(paths["base"]),
        "checkpoint_files": [str(paths["finetuned"] / "model.safetensors")],
        "runtime": runtime,
        "threads": threads,
        "server_log": str(scratch / "server.log"),
        "idle_seconds": 600,
    }
    child(_SERVED_CELL, {**served_arguments, "request": request("top_k")})  # starts the server: not timed
    served = {m: child(_SERVED_CELL, {**served_arguments, "request": request(m)}) for m in methods}
    own = {
        m: child(
            _PER_PROCESS_CELL,
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
        f"[7] edited cell ({', '.join(methods)} at retention {retention}, {_where(*resolve_runtime(runtime), threads)}, mean): "
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
        f"({_where(*resolve_runtime(runtime), torch.get_num_threads())}) -> "
        f"served at {seconds['served'] / passes:.2f}x the passes; "
        f"identical per-example scores: {same}"
    )


def cache_sizes(paths: dict) -> None:
    spectrum = read_spectrum(paths["svd"] / "spectrum.json")
    compact = (paths["svd"] / "factors.safetensors").stat().st_size
    full = sum(4 * m["rank"] * (m["shape"][0] + m["shape"][1] + 1) for m in spectrum["matrices"])

    def per_checkpoint(shapes: list[tuple[int, int]]) -> tuple[float, float]:
        return (sum(4 * min(s) * (min(s) + 1) for s in shapes), sum(4 * min(s) * (s[0] + s[1] + 1) for s in shapes))

    # Shapes from the models' config.json on the hub. Qwen2.5-7B-Instruct: hidden 3584, MLP 18944,
    # 28 layers, key-value width 512, vocabulary 152064, separate LM head; Qwen2.5-0.5B-Instruct:
    # 896, 4864, 24 layers, 128, 151936, tied; Gemma-3-1B-IT: 1152, 6912, 26 layers, query width
    # 1024, key-value width 256, 262144, tied.
    def decoder(h, f, q, kv, layers, vocab, heads):
        return [(q, h), (kv, h), (kv, h), (h, q), (f, h), (f, h), (h, f)] * layers + [(vocab, h)] * heads

    grid = {
        "Qwen2.5-7B": decoder(3584, 18944, 3584, 512, 28, 152064, 2),
        "Qwen2.5-0.5B": decoder(896, 4864, 896, 128, 24, 151936, 1),
        "Gemma-3-1B": decoder(1152, 6912, 1024, 256, 26, 262144, 1),
    }
    sizes = {name: per_checkpoint(shapes) for name, shapes in grid.items()}
    compact_7b, full_7b = sizes["Qwen2.5-7B"]
    # The paper grid: each model fine-tuned on 5 datasets x 3 seeds (15 checkpoints per model).
    grid_compact, grid_full = (15 * sum(size[i] for size in sizes.values()) for i in (0, 1))
    # What one 7B cell reads (fp32 files), from the shapes: before, a new process read the base
    # weights and the full factors; in the server the model is loaded once per checkpoint and a
    # cell reads the base and fine-tuned matrices (dW) and the compact factors.
    params_7b = sum(m * n for m, n in grid["Qwen2.5-7B"]) + 28 * 2 * 3584 + 3584  # + norms
    weights_7b = 4 * params_7b
    print(
        f"[8] a Qwen2.5-7B cell reads {(weights_7b + full_7b) / 1e9:.0f} GB before (base weights "
        f"{weights_7b / 1e9:.1f} GB + full factors, in a new process that also loads the model) and "
        f"{(2 * weights_7b + compact_7b) / 1e9:.0f} GB in the server (base and fine-tuned matrices + compact factors; "
        f"the model loaded once per checkpoint), or only the compact factors ({compact_7b / 1e9:.1f} GB) with W_base "
        f"and dW resident in {2 * weights_7b / 1e9:.0f} GB of memory (evaluation.server.resident_gb)"
    )
    print(
        f"[8] SVD cache of this checkpoint: {compact / 2**20:.0f} MiB vs {full / 2**20:.0f} MiB for U, S, V^T whole "
        f"-> {compact / full:.2f}x; a Qwen2.5-7B checkpoint: {compact_7b / 1e9:.1f} GB vs {full_7b / 1e9:.1f} GB "
        f"({compact_7b / full_7b:.2f}x); the paper grid's 45 checkpoints: {grid_compact / 1e9:.0f} GB vs "
        f"{grid_full / 1e9:.0f} GB ({grid_compact / grid_full:.2f}x)"
    )


# Figure 9's children. A launcher reports its child's wall time and peak resident memory
# (ru_maxrss): run from this small process rather than from the bench, whose resident size a
# forked child's ru_maxrss would start from.
LAUNCHER = r"""
import json, resource, subprocess, sys, time
started = time.perf_counter()
result = subprocess.run(sys.argv[2:], stdout=open(sys.argv[1], "w"), stderr=subprocess.PIPE, text=True)
print(json.dumps({"rc": result.returncode, "wall_s": time.perf_counter() - started, "stderr": result.stderr[-2000:],
                  "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""
WORKFLOW_EVALUATION = r"""
import json, sys, time
import torch
model_dir, data_dir, spec, device, dtype = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
n, batch_size, threads, profiled = map(int, sys.argv[6:])
torch.set_num_threads(threads)
from spectral_edit.data import read_meta, read_split
from spectral_edit.evaluate.scoring import label_log_probs
from spectral_edit.models import load_model, load_tokenizer
from spectral_edit.data.prompts import examples_of, formatter_for
model = load_model(model_dir).to(device, getattr(torch, dtype))
formatter = formatter_for(load_tokenizer(model_dir), spec)
frame = read_split(f"{data_dir}/eval.jsonl").head(n)
examples = examples_of(frame, read_meta(f"{data_dir}/meta.json").get("text_fields", ["text"]))
stats = {}
started = time.perf_counter()
scores = label_log_probs(model, formatter, examples, batch_size, progress=False, stats=stats)
stats["scoring_s"] = time.perf_counter() - started
stats["single_token_labels"] = all(len(ids) == 1 for ids in formatter.answer_ids)
if profiled and device == "cpu":  # where the scoring time goes (in a run of its own: not in the timed process)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        label_log_probs(model, formatter, examples, batch_size, progress=False)
    events = prof.key_averages()
    stats["profiled_s"] = sum(e.self_cpu_time_total for e in events) / 1e6
    stats["mm_s"] = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")) / 1e6
print(json.dumps({"ids": frame["id"].tolist(), "scores": scores.tolist(), **stats}))
"""


def _launch(command: list[str], out: Path, env: dict) -> dict:
    result = subprocess.run([sys.executable, "-c", LAUNCHER, str(out), *command], capture_output=True, text=True, env=env)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    if measured["rc"] != 0:
        sys.exit(f"bench: {command[0]} failed:\n{measured['stderr']}")
    return measured


def _lm_eval_scores(output_dir: Path, n: int) -> np.ndarray:
    """Per document, the log-likelihood of each choice, from lm-eval's --log_samples file."""
    samples = sorted(output_dir.rglob("samples_*.jsonl"))
    rows = {}
    for line in samples[-1].read_text().splitlines():
        sample = json.loads(line)
        rows[int(sample["doc_id"])] = [float(choice[0]) for choice in sample["filtered_resps"]]
    return np.array([rows[i] for i in range(n)])


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
    command = [
        sys.executable,
        "-c",
        WORKFLOW_EVALUATION,
        str(paths["finetuned"]),
        str(paths["data"]),
        json.dumps(spec),
        device.type,
        dtype_name,
        str(n),
        str(batch_size),
        str(threads),
    ]
    ours = _launch(command + ["0"], scratch / "ours.json", env)
    result = json.loads((scratch / "ours.json").read_text())
    _launch(command + ["1"], scratch / "profiled.json", env)
    result.update({k: v for k, v in json.loads((scratch / "profiled.json").read_text()).items() if k in ("profiled_s", "mm_s")})
    task = write_task(paths["data"], scratch / "tasks", spec.get("eval_prompt", spec["prompt"]))
    theirs = _launch(
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

    from spectral_edit.edit.svd_cache import is_embedding

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


def finetuning_step_rates(paths: dict, config: dict, scratch: Path, steps: int = 12) -> None:
    """Figure 10: the same fine-tuning steps of the default the workflow's way (head only where the
    loss reads it), the workflow's way before (the Trainer's own loss, the head at every
    position) and through a plain Trainer, each in a process of its own (bench/finetune_steps.py);
    per-step time, the FLOP rate of 6 x parameters x tokens, a timed matmul of the model's shape,
    and the difference of the first two runs' loss curves and weights."""
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
            [sys.executable, str(REPO / "bench/finetune_steps.py"), mode, str(paths["base"]), str(train), json.dumps(spec),
             json.dumps(hyper), str(threads), str(scratch / f"finetune-{name}")],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    def result(process: subprocess.Popen) -> dict:
        out, _ = process.communicate()
        if process.returncode:
            sys.exit(f"bench: a fine-tuning child failed (exit {process.returncode})")
        return json.loads(out.strip().splitlines()[-1])

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO, help="where the main job wrote results/ (default: the repo)")
    parser.add_argument(
        "--configfile",
        type=Path,
        nargs="+",
        default=[REPO / "config.yaml"],
        help="as given to snakemake: config.yaml and any overlays",
    )
    parser.add_argument("--dataset", help="the checkpoint's dataset (default: the grid's first)")
    parser.add_argument("--retention", type=float, default=0.01)
    parser.add_argument("--examples", type=int, default=160, help="prompts in the throughput comparison")
    parser.add_argument("--only", type=int, nargs="+", default=list(range(1, 11)), help="which figures to measure")
    parser.add_argument("--device", default="auto", help="runtime.device of figures 2, 7 and 9 (auto: a GPU if any)")
    parser.add_argument("--dtype", default="auto", help="runtime.dtype of figures 2, 7 and 9 (auto: bf16 on a GPU, else fp32)")
    args = parser.parse_args()
    runtime = {"device": args.device, "dtype": args.dtype}
    config = load_config(*args.configfile)
    paths = _paths(args.workdir, config, args.dataset)
    print(f"bench: {paths['keys']} in {args.workdir}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        figures = {
            1: lambda: cell_from_cache_vs_recomputed_svd(paths, config, args.retention, scratch),
            2: lambda: evaluation_throughput(paths, config, args.examples, runtime),
            3: lambda: svd_stage_peak_memory(paths, config, scratch),
            4: paper_grid_dry_run,
            5: lambda: shared_prefix_vs_whole_prompts(paths, config, args.examples),
            6: lambda: fused_vs_foreach_adamw(paths, config),
            7: lambda: (
                served_cells_vs_evaluation_pass(paths, config, scratch, runtime),
                checkpoint_cells_through_snakemake(paths, config, args.configfile, scratch, runtime),
            ),
            8: lambda: cache_sizes(paths),
            9: lambda: against_lm_evaluation_harness(paths, config, args.examples, scratch, runtime),
            10: lambda: finetuning_step_rates(paths, config, scratch),
        }
        for figure in args.only:
            figures[figure]()


if __name__ == "__main__":
    main()
