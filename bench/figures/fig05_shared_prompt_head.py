"""Figure 5: evaluation with the prompts' shared head run once against every prompt run whole (the
same batches; identical predictions, largest log-probability difference)."""

from __future__ import annotations

import time

import numpy as np

from spectral_edit.data import read_meta, read_split
from spectral_edit.data.prompts import examples_of, formatter_for
from spectral_edit.evaluate.scoring import label_log_probs, shared_prefix_length
from spectral_edit.models import load_model, load_tokenizer


def shared_prefix_vs_whole_prompts(paths: dict, config: dict, n_examples: int) -> None:
    keys = paths["keys"]
    spec = config["datasets"][keys["dataset"]]
    model = load_model(paths["finetuned"]).eval()
    formatter = formatter_for(load_tokenizer(paths["finetuned"]), spec)
    frame = read_split(paths["data"] / "eval.jsonl").head(n_examples)
    examples = examples_of(frame, read_meta(paths["data"] / "meta.json").get("text_fields", ["text"]))
    encoded = [formatter.prompt_ids(e) for e in examples]
    timings, scores = {}, {}
    for shared in (False, True):
        started = time.perf_counter()
        scores[shared] = label_log_probs(model, formatter, examples, config["evaluation"]["batch_size"], False, shared)
        timings[shared] = time.perf_counter() - started
    same = int((scores[True].argmax(1) == scores[False].argmax(1)).sum())
    print(
        f"[5] shared prompt head ({shared_prefix_length(encoded)} of {np.mean([len(e) for e in encoded]):.0f} tokens "
        f"on average) run once: {timings[True]:.1f} s vs {timings[False]:.1f} s with every prompt whole "
        f"-> {timings[False] / timings[True]:.2f}x; identical predictions {same}/{len(examples)}, "
        f"max |log p difference| {np.abs(scores[True] - scores[False]).max():.1e}"
    )
