"""Likelihood-based evaluation: the model's log-probabilities of the label words' first tokens
at the answer position, in batches, with the vocabulary projection computed only there.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import group_name
from .metrics import group_metrics
from .prompts import PromptFormatter, examples_of
from .runtime import is_out_of_memory

log = logging.getLogger(__name__)


def _final_logits(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma-style soft-capping applies to the logits the model would return
        logits = torch.tanh(logits / cap) * cap
    return logits


def _batch_label_log_probs(model, decoder, encoded, index, pad_id, label_ids, device) -> np.ndarray:
    width = max(len(encoded[i]) for i in index)
    input_ids = torch.full((len(index), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    for row, i in enumerate(index):
        ids = encoded[i]
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        mask[row, width - len(ids):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = decoder(
        input_ids=input_ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=False,
    ).last_hidden_state[:, -1]
    log_probs = torch.log_softmax(_final_logits(model, hidden).float(), dim=-1)
    return log_probs[:, label_ids].double().cpu().numpy()


@torch.no_grad()
def label_log_probs(
    model: torch.nn.Module,
    formatter: PromptFormatter,
    examples: Sequence,
    batch_size: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """log p(first token of label word j | prompt(example_i)) as an (n, n_labels) array.

    Prompts are left-padded so the answer position is the last column; position ids follow
    the attention mask so padding does not shift positions. Only the decoder runs over all
    tokens; the LM head runs on one position per example. ``batch_size`` is halved on
    out-of-memory until the batch fits.
    """
    encoded = [formatter.prompt_ids(example) for example in examples]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # less padding per batch
    pad_id = formatter.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = formatter.tokenizer.eos_token_id
    device = next(model.parameters()).device
    label_ids = torch.tensor(formatter.label_token_ids, device=device)
    decoder = model.base_model
    out = np.zeros((len(examples), len(label_ids)), dtype=np.float64)
    # The configured batch size is a ceiling: on out-of-memory the batch is halved and retried,
    # so one setting works from a laptop CPU to a large GPU.
    size, start = max(1, batch_size), 0
    with tqdm(total=len(order), desc="evaluate", unit="example", disable=not progress, mininterval=5) as bar:
        while start < len(order):
            index = order[start:start + size]
            try:
                out[index] = _batch_label_log_probs(model, decoder, encoded, index, pad_id, label_ids, device)
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not is_out_of_memory(error) or size == 1:
                    raise
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                size //= 2
                log.warning("evaluation out of memory on %s: batch size now %d", device, size)
                continue
            start += len(index)
            bar.update(len(index))
    return out


def evaluate_model(
    model: torch.nn.Module,
    formatter: PromptFormatter,
    eval_frame: pd.DataFrame,
    meta: Mapping,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Metrics and per-example label scores of ``model`` on a prepared evaluation split."""
    fields = meta.get("text_fields", ["text"])
    scores = label_log_probs(model, formatter, examples_of(eval_frame, fields), batch_size, progress)
    predictions = scores.argmax(axis=1)
    words, attribute = meta["label_words"], meta["attribute"]
    groups = [group_name(words, attribute, int(y), int(a)) for y, a in zip(eval_frame["label"], eval_frame["attribute"])]
    metrics = group_metrics(
        eval_frame["label"].tolist(), predictions.tolist(), groups, meta["majority_groups"], meta["minority_groups"]
    )
    examples = [
        {"id": str(i), "label": int(y), "group": g, "prediction": int(p), "label_log_probs": [float(s) for s in row]}
        for i, y, g, p, row in zip(eval_frame["id"], eval_frame["label"], groups, predictions, scores)
    ]
    return {"metrics": metrics, "examples": examples}
