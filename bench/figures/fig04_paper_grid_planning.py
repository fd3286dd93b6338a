"""Figure 4: wall time of ``snakemake -n --configfile config/paper.yaml`` (planning the paper's grid)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO


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
