"""Take a cell out of the workflow: its edited model as a Hugging Face model directory, and its
edited update as an exact PEFT LoRA adapter on the base model.

An edit keeps, per decomposed matrix, the components with s'_i != 0 of dW = W_ft - W_base:
    W~ = W_base + sum_i s'_i u_i v_i^T = W_base + B A,  B = U_k diag(s'_k) (m x k), A = V_k^T (k x n)
(``rebuild.low_rank_factors``). A top-k edit is therefore a LoRA adapter of rank k per matrix,
exactly: ``rank_pattern`` gives each module its k, ``alpha_pattern`` its alpha = k so that
PEFT's scaling alpha / r is 1, and B, A are the factors themselves. An embedding matrix
(vocab x d) goes into PEFT's embedding LoRA, whose update is (lora_embedding_B
lora_embedding_A)^T, so there A_peft = B^T and B_peft = A^T; a tied output head gets the same
factors through PEFT's ``ensure_weight_tying``. The tensors that are not decomposed but differ
from the base (norms, with ``edit.unedited_params: finetuned``) go into ``modules_to_save``,
which PEFT stores whole. What PEFT cannot hold exactly (a changed bias of a module that also
carries a LoRA update, a decomposed matrix of a module type PEFT's LoRA does not wrap) stops
the export with a line naming the tensor, rather than writing an adapter that is not the cell.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spectral_edit.atomic import atomic_directory
from spectral_edit.edit.apply import apply_spectral_edit, edit_arguments, iter_matrix_edits
from spectral_edit.edit.record import EditSpec, as_edit_spec
from spectral_edit.edit.svd_cache import cached_names
from spectral_edit.errors import ConfigError, ExportError
from spectral_edit.models import load_model, load_tokenizer
from spectral_edit.runtime import DTYPES
from spectral_edit.safetensors_stream import open_safetensors

log = logging.getLogger(__name__)


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"config: export.dtype: {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


@torch.no_grad()
def export_model(
    base_dir: str | Path,
    edit: EditSpec | Mapping,
    out_dir: str | Path,
    *,
    dtype: str = "float32",
    max_shard_size: str | int = "5GB",
    card: str = "",
) -> dict:
    """Write the cell's edited model as a Hugging Face model directory; returns the edit statistics.

    The directory holds the config, generation config, tokenizer (with its chat template),
    safetensors weights in ``dtype`` (sharded with an index above ``max_shard_size``) and
    ``card`` as README.md. It appears complete or not at all.
    """
    target = torch_dtype(dtype)
    model = load_model(base_dir)
    tokenizer = load_tokenizer(base_dir)
    edit = as_edit_spec(edit)
    stats = apply_spectral_edit(model, unedited_params=edit.unedited_params, **edit_arguments(edit))
    model.to(target)
    with atomic_directory(out_dir) as scratch:
        model.save_pretrained(scratch, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(scratch)
        (scratch / "README.md").write_text(card)
    log.info("exported the edited model (%s) to %s", dtype, out_dir)
    return stats


@dataclass
class AdapterPlan:
    """What goes into an adapter: LoRA factors per module, whole modules, and tying."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # module -> (B, A)
    whole: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # module -> {param: value}
    zero_update: list[str] = field(default_factory=list)  # decomposed modules whose edit keeps nothing
    tie_embeddings: bool = False

    def ranks(self) -> dict[str, int]:
        return {module: int(b.shape[1]) for module, (b, _) in self.factors.items()}

    def tensor_bytes(self) -> int:
        lora = sum(b.numel() + a.numel() for b, a in self.factors.values())
        whole = sum(t.numel() for params in self.whole.values() for t in params.values())
        return 4 * (lora + whole)


def _owner(name: str) -> tuple[str, str]:
    module, _, param = name.rpartition(".")
    return module, param


def _tied_embedding_module(model: torch.nn.Module) -> str | None:
    """The input-embedding module's name when the output head shares its weight, else None."""
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if inputs is None or outputs is None or inputs.weight is not outputs.weight:
        return None
    return next(name for name, module in model.named_modules() if module is inputs)


@torch.no_grad()
def plan_adapter(model: torch.nn.Module, edit: EditSpec | Mapping) -> AdapterPlan:
    """The adapter of an edit on ``model`` (the base model), or an ExportError naming what
    PEFT cannot hold."""
    edit = as_edit_spec(edit)
    plan = AdapterPlan()
    modules = dict(model.named_modules())
    state = model.state_dict()
    for matrix in iter_matrix_edits(state=state, **edit_arguments(edit)):
        module, param = _owner(matrix.name)
        kind = type(modules.get(module)).__name__
        if param != "weight" or not isinstance(modules.get(module), (torch.nn.Linear, torch.nn.Embedding)):
            raise ExportError(
                f"cannot export {matrix.name!r} as a LoRA adapter: PEFT's LoRA wraps the weight of a Linear or "
                f"Embedding module, and this is {param!r} of a {kind}; export the cell as a model instead"
            )
        b, a = matrix.low_rank_factors()
        if b.shape[1] == 0:
            plan.zero_update.append(module)
        else:
            plan.factors[module] = (b, a)
    # Tensors that are not decomposed and that the edit gives their fine-tuned values.
    if edit.unedited_params == "finetuned":
        passthrough = cached_names(edit.factors)[1]
        with open_safetensors(edit.finetuned_weights) as finetuned:
            for name in passthrough:
                value = finetuned.get_tensor(name)
                if torch.equal(value.to(state[name].dtype), state[name]):
                    continue
                module, param = _owner(name)
                if module in plan.factors:
                    raise ExportError(
                        f"cannot export the adapter exactly: {name!r} differs from the base model, but its module "
                        f"{module!r} carries a LoRA update, and PEFT cannot also keep the module whole; "
                        "export the cell as a model, or set edit.unedited_params: base"
                    )
                plan.whole.setdefault(module, {})[param] = value
    tied = _tied_embedding_module(model)
    plan.tie_embeddings = tied is not None and (tied in plan.factors or tied in plan.whole)
    if plan.tie_embeddings and tied in plan.whole and set(plan.whole[tied]) != {"weight"}:
        raise ExportError(f"cannot export the adapter exactly: the tied embedding {tied!r} changes beyond its weight")
    return plan


