"""Likelihood-based evaluation: the model's log-probabilities of the label words' first tokens
at the answer position, in batches, with the vocabulary projection computed only there.

Every prompt of a split begins with the same tokens (the chat template's system turn, the
user tag, the prompt's first words: 26 of about 85 tokens on the embedded default). That head
is run once per model; each batch then runs only the rest of its prompts against the head's
cached keys and values, expanded over the batch. Positions continue after the head and the
padding of the rest sits between head and text, masked, so every prompt sees exactly the
tokens and positions it sees when run whole; the results equal the whole-prompt path to
floating-point rounding (tests/test_evaluate_finetune.py compares them).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from spectral_edit.data import group_name
from spectral_edit.data.prompts import PromptFormatter, examples_of
from spectral_edit.evaluate.metrics import group_metrics
from spectral_edit.runtime import in_halving_batches

log = logging.getLogger(__name__)


def _final_logits(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma-style soft-capping applies to the logits the model would return
        logits = torch.tanh(logits / cap) * cap
    return logits


def _sliding_window(config) -> int | None:
    """The attention window of a model with sliding-window layers (Gemma 3, Mistral), else None."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    uses = "sliding_attention" in layer_types or bool(getattr(config, "use_sliding_window", False))
    return int(window) if window and uses else None


def shared_prefix_length(encoded: Sequence[Sequence[int]], window: int | None = None) -> int:
    """Tokens every prompt begins with, leaving at least one token of each to run.

    0 when a sliding attention window is shorter than the longest prompt: the padding between
    head and text would then push head tokens out of a window they are inside when the prompt
    runs whole (masks count positions in the cache, padding included).
    """
    if len(encoded) < 2 or (window is not None and max(len(ids) for ids in encoded) > window):
        return 0
    shortest = min(len(ids) for ids in encoded)
    first = encoded[0]
    length = 0
    while length < shortest - 1 and all(ids[length] == first[length] for ids in encoded):
        length += 1
    return length


class SharedPrefix:
    """The keys and values of the prompts' common head, computed once per model."""

    def __init__(self, decoder, head: Sequence[int], device):
        self.length = len(head)
        output = decoder(input_ids=torch.tensor([list(head)], device=device), use_cache=True)
        cache = output.past_key_values
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]
        self.config = decoder.config

    def expanded(self, batch: int) -> DynamicCache:
        """A fresh cache holding the head for ``batch`` prompts (the model appends to it)."""
        return DynamicCache(
            [(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1)) for keys, values in self.layers],
            config=self.config,
        )


def _batch_label_log_probs(
    model, decoder, encoded, index, pad_id, label_ids, device, prefix: SharedPrefix | None = None
) -> np.ndarray:
    skip = prefix.length if prefix is not None else 0
    rest = [encoded[i][skip:] for i in index]
    width = max(len(ids) for ids in rest)
    input_ids = torch.full((len(index), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    for row, ids in enumerate(rest):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        mask[row, width - len(ids) :] = 1
    positions = skip + (mask.cumsum(-1) - 1).clamp(min=0)
    if prefix is None:
        inputs = {"attention_mask": mask, "use_cache": False}
    else:
        head = torch.ones((len(index), skip), dtype=torch.long)
        inputs = {
            "attention_mask": torch.cat([head, mask], dim=1),
            "past_key_values": prefix.expanded(len(index)),
            "use_cache": True,
        }
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    hidden = decoder(input_ids=input_ids.to(device), position_ids=positions.to(device), **inputs).last_hidden_state[:, -1]
    log_probs = torch.log_softmax(_final_logits(model, hidden).float(), dim=-1)
    return log_probs[:, label_ids].double().cpu().numpy()


@torch.no_grad()
def label_log_probs(
    model: torch.nn.Module,
    formatter: PromptFormatter,
    examples: Sequence,
    batch_size: int = 16,
    progress: bool = True,
    shared_prefix: bool = True,
    stats: dict | None = None,
) -> np.ndarray:
    """log p(first token of label word j | prompt(example_i)) as an (n, n_labels) array.

    Prompts are left-padded so the answer position is the last column; position ids follow
    the attention mask so padding does not shift positions. Only the decoder runs over all
    tokens; the LM head runs on one position per example. With ``shared_prefix`` the tokens
    all prompts begin with are run once (see the module docstring). ``batch_size`` is halved
    on out-of-memory until the batch fits. ``stats``, when given, receives the token counts:
    ``prompt_tokens`` (the prompts' own), ``computed_tokens`` (what the decoder ran: every batch's
    rows times its width, padding included, plus the shared head once) and ``head_tokens``.
    """
    encoded = [formatter.prompt_ids(example) for example in examples]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # less padding per batch
    pad_id = formatter.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = formatter.tokenizer.eos_token_id
    device = next(model.parameters()).device
    label_ids = torch.tensor(formatter.label_token_ids, device=device)
    # A PEFT model (an exported adapter on its base) scores through the model it wraps, whose
    # layers carry the adapter.
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = model.base_model
    head = shared_prefix_length(encoded, _sliding_window(model.config)) if shared_prefix else 0
    prefix = SharedPrefix(decoder, encoded[0][:head], device) if head else None
    out = np.zeros((len(examples), len(label_ids)), dtype=np.float64)
    computed = [head]

    def run(start: int, stop: int) -> None:
        index = order[start:stop]
        out[index] = _batch_label_log_probs(model, decoder, encoded, index, pad_id, label_ids, device, prefix)
        computed[0] += len(index) * max(len(encoded[i]) - head for i in index)
        bar.update(len(index))

    with tqdm(total=len(order), desc="evaluate", unit="example", disable=not progress, mininterval=5) as bar:
        in_halving_batches(len(order), batch_size, run, device, "evaluation")
    if stats is not None:
        stats.update(prompt_tokens=sum(len(ids) for ids in encoded), computed_tokens=computed[0], head_tokens=head)
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
    finite = np.isfinite(scores).all(axis=1)
    if not finite.all():  # no metric from NaN scores (argmax would silently pick label 0)
        first = int(np.flatnonzero(~finite)[0])
        raise FloatingPointError(
            f"non-finite label log-probabilities for example {eval_frame['id'].iloc[first]!r} "
            f"({int((~finite).sum())} of {len(finite)} examples): the model's weights or logits are not finite"
        )
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
