"""Full-parameter supervised fine-tuning with the model's chat template.

Each example is the chat (user: prompt with the text, assistant: the label word); the loss is
on the answer tokens only. Training runs through ``transformers.Trainer`` (AdamW, schedule,
seeding, progress bar); ``full_determinism`` makes a run with the same config and seed
reproduce the same weights on the same hardware and thread count.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Mapping

import datasets
import torch
from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

from .atomic import atomic_directory_files, write_json
from .data import read_split
from .models import load_model, load_tokenizer
from .prompts import PromptFormatter

log = logging.getLogger(__name__)


class _LossToLog(TrainerCallback):
    """Writes each logged training loss to the job log and keeps the curve."""

    def __init__(self):
        self.history: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            entry = {"step": state.global_step, "loss": float(logs["loss"])}
            if "learning_rate" in logs:
                entry["learning_rate"] = float(logs["learning_rate"])
            self.history.append(entry)
            log.info("step %d/%d loss %.4f", state.global_step, state.max_steps, entry["loss"])


def build_training_dataset(formatter: PromptFormatter, train_path: str | Path, max_length: int) -> datasets.Dataset:
    frame = read_split(train_path)
    rows = [
        formatter.training_features(text, int(label), max_length, example_id=str(example_id))
        for text, label, example_id in zip(frame["text"], frame["label"], frame["id"])
    ]
    return datasets.Dataset.from_list(rows)


def finetune(
    base_dir: str | Path,
    train_path: str | Path,
    out_dir: str | Path,
    dataset_spec: Mapping,
    hyper: Mapping,
    seed: int,
    progress: bool = True,
) -> dict:
    """Fine-tune the base model in ``base_dir`` and save it (with train_log.json) to ``out_dir``."""
    tokenizer = load_tokenizer(base_dir)
    model = load_model(base_dir)
    model.train()
    formatter = PromptFormatter(tokenizer, dataset_spec["prompt"], dataset_spec["label_words"])
    train_set = build_training_dataset(formatter, train_path, int(hyper.get("max_length", 512)))
    use_cuda = torch.cuda.is_available()
    losses = _LossToLog()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="trainer-") as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            max_steps=int(hyper["steps"]),
            per_device_train_batch_size=int(hyper["batch_size"]),
            gradient_accumulation_steps=int(hyper.get("gradient_accumulation_steps", 1)),
            learning_rate=float(hyper["learning_rate"]),
            lr_scheduler_type=hyper.get("lr_scheduler", "linear"),
            warmup_steps=int(hyper.get("warmup_steps", 0)),
            weight_decay=float(hyper.get("weight_decay", 0.0)),
            adam_beta1=float(hyper.get("adam_beta1", 0.9)),
            adam_beta2=float(hyper.get("adam_beta2", 0.999)),
            max_grad_norm=float(hyper.get("max_grad_norm", 1.0)),
            optim="adamw_torch",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=int(seed),
            data_seed=int(seed),
            full_determinism=True,
            use_cpu=not use_cuda,
            dataloader_num_workers=0,
            disable_tqdm=not progress,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
            callbacks=[losses],
        )
        result = trainer.train()
    model.eval()
    train_log = {
        "seed": int(seed),
        "hyperparameters": dict(hyper),
        "train_examples": len(train_set),
        "epochs": float(result.metrics.get("epoch", 0.0)),
        "final_loss": losses.history[-1]["loss"] if losses.history else None,
        "mean_train_loss": float(result.training_loss),
        "seconds": time.time() - started,
        "device": "cuda" if use_cuda else "cpu",
        "torch_threads": torch.get_num_threads(),
        "loss_curve": losses.history,
    }
    with atomic_directory_files(out_dir, last=("model.safetensors",)) as scratch_out:
        model.save_pretrained(scratch_out)
        tokenizer.save_pretrained(scratch_out)
        write_json(Path(scratch_out) / "train_log.json", train_log)
    log.info("fine-tuned in %.0f s, final loss %s", train_log["seconds"], train_log["final_loss"])
    return train_log
