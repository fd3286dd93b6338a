"""Calibration-gradient sensitivities of the singular components of dW (Spectral Surgery, Sec. 3.3).

For a linear map y = W x applied to the tokens t of an example, G = dL/dW = sum_t (dL/dy_t) x_t^T,
so g_k = u_k^T G v_k = sum_t <dL/dy_t, u_k> <x_t, v_k>. Forward hooks project each module's input
onto V and backward hooks project the output gradient onto U; no dense gradient of any weight is
formed (nor are weight gradients computed at all: every parameter is frozen and the gradient
flows from the input embeddings). Since W = W_base + dW, dL/d(dW) = dL/dW at the fine-tuned point.

The loss of an example is the mean cross-entropy of its answer tokens (the label word, or the
response of an instruction dataset); the examples of a batch
are summed so that each example's gradient stays separate. The calibration set is
``calibration_size`` examples of the *training* split, drawn with the cell's seed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import DataCollatorForSeq2Seq

from spectral_edit.atomic import atomic_path
from spectral_edit.data import read_split
from spectral_edit.data.prompts import training_features
from spectral_edit.edit.rebuild import leading_vectors
from spectral_edit.edit.svd_cache import cached_names, iter_factors
from spectral_edit.models import load_model, load_tokenizer
from spectral_edit.plan.records import Runtime
from spectral_edit.runtime import resolve as resolve_runtime
from spectral_edit.safetensors_stream import open_safetensors

log = logging.getLogger(__name__)

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class _Projector:
    """Per-module hook state: accumulates |g_k| and g_k over examples."""

    def __init__(self, u: torch.Tensor, vh: torch.Tensor):
        self.u, self.v = u, vh.T.contiguous()
        self.sum_abs = torch.zeros(u.shape[1], dtype=torch.float64)
        self.sum_signed = torch.zeros(u.shape[1], dtype=torch.float64)
        self.projected_input: torch.Tensor | None = None

    def forward_hook(self, module, inputs, output):
        self.projected_input = inputs[0].detach() @ self.v  # (B, T, r)
        output.register_hook(self.backward_hook)

    def backward_hook(self, grad_output: torch.Tensor):
        per_example = ((grad_output.detach() @ self.u) * self.projected_input).sum(dim=1).double()  # (B, r)
        self.sum_abs += per_example.abs().sum(0).cpu()
        self.sum_signed += per_example.sum(0).cpu()
        self.projected_input = None


def per_example_answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over each example's answer tokens (labels != -100), shape (B,)."""
    shifted_logits, shifted_labels = logits[:, :-1].float(), labels[:, 1:]
    mask = shifted_labels != -100
    token_loss = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]), shifted_labels.clamp(min=0).reshape(-1), reduction="none"
    ).view(shifted_labels.shape)
    return (token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)


def calibration_rows(train_path: str | Path, size: int, seed: int):
    frame = read_split(train_path)
    order = np.random.default_rng(seed).permutation(len(frame))[: min(size, len(frame))]
    return frame.iloc[np.sort(order)]


def compute_sensitivities(
    model_dir: str | Path,
    factors_path: str | Path,
    base_weights: str | Path,
    train_path: str | Path,
    dataset_spec: Mapping,
    out_path: str | Path,
    calibration_size: int = 128,
    seed: int = 0,
    batch_size: int = 4,
    max_length: int = 512,
    progress: bool = True,
    runtime: Runtime | Mapping | None = None,
) -> dict[str, torch.Tensor]:
    """Mean |g_k| and mean g_k per projection matrix of a fine-tuned model; writes safetensors.

    ``model_dir`` is the fine-tuned model, ``base_weights`` the base model's weights file (dW).
    """
    tokenizer = load_tokenizer(model_dir)
    device, _ = resolve_runtime(runtime)
    model = load_model(model_dir, device)  # fp32: the sensitivities are small differences
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    model.enable_input_require_grads()
    decomposed, _ = cached_names(factors_path)
    modules = {
        f"{name}.weight": module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in PROJECTIONS and f"{name}.weight" in set(decomposed)
    }
    projectors: dict[str, _Projector] = {}
    handles = []
    work = torch.float64 if device.type == "cpu" else torch.float32
    with open_safetensors(base_weights) as base:
        # The cache keeps one side's singular vectors; the other side comes from dW = W_ft - W_base.
        for weight, s, side, basis in iter_factors(factors_path, [n for n in decomposed if n in modules]):
            module = modules[weight]
            delta = module.weight.detach().to(work) - base.get_tensor(weight).to(device, work)
            u, v = leading_vectors(delta, s, side, basis, len(s))
            projector = _Projector(u.float(), v.T.float())
            projectors[weight] = projector
            handles.append(module.register_forward_hook(projector.forward_hook))
            del delta
    rows = calibration_rows(train_path, calibration_size, seed)
    # The fine-tuning loss: on the answer word, or on every response token of an instruction
    # dataset (the paper's teacher forcing with the prompt masked, end-of-turn included).
    features, _ = training_features(tokenizer, dataset_spec, rows, max_length)
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    starts = range(0, len(features), batch_size)
    try:
        for start in tqdm(starts, desc="sensitivities", unit="batch", disable=not progress, mininterval=5):
            batch = collate(features[start : start + batch_size])
            batch = {key: value.to(device) for key, value in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
            per_example_answer_loss(logits, batch["labels"]).sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    n = len(features)
    tensors = {}
    for name, projector in projectors.items():
        tensors[f"abs/{name}"] = (projector.sum_abs / n).float()
        tensors[f"signed/{name}"] = (projector.sum_signed / n).float()
    with atomic_path(out_path) as tmp:
        save_file(tensors, str(tmp), metadata={"calibration_size": str(n), "seed": str(seed)})
    log.info("sensitivities of %d matrices from %d calibration examples", len(projectors), n)
    return tensors
