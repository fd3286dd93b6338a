"""Run under torchrun by tests/test_distributed.py: the fine-tune of spectral_edit.train.distributed,
preempted when KILL_AT is set (rank 0 SIGKILLs itself in the middle of saving that step's
checkpoint, before its completion marker; torchrun then stops the other rank)."""

import os
import signal
import sys

import spectral_edit.train.finetune as ft
from spectral_edit.train.distributed import main

kill_at = int(os.environ.get("KILL_AT", "0"))
if kill_at:
    mark = ft._MarkCheckpointComplete.on_save

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == kill_at and state.is_world_process_zero:
            os.kill(os.getpid(), signal.SIGKILL)
        mark(self, args, state, control, **kwargs)

    ft._MarkCheckpointComplete.on_save = on_save

main(sys.argv[1])
