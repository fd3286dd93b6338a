"""bench/gpu_check.sh, the one-GPU check, run here on the CPU with the tiny model: every step it
takes on a GPU (the workflow in fp32 and bf16 with the cells compared, bench figures 2, 7 and 9,
the FSDP launch as a group of one) runs and lands in its table, and README.md is left alone."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_the_gpu_check_runs_every_step_and_writes_its_table(tmp_path):
    readme = (REPO / "README.md").read_bytes()
    env = {
        **os.environ,
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_OVERLAY": "tests/tiny_config.yaml",
        "PYTHON": sys.executable,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", "bench/gpu_check.sh", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (tmp_path / "gpu_table.md").read_text()
    assert table.startswith("**CPU (a smoke run")
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    checks = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert checks[0] == "default, fp32 on the CPU" and checks[1].startswith("default, bf16")
    assert checks[2] == "bf16 against fp32, 8 cells"
    assert {"bench figure 2", "bench figure 7", "bench figure 9"} <= set(checks)
    assert "FSDPLlamaForCausalLM" in rows[-1] and "'LlamaDecoderLayer': 2" in rows[-1]
    assert all(row.count(" | ") == 1 for row in rows)  # no stray column from a '|' in a bench line
    assert (REPO / "README.md").read_bytes() == readme
