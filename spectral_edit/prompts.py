"""Prompt formatting shared by fine-tuning and evaluation, so both see identical tokens.

The user turn is the dataset's prompt template filled with the example's text; the assistant
turn is the label word. Prompt and answer are tokenized separately and concatenated, so the
answer position in evaluation is exactly where training put the label word's first token.
"""

from __future__ import annotations

import logging
from typing import Sequence

from .errors import ConfigError, DataError

log = logging.getLogger(__name__)


class PromptFormatter:
    def __init__(self, tokenizer, template: str, label_words: Sequence[str]):
        self.tokenizer = tokenizer
        self.template = template
        self.label_words = list(label_words)
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

    def prompt_text(self, text: str) -> str:
        user = self.template.replace("{text}", text)
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
        return f"{user}\nAnswer:"

    def prompt_ids(self, text: str) -> list[int]:
        return self._encode(self.prompt_text(text))

    def training_features(self, text: str, label: int, max_length: int, example_id: str = "?") -> dict:
        """input_ids = prompt + answer; labels mask the prompt (-100) so loss is on the answer."""
        prompt = self.prompt_ids(text)
        answer = self.answer_ids[label]
        if len(prompt) + len(answer) > max_length:
            raise DataError(
                f"example {example_id}: {len(prompt) + len(answer)} tokens exceed finetune.max_length={max_length}"
            )
        return {
            "input_ids": prompt + answer,
            "attention_mask": [1] * (len(prompt) + len(answer)),
            "labels": [-100] * len(prompt) + answer,
        }
