#!/usr/bin/env bash
# What only a GPU can show, in one go, on a machine with one NVIDIA GPU and this repository set
# up (bash setup.sh, or a Python that already has the pinned packages and a CUDA torch: set
# PYTHON=...). Planned to take under 8 minutes on one H100/H200-class GPU:
#
#   1. the embedded default end to end in fp32 on the GPU, then in bf16 (runtime dtype
#      bfloat16: mixed-precision fine-tunes, bf16 evaluation), the second reusing the first's
#      base model and data; every cell of the two compared (label log-probabilities,
#      predictions, accuracy and gap);
#   2. bench figures 2, 7 and 9 on the GPU in bf16 (bench/run.py --device cuda);
#   3. the FSDP launch (torchrun, spectral_edit.train.distributed) as a group of one GPU against the
#      same fine-tune unsharded, fp32: loss curves and weights compared;
#
# and writes the table of results, headed by the card's name, to OUT/gpu_table.md and into
# README.md between the gpu-check markers. Usage: bash bench/gpu_check.sh [OUT] (default
# gpu-check/, ignored by git). Each step's wall time is printed; nothing here asserts a time.
# GPU_CHECK_DEVICE=cpu and GPU_CHECK_OVERLAY=<config overlay> run the same steps on the CPU with
# another config (tests/test_gpu_check.py: the tiny model), leaving README.md as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
CORES=$(nproc)
DEVICE=${GPU_CHECK_DEVICE:-cuda}
CONFIGS=(config.yaml ${GPU_CHECK_OVERLAY:+"$GPU_CHECK_OVERLAY"})
export GPU_CHECK_DEVICE=$DEVICE
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
started=$SECONDS

"$PYTHON" - <<'EOF'
import os, sys, torch
if os.environ["GPU_CHECK_DEVICE"] == "cuda" and not torch.cuda.is_available():
    sys.exit(f"gpu_check: no CUDA device visible to torch {torch.__version__} ({sys.executable})")
if torch.cuda.is_available():
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

step() {  # step NAME COMMAND...: runs it with its output in OUT/NAME.log and records its seconds
    local name=$1
    shift
    local t0=$SECONDS
    echo "gpu_check: $name ..."
    if ! "$@" >"$OUT/$name.log" 2>&1; then
        echo "gpu_check: $name failed; the end of $OUT/$name.log:" >&2
        tail -n 40 "$OUT/$name.log" >&2
        exit 1
    fi
    echo "$name $((SECONDS - t0))" >>"$OUT/seconds.txt"
    echo "gpu_check: $name done in $((SECONDS - t0)) s"
}
rm -f "$OUT/seconds.txt"

# 1. The default in fp32, then in bf16 from a copy of the fp32 run (the base model and the data
# are kept; everything that takes runtime reruns: fine-tunes, SVD caches, cells, tables).
echo "{\"runtime\": {\"device\": \"$DEVICE\", \"dtype\": \"float32\"}}" >"$OUT/fp32.yaml"
echo "{\"runtime\": {\"device\": \"$DEVICE\", \"dtype\": \"bfloat16\"}}" >"$OUT/bf16.yaml"
rm -rf "$OUT/fp32" "$OUT/bf16"
step default-fp32 "$PYTHON" -m snakemake -s Snakefile -d "$OUT/fp32" --cores "$CORES" --configfile "${CONFIGS[@]}" "$OUT/fp32.yaml"
cp -a "$OUT/fp32" "$OUT/bf16"
step default-bf16 "$PYTHON" -m snakemake -s Snakefile -d "$OUT/bf16" --cores "$CORES" --configfile "${CONFIGS[@]}" "$OUT/bf16.yaml"

# 2. Bench figures 2, 7 and 9 on the GPU, in bf16, on the bf16 run's results.
step bench "$PYTHON" bench/run.py --workdir "$OUT/bf16" --configfile "${CONFIGS[@]}" --only 2 7 9 --device "$DEVICE" --dtype bfloat16

# 3. The FSDP launch as a group of one GPU against the same fine-tune unsharded (fp32, 16 steps).
step fsdp "$PYTHON" - "$OUT" "${CONFIGS[@]}" <<'EOF'
import json, os, sys
from pathlib import Path
import numpy as np
from safetensors.torch import load_file
from spectral_edit import layout
from spectral_edit.plan.config import load_config, recipe_for_dataset
from spectral_edit.train.distributed import launch_finetune
from spectral_edit.train.finetune import finetune

