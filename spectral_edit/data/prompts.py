"""Prompt formatting shared by fine-tuning and evaluation, so both see identical tokens.

The user turn is the dataset's prompt template filled with the example's text; the assistant
turn is the label word. Prompt and answer are tokenized separately and concatenated, so the
answer position in evaluation is exactly where training put the label word's first token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from spectral_edit.errors import ConfigError, DataError

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


class InstructionFormatter:
    """Tokens of a chat of an instruction dataset, with the loss on every assistant turn.

    Each assistant turn is the text the chat template adds for it: its content and the template's
    end-of-turn marker (SmolLM2's ``<|im_end|>``), so the model learns to stop. The chat is cut
    into pieces at the turn boundaries (the template rendered up to each turn) and each piece is
    tokenized on its own, as :class:`PromptFormatter` tokenizes prompt and answer, so a label
    mask never straddles a token. Without a chat template, or with ``chat_template: false`` in the
    dataset's config (a base model trained and scored without one, as in Spectral Surgery's
    runs), the plain format is ``<user>\n<assistant><eos>`` per turn.
    """

    def __init__(self, tokenizer, chat_template: bool = True):
        self.tokenizer = tokenizer
        self.uses_chat_template = chat_template and getattr(tokenizer, "chat_template", None) is not None
        if chat_template and not self.uses_chat_template:
            log.warning("tokenizer has no chat template: using the plain format '<user>\\n<assistant><eos>'")

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _render(self, messages: Sequence[Mapping], generation_prompt: bool) -> str:
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)
        text = ""
        for message in messages:
            text += message["content"] + ("\n" if message["role"] != "assistant" else (self.tokenizer.eos_token or ""))
        return text

    def pieces(self, messages: Sequence[Mapping]) -> list[tuple[str, bool]]:
        """The chat's text in consecutive pieces, each marked True when it is an assistant turn."""
        pieces, done = [], ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:i], generation_prompt=True)
            through = self._render(messages[: i + 1], generation_prompt=False)
            if not (before.startswith(done) and through.startswith(before)):
                raise DataError("the chat template does not render a chat as the concatenation of its turns")
            pieces += [(before[len(done) :], False), (through[len(before) :], True)]
            done = through
        if not any(is_answer for _, is_answer in pieces):
            raise DataError("an instruction example has no assistant turn")
        return pieces

    def training_features(self, messages: Sequence[Mapping], max_length: int) -> tuple[dict | None, int]:
        """(input_ids, attention_mask, labels with -100 outside assistant turns; the number of
        assistant tokens cut by ``max_length``). The prompt is never cut: a chat is cut at its end,
        and one whose first assistant turn would lose every token is None (the caller counts it)."""
        input_ids: list[int] = []
        labels: list[int] = []
        for text, is_answer in self.pieces(messages):
            ids = self._encode(text)
            input_ids += ids
            labels += ids if is_answer else [-100] * len(ids)
        answer_tokens = sum(label != -100 for label in labels)
        kept = labels[:max_length]
        cut = answer_tokens - sum(label != -100 for label in kept)
        if cut == answer_tokens:
            return None, cut
        return {"input_ids": input_ids[:max_length], "attention_mask": [1] * len(kept), "labels": kept}, cut


def formatter_for(tokenizer, spec: Mapping) -> PromptFormatter:
    """The formatter a dataset's config asks for (prompt, label_words, max_text_tokens)."""
    return PromptFormatter(tokenizer, spec["prompt"], spec["label_words"], spec.get("max_text_tokens"))


def training_features(tokenizer, spec: Mapping, frame, max_length: int) -> tuple[list[dict], dict]:
    """Tokenized training examples of a prepared split (fine-tuning and calibration share them)
    and what ``max_length`` cut from them.

    A label-word dataset puts the loss on the answer word (:class:`PromptFormatter`; an example
    too long for ``max_length`` is an error: ``max_text_tokens`` cuts texts). An instruction
    dataset (``kind: instruction``, rows with ``messages``) puts it on every assistant token;
    a chat longer than ``max_length`` is cut at its end, and one whose answer would be cut
    whole is left out; both are counted in the report (and logged), never dropped silently.
    """
    if spec.get("kind", "classification") == "instruction":
        formatter = InstructionFormatter(tokenizer, bool(spec.get("chat_template", True)))
        features, report = [], {"examples": len(frame), "truncated": 0, "dropped": 0, "answer_tokens_cut": 0}
        for messages, example_id in zip(frame["messages"], frame["id"]):
            feature, cut = formatter.training_features(messages, max_length)
            report["answer_tokens_cut"] += cut
            if feature is None:
                report["dropped"] += 1
                log.warning(
                    "example %s: its prompt fills finetune.max_length=%d, so its whole answer is cut: left out",
                    example_id,
                    max_length,
                )
                continue
            report["truncated"] += cut > 0
            features.append(feature)
        if report["truncated"] or report["dropped"]:
            log.warning(
                "finetune.max_length=%d cut %d answer tokens: %d of %d examples truncated, %d left out (no answer token left)",
                max_length,
                report["answer_tokens_cut"],
                report["truncated"],
                report["examples"],
                report["dropped"],
            )
        if not features:
            raise DataError(f"every training example is longer than finetune.max_length={max_length} before its answer")
        return features, report
    formatter = formatter_for(tokenizer, spec)
    fields = [c for c in frame.columns if c not in ("id", "label", "attribute")]
    features = [
        formatter.training_features(example, int(label), max_length, example_id=str(example_id))
        for example, label, example_id in zip(examples_of(frame, fields), frame["label"], frame["id"])
    ]
    return features, {"examples": len(frame), "truncated": 0, "dropped": 0, "answer_tokens_cut": 0}


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
        spec = config["datasets"].get(name)
        if spec is None or spec["kind"] == "instruction":
            continue  # a benchmark, or a dataset without label words
        try:
            PromptFormatter(tokenizer, spec.get("eval_prompt", spec["prompt"]), spec["label_words"])
        except ConfigError as error:
            raise ConfigError(f"config: datasets.{name}.label_words with the tokenizer of model {model!r}: {error}") from None
