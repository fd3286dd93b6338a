"""Child process of bench figure 10: fine-tuning steps of the embedded default, one way per process.

    python bench/children/finetune_steps.py MODE BASE_DIR TRAIN_JSONL SPEC_JSON HYPER_JSON THREADS OUT_DIR

MODE is ``answer_only`` (the workflow: the language-model head only where the loss reads it, no
NaN filling of new tensors), ``before`` (the workflow as it was at 221fbb0: the Trainer's own loss,
the head at every position, and deterministic mode's NaN filling) or ``plain`` (a plain Hugging
Face Trainer over the same tokenized examples: its default TrainingArguments, foreach AdamW, no
determinism settings). Prints one JSON line: the seconds of every step, the loss curve and, for
the first two, the path of the saved weights.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    mode, base_dir, train, spec, hyper, threads, out_dir = sys.argv[1:8]
    torch.set_num_threads(int(threads))
    spec, hyper = json.loads(spec), json.loads(hyper)
    if mode in ("answer_only", "before"):
        import contextlib

        import spectral_edit.train.finetune as ft

        if mode == "before":
            ft._deterministic_without_filling = contextlib.nullcontext
        log = ft.finetune(base_dir, train, out_dir, spec, hyper, seed=0, progress=False, answer_only_head=mode == "answer_only")
        curve = [e["loss"] for e in log["loss_curve"]]
        print(json.dumps({"steps": log["step_seconds"], "loss": curve, "weights": str(Path(out_dir) / "model.safetensors")}))
        return
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from spectral_edit.models import load_model, load_tokenizer
    from spectral_edit.train.finetune import build_training_dataset

    tokenizer = load_tokenizer(base_dir)
    dataset, _ = build_training_dataset(tokenizer, spec, train, int(hyper["max_length"]))
    seconds: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            seconds.append(time.perf_counter() - self.started)

    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=int(hyper["steps"]),
            per_device_train_batch_size=int(hyper["batch_size"]),
            learning_rate=float(hyper["learning_rate"]),
            lr_scheduler_type=hyper["lr_scheduler"],
            adam_beta2=float(hyper.get("adam_beta2", 0.999)),
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
        )
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        model = load_model(base_dir)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[Timer()])
        trainer.train()
        curve = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    print(json.dumps({"steps": seconds, "loss": curve}))


if __name__ == "__main__":
    main()
