"""Instruction datasets (``kind: instruction``): free-form responses instead of label words.

A prepared row is ``{id, messages}``, the chat the model is fine-tuned on: the user turn(s) and
the assistant's response(s); fine-tuning puts the loss on every assistant token (prompts.
InstructionFormatter). Such a task is scored on benchmarks (its ``benchmarks`` and ``heldout``
lists), not on label words. Sources:

  synthetic_arithmetic  arithmetic word problems with worked answers, generated here (.arithmetic);
  local, hub            tables read by ``datasets.load_dataset`` (.tables), shaped by one of
                        ``messages_column`` (a list of {role, content} per row),
                        ``prompt_column`` and ``response_column``, or
                        ``prompt_template`` and ``response_template`` (Jinja over the row's columns,
                        e.g. Alpaca's "{{ instruction }}{% if input %}\\n\\n{{ input }}{% endif %}",
                        CommonsenseQA's question with its lettered choices).
``system_prompt`` adds a system turn to every chat. ``n_train`` rows are sampled (seeded by
``split_seed``); the held-out split (``files.eval``, ``hub.eval_split`` or ``eval_fraction``) is
written to eval.jsonl for inspection: the task's scores come from its benchmarks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from spectral_edit.data.arithmetic import build_arithmetic_corpus
from spectral_edit.data.tables import check_training_size, load_table
from spectral_edit.errors import DataError

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


def instruction_columns(spec: Mapping) -> list[str]:
    """The columns a local or hub instruction table must have (templates: checked when rendered)."""
    if "messages_column" in spec:
        return [spec["messages_column"]]
    return [spec[key] for key in ("prompt_column", "response_column") if key in spec]


def _templates(spec: Mapping):
    import jinja2

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
    prompt = spec.get("prompt_template") or "{{ " + spec["prompt_column"] + " }}"
    response = spec.get("response_template") or "{{ " + spec["response_column"] + " }}"
    return environment.from_string(prompt), environment.from_string(response)


def _messages_of(value, where: str) -> list[dict]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: a messages value is not a list of {{role, content}} turns: {str(value)[:80]!r}")
    turns = []
    for turn in value:
        if not isinstance(turn, Mapping) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise DataError(f"{where}: a turn is not {{role: system|user|assistant, content: text}}: {str(turn)[:80]!r}")
        turns.append({"role": turn["role"], "content": turn["content"]})
    if not any(t["role"] == "assistant" for t in turns):
        raise DataError(f"{where}: a chat has no assistant turn: {str(value)[:80]!r}")
    return turns


def shape_instructions(table: pd.DataFrame, spec: Mapping, name: str, which: str) -> list[list[dict]]:
    """The chats of a raw table, as the config's columns or templates shape them."""
    import jinja2

    where = f"datasets.{name} ({which})"
    missing = [c for c in instruction_columns(spec) if c not in table.columns]
    if missing:
        raise DataError(f"{where}: no column {missing[0]!r} (the table has: {', '.join(map(str, table.columns))})")
    system = [{"role": "system", "content": spec["system_prompt"]}] if spec.get("system_prompt") else []
    if "messages_column" in spec:
        return [system + _messages_of(value, where) for value in table[spec["messages_column"]]]
    prompt, response = _templates(spec)
    chats = []
    for row in table.to_dict(orient="records"):
        try:
            user, answer = prompt.render(**row).strip(), response.render(**row).strip()
        except jinja2.exceptions.UndefinedError as error:
            raise DataError(f"{where}: a template names what the table does not have: {error}") from None
        chats.append(system + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}])
    return chats


def _rows(chats: list[list[dict]], prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{i:05d}", "messages": chat} for i, chat in enumerate(chats)]


def build_instruction_dataset(spec: Mapping, name: str) -> tuple[list[dict], list[dict], dict]:
    """Training and held-out rows of an instruction dataset, and facts for meta.json."""
    if spec["source"] == "synthetic_arithmetic":
        train, evaluation = build_arithmetic_corpus(spec)
        return train, evaluation, {}
    rng = np.random.default_rng(int(spec["split_seed"]))
    train_raw = load_table(spec, "train", name)
    if train_raw is None:
        raise DataError(f"datasets.{name}: no training table configured (files.train or hub.train_split)")
    chats = shape_instructions(train_raw, spec, name, "train")
    eval_raw = load_table(spec, "eval", name)
    order = rng.permutation(len(chats))
    if eval_raw is None:
        cut = int(round(float(spec.get("eval_fraction", 0.0)) * len(chats)))
        held_out, order = [chats[i] for i in order[:cut]], order[cut:]
    else:
        held_out = shape_instructions(eval_raw, spec, name, "eval")
    check_training_size(spec, len(order), name)
    n_train = int(spec.get("n_train") or len(order))
    train = [chats[i] for i in np.sort(order[:n_train])]
    if not train:
        raise DataError(f"datasets.{name}: no training example left")
    facts = {"rows_available": len(chats), "rows_sampled": len(train)}
    return _rows(train, "train"), _rows(held_out, "eval"), facts
