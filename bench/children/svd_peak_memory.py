"""Child process of bench figure 3: the SVD stage (or only its imports) and its peak memory.

    python bench/children/svd_peak_memory.py BASE_WEIGHTS FINETUNED_WEIGHTS OUT_DIR INCLUDE_EMBEDDINGS RUN

INCLUDE_EMBEDDINGS and RUN are 1 or 0; with RUN 0 it only imports the SVD stage, the baseline the
figure subtracts. Prints one JSON line: the peak anonymous resident memory (RssAnon, MB). It
samples RssAnon (tensors and buffers it allocated) every 5 ms; VmHWM would also count the pages of
the memory-mapped safetensors files it reads, which are page cache the kernel can drop, and
getrusage's ru_maxrss would carry over the resident size of the (large) bench process that the
child is forked from. Only the standard library is imported before the sampler starts.
"""

import json
import re
import sys
import threading
import time


def anon_mb() -> float:
    with open("/proc/self/status") as status:
        return int(re.search(r"RssAnon:\s+(\d+) kB", status.read()).group(1)) / 1024


def main() -> None:
    peak = [anon_mb()]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], anon_mb())
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
    from spectral_edit.edit.svd import compute_svd_cache

    base, finetuned, out, include_embeddings, run = sys.argv[1:6]
    if run == "1":
        compute_svd_cache(base, finetuned, out, include_embeddings=include_embeddings == "1", progress=False)
    time.sleep(0.05)
    print(json.dumps({"peak_anon_mb": max(peak[0], anon_mb())}))


if __name__ == "__main__":
    main()
