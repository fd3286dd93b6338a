"""Child process of bench figure 6: fine-tuning steps with one AdamW implementation, in a process
of its own so that neither variant inherits the other's freed memory.

    python bench/children/adamw_steps.py BASE_DIR FUSED STEPS THREADS BATCH_JSON

FUSED is 1 (fused AdamW) or 0 (foreach AdamW); BATCH_JSON holds the padded input_ids, labels and
attention_mask. Prints one JSON line: the mean seconds of a step and of its optimizer update.
"""

import json
import sys
import time

import torch

from spectral_edit.models import load_model


def main() -> None:
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


if __name__ == "__main__":
    main()