def lora_config(plan: AdapterPlan, base_name: str | None = None):
    """PEFT LoraConfig of a plan: per-module rank k with alpha k (scaling 1), no dropout."""
    from peft import LoraConfig

    ranks = plan.ranks()
    if not ranks:
        # PEFT needs a LoRA target (without one it would pick its default modules for the model).
        raise ExportError("cannot export an adapter: the edit keeps no component of any matrix; export the cell as a model")
    common = max(set(ranks.values()), key=list(ranks.values()).count) if ranks else 1
    return LoraConfig(
        r=common,
        lora_alpha=common,
        # Full module names: PEFT matches a target by its full name or a dotted suffix of it.
        target_modules=sorted(ranks),
        rank_pattern={module: k for module, k in ranks.items() if k != common},
        alpha_pattern={module: k for module, k in ranks.items() if k != common},
        lora_dropout=0.0,
        bias="none",
        modules_to_save=sorted(plan.whole) or None,
        ensure_weight_tying=plan.tie_embeddings,
        base_model_name_or_path=base_name,
        task_type="CAUSAL_LM",
    )


@torch.no_grad()
def adapter_model(model: torch.nn.Module, plan: AdapterPlan):
    """``model`` (the base) wrapped by PEFT with the plan's adapter weights in place."""
    from peft import get_peft_model
    from peft.tuners.lora import Embedding as LoraEmbedding

    config = lora_config(plan, getattr(model.config, "_name_or_path", None))
    peft_model = get_peft_model(model, config)
    inner = peft_model.base_model.model
    for module_name, (b, a) in plan.factors.items():
        layer = inner.get_submodule(module_name)
        if isinstance(layer, LoraEmbedding):
            # PEFT's embedding update is (lora_embedding_B @ lora_embedding_A)^T.
            _assign(layer.lora_embedding_A["default"], b.T, module_name)
            _assign(layer.lora_embedding_B["default"], a.T, module_name)
        else:
            _assign(layer.lora_A["default"].weight, a, module_name)
            _assign(layer.lora_B["default"].weight, b, module_name)
        scaling = layer.scaling["default"]
        if scaling != 1.0:
            raise ExportError(f"PEFT set the scaling of {module_name!r} to {scaling}, not 1: the adapter would not be exact")
    for module_name, params in plan.whole.items():
        copy = inner.get_submodule(module_name).modules_to_save["default"]
        for param, value in params.items():
            _assign(getattr(copy, param), value, module_name)
    return peft_model


def _assign(parameter: torch.Tensor, value: torch.Tensor, module_name: str) -> None:
    if tuple(parameter.shape) != tuple(value.shape):
        raise ExportError(
            f"adapter factor of {module_name!r} has shape {tuple(value.shape)}, PEFT expects {tuple(parameter.shape)}"
        )
    parameter.copy_(value.to(parameter.dtype))


@torch.no_grad()
def export_adapter(
    base_dir: str | Path,
    edit: EditSpec | Mapping,
    out_dir: str | Path,
    *,
    card: str | Callable[[dict], str] = "",
    base_name: str | None = None,
) -> dict:
    """Write the cell's edited update as a PEFT LoRA adapter directory; returns what it holds.

    ``card`` is the README.md, or a function of the returned summary that writes it (the card
    states the ranks, known once the adapter is planned). ``base_name`` is what the adapter
    config names as its base model (a hub id; default the base model directory).
    """
    model = load_model(base_dir)
    plan = plan_adapter(model, edit)
    model.config._name_or_path = base_name or str(base_dir)
    peft_model = adapter_model(model, plan)
    with atomic_directory(out_dir) as scratch:
        # The base embedding is unchanged (its update is in the LoRA factors): PEFT would otherwise
        # store the whole embedding matrix beside an embedding LoRA.
        peft_model.save_pretrained(scratch, save_embedding_layers=False)
        summary = {
            "modules": len(plan.factors),
            "ranks": plan.ranks(),
            "modules_to_save": sorted(plan.whole),
            "zero_update_modules": plan.zero_update,
            "tied_embeddings": plan.tie_embeddings,
            "adapter_bytes": adapter_bytes(scratch),
        }
        # Ours, in place of PEFT's template card.
        (scratch / "README.md").write_text(card(summary) if callable(card) else card)
    log.info(
        "exported a LoRA adapter of %d modules (ranks %s..%s) and %d whole modules to %s",
        summary["modules"],
        min(summary["ranks"].values(), default=0),
        max(summary["ranks"].values(), default=0),
        len(plan.whole),
        out_dir,
    )
    return summary


def adapter_bytes(out_dir: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(out_dir).glob("*.safetensors"))


# --- the model card ------------------------------------------------------------------------
