"""Child process of bench figure 9: runs a command and reports its wall time and peak resident
memory (ru_maxrss of its children), from this small process rather than from the bench, whose
resident size a forked child's ru_maxrss would start from.

    python bench/children/measure_process.py STDOUT_FILE COMMAND...

The command's stdout goes to STDOUT_FILE. Prints one JSON line: its exit status, wall seconds,
the end of its stderr and its peak memory (MB).
"""

import json
import resource
import subprocess
import sys
import time


def main() -> None:
    started = time.perf_counter()
    with open(sys.argv[1], "w") as stdout:
        result = subprocess.run(sys.argv[2:], stdout=stdout, stderr=subprocess.PIPE, text=True)
    print(
        json.dumps(
            {
                "rc": result.returncode,
                "wall_s": time.perf_counter() - started,
                "stderr": result.stderr[-2000:],
                "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