out = Path(sys.argv[1])
config = load_config(*sys.argv[2:])
device = os.environ["GPU_CHECK_DEVICE"]
model, dataset = config["grid"]["models"][0], config["grid"]["datasets"][0]
results = out / "fp32" / layout.RESULTS
arguments = dict(
    base_dir=str(results / "models" / model),
    train_path=str(results / "data" / dataset / "train.jsonl"),
    dataset_spec=config["datasets"][dataset],
    hyper={**recipe_for_dataset(config, "full", dataset)["hyper"], "steps": 16},
    seed=0,
    progress=False,
    runtime={"device": device, "dtype": "float32"},
)
finetune(**arguments, out_dir=str(out / "fsdp" / "unsharded"))
launch_finetune(1, {**arguments, "out_dir": str(out / "fsdp" / "sharded")}, log_dir=out / "fsdp" / "ranks")
logs = [json.loads((out / "fsdp" / run / "train_log.json").read_text()) for run in ("unsharded", "sharded")]
curves = [np.array([e["loss"] for e in log["loss_curve"]]) for log in logs]
weights = [load_file(out / "fsdp" / run / "model.safetensors") for run in ("unsharded", "sharded")]
result = {
    "parallelism": logs[1]["parallelism"],
    "fsdp_unit_classes": logs[1]["fsdp_unit_classes"],
    "max_loss_difference": float(np.abs(curves[0] - curves[1]).max()),
    "max_weight_difference": max(float((weights[0][n] - weights[1][n]).abs().max()) for n in weights[0]),
    "step_seconds": [float(np.median(log["step_seconds"])) for log in logs],
}
(out / "fsdp.json").write_text(json.dumps(result, indent=1))
print(json.dumps(result))
EOF

# The table: the card, each step's time, the bf16-vs-fp32 comparison, the bench lines, FSDP.
"$PYTHON" - "$OUT" "$((SECONDS - started))" <<'EOF'
import json, os, re, sys
from pathlib import Path
import numpy as np
import torch

out, total = Path(sys.argv[1]), int(sys.argv[2])
seconds = dict(line.split() for line in (out / "seconds.txt").read_text().splitlines())
rows = []
for fp32_cell in sorted((out / "fp32/results/cells").rglob("*.json")):
    bf16_cell = out / "bf16" / fp32_cell.relative_to(out / "fp32")
    a, b = (json.loads(p.read_text()) for p in (fp32_cell, bf16_cell))
    if "examples" not in a:
        continue
    lp = [np.array([e["label_log_probs"] for e in r["examples"]]) for r in (a, b)]
    pred = [np.array([e["prediction"] for e in r["examples"]]) for r in (a, b)]
    rows.append(
        (
            np.abs(lp[0] - lp[1]).max(),
            (pred[0] == pred[1]).mean(),
            abs(a["metrics"]["accuracy"] - b["metrics"]["accuracy"]),
            abs(a["metrics"]["gap"] - b["metrics"]["gap"]),
        )
    )
rows = np.array(rows)
finetunes = {}
for run in ("fp32", "bf16"):
    logs = [json.loads(p.read_text()) for p in (out / run / "results/finetune").rglob("train_log.json")]
    finetunes[run] = np.median([np.median(log["step_seconds"]) for log in logs])
bench = [line.strip() for line in (out / "bench.log").read_text().splitlines() if re.match(r"\[\d+\]", line.strip())]
fsdp = json.loads((out / "fsdp.json").read_text())
on_gpu = os.environ["GPU_CHECK_DEVICE"] == "cuda"
card = torch.cuda.get_device_name(0) if on_gpu else "CPU (a smoke run of the script, not a GPU result)"
table = [
    f"**{card}** (torch {torch.__version__}, CUDA {torch.version.cuda}), `bash bench/gpu_check.sh`: {total} s in all.",
    "",
    "| check | result |",
    "|---|---|",
    f"| default, fp32 on the {'GPU' if on_gpu else 'CPU'} | {seconds['default-fp32']} s end to end; median fine-tune step {finetunes['fp32']:.3f} s |",
    f"| default, bf16 (mixed-precision fine-tunes, bf16 cells) | {seconds['default-bf16']} s (base model and data reused); "
    f"median fine-tune step {finetunes['bf16']:.3f} s |",
    f"| bf16 against fp32, {len(rows)} cells | label log-probabilities: median of the cells' largest difference "
    f"{np.median(rows[:, 0]):.3f}, largest {rows[:, 0].max():.3f}; predictions agreeing {100 * rows[:, 1].mean():.1f} % "
    f"(lowest cell {100 * rows[:, 1].min():.1f} %); accuracy differs by at most {rows[:, 2].max():.3f}, gap by at most "
    f"{rows[:, 3].max():.3f} |",
    *(f"| bench figure {line[1:line.index(']')]} | {line[line.index(']') + 2:].replace('|', chr(92) + '|')} |" for line in bench),
    f"| FSDP launch, one {'GPU' if on_gpu else 'CPU process'}, 16 steps fp32 | {fsdp['parallelism']}, units {fsdp['fsdp_unit_classes']}; loss curve within "
    f"{fsdp['max_loss_difference']:.1e} and weights within {fsdp['max_weight_difference']:.1e} of the unsharded run; "
    f"median step {fsdp['step_seconds'][1]:.3f} s sharded vs {fsdp['step_seconds'][0]:.3f} s |",
]
text = "\n".join(table) + "\n"
(out / "gpu_table.md").write_text(text)
readme = Path("README.md")
start, end = "<!-- gpu-check:start -->", "<!-- gpu-check:end -->"
content = readme.read_text()
if on_gpu and start in content and end in content:
    head, rest = content.split(start, 1)
    readme.write_text(head + start + "\n" + text + end + rest.split(end, 1)[1])
print(text)
EOF
echo "gpu_check: done in $((SECONDS - started)) s; the table is in $OUT/gpu_table.md and README.md"
