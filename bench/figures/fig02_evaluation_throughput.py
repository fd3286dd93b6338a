"""Figure 2: evaluation throughput of ``spectral_edit.evaluate.scoring`` (left-padded batches, LM head at
the answer position only) against a straightforward ``transformers`` loop over the same prompts
(one full forward pass per prompt), with the number of identical predictions."""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import where
from spectral_edit.data import read_meta, read_split
from spectral_edit.data.prompts import examples_of, formatter_for
from spectral_edit.evaluate.scoring import label_log_probs
from spectral_edit.models import load_model, load_tokenizer
from spectral_edit.runtime import resolve as resolve_runtime


def evaluation_throughput(paths: dict, config: dict, n_examples: int, runtime: dict) -> None:
    keys = paths["keys"]
    spec = config["datasets"][keys["dataset"]]
    device, dtype = resolve_runtime(runtime)
    model = load_model(paths["finetuned"]).to(device, dtype)
    formatter = formatter_for(load_tokenizer(paths["finetuned"]), spec)
    frame = read_split(paths["data"] / "eval.jsonl").head(n_examples)
    examples = examples_of(frame, read_meta(paths["data"] / "meta.json").get("text_fields", ["text"]))
    threads = torch.get_num_threads()

    started = time.perf_counter()
    ours = label_log_probs(model, formatter, examples, config["evaluation"]["batch_size"], progress=False)
    t_ours = time.perf_counter() - started

    # The straightforward way: the model's own forward pass on each prompt, full logits.
    label_ids = formatter.label_token_ids
    plain = np.zeros_like(ours)
    started = time.perf_counter()
    with torch.no_grad():
        for i, example in enumerate(examples):
            logits = model(input_ids=torch.tensor([formatter.prompt_ids(example)], device=device)).logits[0, -1]
            plain[i] = torch.log_softmax(logits.float(), -1)[label_ids].double().cpu().numpy()
    t_plain = time.perf_counter() - started
    same = int((ours.argmax(1) == plain.argmax(1)).sum())
    print(
        f"[2] evaluation of {len(examples)} prompts ({where(device, dtype, threads)}): "
        f"{len(examples) / t_ours:.2f} examples/s batched "
        f"(batch {config['evaluation']['batch_size']}) vs {len(examples) / t_plain:.2f} examples/s plain transformers "
        f"-> {t_plain / t_ours:.2f}x; identical predictions {same}/{len(examples)}, "
        f"max |log p difference| {np.abs(ours - plain).max():.1e}"
    )
