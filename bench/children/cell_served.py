"""Child process of bench figure 7: one edited cell served by its checkpoint's evaluation server,
through the client a cell job runs (the first call starts the server), timed from the process's start.

    python bench/children/cell_served.py ARGUMENTS_JSON THREADS

ARGUMENTS_JSON holds serve_cell's arguments, the cell's request among them. Prints one JSON line:
the seconds, the per-example scores and the server's pid.
"""

import json
import sys
import time


def main() -> None:
    started = time.perf_counter()
    from spectral_edit.evaluate.client import serve_cell

    arguments = json.loads(sys.argv[1])
    record = serve_cell(arguments.pop("request"), note=lambda *_: None, **arguments)
    print(json.dumps({"seconds": time.perf_counter() - started, "examples": record["examples"], "pid": record["server"]["pid"]}))


if __name__ == "__main__":
    main()
