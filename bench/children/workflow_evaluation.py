"""Child process of bench figure 9: the workflow's evaluation of the fine-tuned model on the first
N prompts of the split, as a whole process (measured by measure_process.py).

    python bench/children/workflow_evaluation.py MODEL_DIR DATA_DIR SPEC_JSON DEVICE DTYPE N BATCH_SIZE THREADS PROFILED

Prints one JSON line: the examples' ids, their label log-probabilities, the scoring's token counts
and seconds and, with PROFILED 1 on the CPU, where the scoring time goes (profiled in a run of its
own, not in the timed process).
"""

import json
import sys
import time

import torch


def main() -> None:
    model_dir, data_dir, spec, device, dtype = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
    n, batch_size, threads, profiled = map(int, sys.argv[6:])
    torch.set_num_threads(threads)
    from spectral_edit.data import read_meta, read_split
    from spectral_edit.data.prompts import examples_of, formatter_for
    from spectral_edit.evaluate.scoring import label_log_probs
    from spectral_edit.models import load_model, load_tokenizer

    model = load_model(model_dir).to(device, getattr(torch, dtype))
    formatter = formatter_for(load_tokenizer(model_dir), spec)
    frame = read_split(f"{data_dir}/eval.jsonl").head(n)
    examples = examples_of(frame, read_meta(f"{data_dir}/meta.json").get("text_fields", ["text"]))
    stats = {}
    started = time.perf_counter()
    scores = label_log_probs(model, formatter, examples, batch_size, progress=False, stats=stats)
    stats["scoring_s"] = time.perf_counter() - started
    stats["single_token_labels"] = all(len(ids) == 1 for ids in formatter.answer_ids)
    if profiled and device == "cpu":  # where the scoring time goes (in a run of its own: not in the timed process)
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            label_log_probs(model, formatter, examples, batch_size, progress=False)
        events = prof.key_averages()
        stats["profiled_s"] = sum(e.self_cpu_time_total for e in events) / 1e6
        stats["mm_s"] = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")) / 1e6
    print(json.dumps({"ids": frame["id"].tolist(), "scores": scores.tolist(), **stats}))


if __name__ == "__main__":
    main()
