"""Prompt formatting shared by fine-tuning and evaluation, so both see identical tokens.

The user turn is the dataset's prompt template filled with the example's text; the assistant
turn is the label word. Prompt and answer are tokenized separately and concatenated, so the
answer position in evaluation is exactly where training put the label word's first token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from .errors import ConfigError, DataError

log = logging.getLogger(__name__)


class PromptFormatter:
    """Prompt and answer tokens of an example.

    An example is a mapping of text fields (``{"text": ...}``, ``{"premise": ..., "hypothesis":
    ...}``) or a plain string (the field ``text``); each ``{field}`` of the template is replaced
    by its value. With ``max_text_tokens`` every field is cut to that many tokens first, so long
    texts never push the answer (the label word) out of the model's context.
    """

    def __init__(self, tokenizer, template: str, label_words: Sequence[str], max_text_tokens: int | None = None):
        self.tokenizer = tokenizer
        self.template = template
        self.label_words = list(label_words)
        self.max_text_tokens = int(max_text_tokens) if max_text_tokens else None
        self.uses_chat_template = getattr(tokenizer, "chat_template", None) is not None
        if not self.uses_chat_template:
            log.warning("tokenizer has no chat template: using the plain format '<prompt>\\nAnswer: <label>'")
        self.answer_ids = [self._encode(self._answer_text(word)) for word in self.label_words]
        first = [ids[0] if ids else None for ids in self.answer_ids]
        if None in first or len(set(first)) != len(first):
            raise ConfigError(
                f"label words {self.label_words} must start with distinct tokens for likelihood "
                f"scoring at the answer position (first tokens: {first})"
            )
        self.label_token_ids = first

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _answer_text(self, word: str) -> str:
        return word if self.uses_chat_template else " " + word

    def fields(self, example: Mapping | str) -> dict[str, str]:
        fields = {"text": example} if isinstance(example, str) else {k: str(v) for k, v in example.items()}
        if self.max_text_tokens:
            for key, value in fields.items():
                ids = self._encode(value)
                if len(ids) > self.max_text_tokens:
                    fields[key] = self.tokenizer.decode(ids[: self.max_text_tokens])
        return fields

    def prompt_text(self, example: Mapping | str) -> str:
        user = self.template
        for key, value in self.fields(example).items():
            user = user.replace("{" + key + "}", value)
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
        return f"{user}\nAnswer:"

    def prompt_ids(self, example: Mapping | str) -> list[int]:
        return self._encode(self.prompt_text(example))

    def training_features(self, example: Mapping | str, label: int, max_length: int, example_id: str = "?") -> dict:
        """input_ids = prompt + answer; labels mask the prompt (-100) so loss is on the answer."""
        prompt = self.prompt_ids(example)
        answer = self.answer_ids[label]
        if len(prompt) + len(answer) > max_length:
            raise DataError(
                f"example {example_id}: {len(prompt) + len(answer)} tokens exceed finetune.max_length={max_length} "
                f"(set the dataset's max_text_tokens to truncate long texts)"
            )
        return {
            "input_ids": prompt + answer,
            "attention_mask": [1] * (len(prompt) + len(answer)),
            "labels": [-100] * len(prompt) + answer,
        }


def formatter_for(tokenizer, spec: Mapping) -> PromptFormatter:
    """The formatter a dataset's config asks for (prompt, label_words, max_text_tokens)."""
    return PromptFormatter(tokenizer, spec["prompt"], spec["label_words"], spec.get("max_text_tokens"))


def examples_of(frame, fields: Sequence[str]) -> list[dict]:
    """The text fields of each row of a prepared split."""
    return frame[list(fields)].to_dict(orient="records")


def check_label_words(config: Mapping, tokenizer_dir_of) -> None:
    """Before any job that would score them: each dataset's label words start with distinct
    tokens under each grid model's tokenizer. ``tokenizer_dir_of(model)`` is where the model's
    tokenizer is once materialised; models not materialised yet are checked by their base-model
    job instead (spectral_edit.models.materialise_base_model's caller)."""
    from pathlib import Path

    for model in config["grid"]["models"]:
        directory = Path(tokenizer_dir_of(model))
        if not (directory / "tokenizer_config.json").is_file():
            continue
        from transformers import AutoTokenizer

        check_label_words_with(AutoTokenizer.from_pretrained(directory), config, model)


def check_label_words_with(tokenizer, config: Mapping, model: str) -> None:
    """The check of :func:`check_label_words` with one model's tokenizer, over the grid's
    datasets and their held-out benchmarks."""
    grid = config["grid"]
    datasets = dict.fromkeys(
        [*grid["datasets"], *(b for d in grid["datasets"] for b in (config["datasets"][d].get("heldout") or []))]
    )
    for name in datasets:
        spec = config["datasets"][name]
        try:
            PromptFormatter(tokenizer, spec.get("eval_prompt", spec["prompt"]), spec["label_words"])
        except ConfigError as error:
            raise ConfigError(f"config: datasets.{name}.label_words with the tokenizer of model {model!r}: {error}") from None
