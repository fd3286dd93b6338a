"""The tiny workflow through a real single-node SLURM, with the shipped cluster profile.

tests/slurm/start.sh installs (Debian packages) and starts munge, slurmctld and slurmd on
localhost; the workflow then runs with ``--profile profiles/slurm`` and only test-only
overrides (the partition, small memory and time requests for a 2-core node, and squeue as the
status command since this SLURM has no accounting database). The test checks that every job
went through sbatch, that evaluation cells were grouped into one SLURM job whose one
evaluation server (a job step of its own) loaded the model once, and that the results equal a
local run's. It runs under both process trackings: proctrack/linuxproc, and proctrack/cgroup,
the usual production setting, under which a step's processes die with the step. The daemons
are stopped afterwards.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = REPO / "tests" / "tiny_config.yaml"
START, STOP = REPO / "tests/slurm/start.sh", REPO / "tests/slurm/stop.sh"
JOBCOMP = Path("/var/log/slurm/jobcomp.log")

# Test-only overrides: the partition of the test node, requests that fit 2 CPUs, and the
# status command that works without slurmdbd (../shared/notes/local-slurm.md).
SLURM_OVERRIDES = [
    "--default-resources",
    "slurm_partition=debug",
    "mem_mb=1000",
    "runtime=10",
    "--set-resources",
    *[f"{rule}:cpus_per_task=1" for rule in ("finetune", "svd_cache", "sensitivities", "base_model")],
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--latency-wait",
    "5",
    "--jobs",
    "4",
]


@pytest.fixture(scope="module", params=["linuxproc", "cgroup"])
def slurm(request):
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no SLURM and no apt-get to install it")
    started = subprocess.run(["bash", str(START), request.param], capture_output=True, text=True, timeout=600)
    if started.returncode == 77:
        pytest.skip(started.stderr.strip())
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield request.param
    finally:
        subprocess.run(["bash", str(STOP)], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The same workflow run locally, once for both process trackings."""
    local = tmp_path_factory.mktemp("local")
    _run(local, "--cores", "2")
    return local


def _run(workdir: Path, *extra: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile", str(TINY), *extra]
    # SIGINT on timeout: Snakemake then cancels its SLURM jobs instead of waiting for them.
    result = subprocess.run(["timeout", "-s", "INT", str(timeout), *command], capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 0, f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


def _cells(workdir: Path) -> dict[str, dict]:
    return {str(p.relative_to(workdir)): json.loads(p.read_text()) for p in sorted((workdir / "results/cells").rglob("*.json"))}


def test_workflow_through_slurm_equals_a_local_run(slurm, local_run, tmp_path):
    local, cluster = local_run, tmp_path / "slurm"
    cluster.mkdir()
    before = set(re.findall(r"JobId=(\d+)", JOBCOMP.read_text())) if JOBCOMP.exists() else set()
    result = _run(cluster, "--profile", str(REPO / "profiles/slurm"), *SLURM_OVERRIDES)

    # Every non-local job was submitted with sbatch and completed in SLURM's own records.
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", result.stdout + result.stderr)
    assert submitted, result.stderr[-3000:]
    records = {m.group(1): m.group(0) for m in re.finditer(r"JobId=(\d+) .*", JOBCOMP.read_text())}
    ours = {job: line for job, line in records.items() if job not in before and f"WorkDir={cluster}" in line}
    assert set(submitted) == set(ours)
    assert all("JobState=COMPLETED" in line for line in ours.values())

    # Each cell ran inside a SLURM job; the cells of the fine-tuned checkpoint shared one job.
    local_cells, cluster_cells = _cells(local), _cells(cluster)
    assert sorted(cluster_cells) == sorted(local_cells) and len(cluster_cells) >= 8
    job_ids = {path: cell["job"]["slurm_job_id"] for path, cell in cluster_cells.items()}
    assert all(job_id in ours for job_id in job_ids.values())
    seed_cells = [job_id for path, job_id in job_ids.items() if "/seed0/" in path]
    assert len(set(seed_cells)) == 1 and len(seed_cells) >= 7
    # ... and one evaluation server in that job loaded the model once for all of them.
    servers = {(cell["server"]["host"], cell["server"]["pid"]) for path, cell in cluster_cells.items() if "/seed0/" in path}
    assert len(servers) == 1
    served = sorted(cell["server"]["cells_served"] for path, cell in cluster_cells.items() if "/seed0/" in path)
    assert served == list(range(1, len(seed_cells) + 1)), f"proctrack/{slurm}: {served}"
    # It ran as a job step of its own, so the end of the first cell's step did not take it along.
    server_log = next((cluster / "logs/evaluation_server").rglob("*.log")).read_text()
    assert server_log.count("--- started by pid") == 1 and "as a SLURM job step (srun --overlap)" in server_log
    # No server left: this run's own (other runs on the machine may have theirs).
    ((_, server_pid),) = servers
    cmdline = Path(f"/proc/{server_pid}/cmdline")
    assert not cmdline.exists() or b"spectral_edit.evaluate.server" not in cmdline.read_bytes(), f"server {server_pid} still runs"
    assert len(ours) < len(cluster_cells) + 5  # far fewer jobs than one per cell and per step

    # Same numbers as the local run: metrics and every per-example score.
    for path, cell in local_cells.items():
        assert cluster_cells[path]["metrics"] == cell["metrics"], path
        assert cluster_cells[path]["examples"] == cell["examples"], path
    assert (cluster / "results/tables/table1.csv").read_text() == (local / "results/tables/table1.csv").read_text()
