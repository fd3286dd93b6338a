"""Child process of bench figure 7: one edited cell in a process of its own, as cells ran before
the evaluation server (imports, model load, edit, evaluation), timed from the process's start.

    python bench/children/cell_own_process.py REQUEST_JSON THREADS

REQUEST_JSON holds evaluate_cell's arguments (out_path among them). Prints one JSON line: the
seconds and the per-example scores.
"""

import json
import sys
import time


def main() -> None:
    started = time.perf_counter()
    import torch

    torch.set_num_threads(int(sys.argv[2]))
    from spectral_edit.evaluate.cells import evaluate_cell

    request = json.loads(sys.argv[1])
    record = evaluate_cell(out_path=request.pop("out_path"), progress=False, **request)
    print(json.dumps({"seconds": time.perf_counter() - started, "examples": record["examples"]}))


if __name__ == "__main__":
    main()
