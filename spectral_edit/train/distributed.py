"""Launch a fine-tune over several processes with ``torchrun`` (FSDP; one process per GPU).

The fine-tune rule calls :func:`launch_finetune` when a job was given more than one GPU (a
full SFT that does not fit one GPU, see ``spectral_edit.plan.resources``); each process runs
``python -m spectral_edit.train.distributed <arguments.json>``, which calls ``finetune`` under the
environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR, ...). The tests run two CPU
processes with the gloo backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from spectral_edit.errors import ConfigError


def launch_finetune(n_processes: int, arguments: Mapping, log_dir: str | Path | None = None) -> None:
    """Run ``finetune(**arguments)`` in ``n_processes`` processes; raises if any of them fails."""
    batch_size = int(arguments["hyper"]["batch_size"])
    if batch_size % n_processes:  # said here in one line, before any process starts
        raise ConfigError(f"config: finetune.batch_size {batch_size} is not divisible by the {n_processes} processes")
    with tempfile.TemporaryDirectory(prefix="finetune-launch-") as scratch:
        args_file = Path(scratch) / "arguments.json"
        args_file.write_text(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in arguments.items()}))
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n_processes}",
            *(["--log_dir", str(log_dir), "--redirects", "3"] if log_dir else []),
            "-m",
            "spectral_edit.train.distributed",
            str(args_file),
        ]
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def main(args_file: str) -> None:
    import logging

    from spectral_edit.train.finetune import finetune

    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(levelname)s %(name)s: %(message)s"
    )
    # Launched here means sharded with FSDP, also in a group of one process (one GPU).
    finetune(**json.loads(Path(args_file).read_text()), fsdp=True)


if __name__ == "__main__":
    main(sys.argv[1])
