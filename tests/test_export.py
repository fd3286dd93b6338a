"""Exporting a cell: the edited model as a Hugging Face directory and the edited update as an
exact PEFT LoRA adapter. A fresh process loads each with transformers / PEFT alone and must
reproduce the cell's stored predictions exactly and its log-probabilities within tolerance."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import REPO, TINY_ARCHITECTURE, TINY_DATASET, TINY_HYPER
from spectral_edit.edit.record import EditSpec
from spectral_edit.edit.svd import compute_svd_cache, numerical_rank
from spectral_edit.errors import ExportError
from spectral_edit.evaluate.cells import evaluate_cell
from spectral_edit.export.artifacts import export_adapter, export_model, plan_adapter
from spectral_edit.export.model_card import cell_statistics, model_card
from spectral_edit.models import load_model, materialise_base_model
from spectral_edit.plan.config import DEFAULT_LORA_TARGETS

# Largest |log p| difference allowed against the cell, scored with the cell's batch size and
# thread count. The exported model holds the cell's own fp32 weights (measured: 0 difference);
# the adapter computes W_base x + B (A x) instead of (W_base + B A) x, which rounds differently
# (measured: 5e-7 on the tiny model, 2.5e-5 on SmolLM2, whose log-probabilities are O(1-10)).
MODEL_TOLERANCE = 1e-6
ADAPTER_TOLERANCE = 1e-4


def _edit(svd_dir, ft_dir, method="top_k", retention=0.5, unedited="finetuned"):
    return EditSpec(
        method=method,
        retention=retention,
        unedited_params=unedited,
        factors=svd_dir / "factors.safetensors",
        finetuned_weights=ft_dir / "model.safetensors",
    )


def _cell(model_dir, data_dir, out_path, edit=None):
    """The cell the exports must reproduce, evaluated in this process (as the workflow does)."""
    return evaluate_cell(
        model_dir=model_dir,
        eval_path=data_dir / "eval.jsonl",
        meta_path=data_dir / "meta.json",
        dataset_spec=TINY_DATASET,
        out_path=out_path,
        cell={"model": "test"},
        edit=edit,
        progress=False,
    )


def _reload(form, export_dir, base_dir, data_dir, out_json):
    """Load an export in a fresh Python process and score the evaluation split there."""
    subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "export_reload.py"),
            form,
            str(export_dir),
            str(base_dir),
            str(data_dir),
            json.dumps(TINY_DATASET),
            str(out_json),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "EXPORT_RELOAD_THREADS": str(torch.get_num_threads())},
    )
    return json.loads(out_json.read_text())


def _assert_reproduces(examples, reloaded, tolerance):
    assert [e["id"] for e in reloaded] == [e["id"] for e in examples]
    assert [e["prediction"] for e in reloaded] == [e["prediction"] for e in examples]
    worst = max(abs(a - b) for x, y in zip(examples, reloaded) for a, b in zip(x["label_log_probs"], y["label_log_probs"]))
    assert worst <= tolerance, worst


@pytest.fixture(scope="module", params=[True, False], ids=["embeddings-decomposed", "embeddings-whole"])
def tiny_export(request, tmp_path_factory, tiny_base_dir, tiny_finetuned_dir, tiny_data_dir):
    """A top-k cell of the tiny model (tied embeddings) evaluated in-process, and its exports.

    With embeddings decomposed, the embedding carries a LoRA update that the tied output head
    must share; with them excluded, the fine-tuned embedding is a whole module to save."""
    out = tmp_path_factory.mktemp("export")
    compute_svd_cache(
        tiny_base_dir / "model.safetensors",
        tiny_finetuned_dir / "model.safetensors",
        out / "svd",
        include_embeddings=request.param,
        progress=False,
    )
    edit = _edit(out / "svd", tiny_finetuned_dir)
    cell = _cell(tiny_base_dir, tiny_data_dir, out / "cell.json", edit)
    stats = export_model(tiny_base_dir, edit, out / "model", card="card")
    adapter = export_adapter(tiny_base_dir, edit, out / "adapter", card="card")
    return {"dir": out, "cell": cell, "stats": stats, "adapter": adapter, "edit": edit, "embeddings": request.param}


def test_a_fresh_process_loads_the_model_with_transformers_and_reproduces_the_cell(tiny_export, tiny_base_dir, tiny_data_dir):
    out = tiny_export["dir"]
    reloaded = _reload("model", out / "model", tiny_base_dir, tiny_data_dir, out / "model-reloaded.json")
    _assert_reproduces(tiny_export["cell"]["examples"], reloaded["examples"], MODEL_TOLERANCE)


def test_a_fresh_process_loads_the_adapter_with_peft_and_reproduces_the_cell(tiny_export, tiny_base_dir, tiny_data_dir):
    out = tiny_export["dir"]
    reloaded = _reload("adapter", out / "adapter", tiny_base_dir, tiny_data_dir, out / "adapter-reloaded.json")
    _assert_reproduces(tiny_export["cell"]["examples"], reloaded["examples"], ADAPTER_TOLERANCE)
    adapter = tiny_export["adapter"]
    assert adapter["tied_embeddings"]  # the tiny model ties its output head to the embedding
    if tiny_export["embeddings"]:
        # The tied head gets the embedding's update through PEFT's weight tying.
        assert "model.embed_tokens" in adapter["ranks"] and reloaded["loaded"]["lm_head_has_lora"]
    else:
        assert "model.embed_tokens" in adapter["modules_to_save"] and "model.embed_tokens" not in adapter["ranks"]
    assert reloaded["loaded"]["lora_modules"] >= len(adapter["ranks"])


def test_the_adapter_has_one_rank_per_module_the_components_the_edit_keeps(tiny_export):
    """Rank = kept components (k = ceil(rho r)), alpha = rank, and B A = the cell's update."""
    per_matrix = {r["name"].rsplit(".", 1)[0]: r["kept_components"] for r in tiny_export["cell"]["edit"]["per_matrix"]}
    assert tiny_export["adapter"]["ranks"] == {module: k for module, k in per_matrix.items() if k}
    config = json.loads((tiny_export["dir"] / "adapter" / "adapter_config.json").read_text())
    for module, k in tiny_export["adapter"]["ranks"].items():
        assert config["rank_pattern"].get(module, config["r"]) == k
        assert config["alpha_pattern"].get(module, config["lora_alpha"]) == k  # scaling alpha / r = 1
    assert config["lora_dropout"] == 0.0 and config["ensure_weight_tying"] is True


def test_the_adapters_factors_multiply_to_the_edited_update(tiny_export, tiny_base_dir, tiny_finetuned_dir):
    model = load_model(tiny_base_dir)
    plan = plan_adapter(model, tiny_export["edit"])
    exported = load_file(tiny_export["dir"] / "model" / "model.safetensors")
    base = load_file(tiny_base_dir / "model.safetensors")
    for module, (b, a) in plan.factors.items():
        name = module + ".weight"
        torch.testing.assert_close(b @ a, exported[name] - base[name], rtol=0, atol=1e-5)
    for module, params in plan.whole.items():
        for param, value in params.items():
            assert torch.equal(value, exported[f"{module}.{param}"])


def test_the_model_directory_is_a_standard_hugging_face_model(tiny_export):
    model_dir = tiny_export["dir"] / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    } <= names
    assert "chat_template.jinja" in names or "chat_template" in (model_dir / "tokenizer_config.json").read_text()
    assert not [n for n in model_dir.parent.iterdir() if "incomplete" in n.name]  # nothing half-written left
    umask = os.umask(0o022)
    os.umask(umask)
    assert {oct(p.stat().st_mode & 0o777) for p in model_dir.iterdir()} == {oct(0o666 & ~umask)}  # not 0600


def test_a_bfloat16_export_in_small_shards_loads_with_its_index(tmp_path, tiny_export, tiny_base_dir):
    from transformers import AutoModelForCausalLM

    export_model(tiny_base_dir, tiny_export["edit"], tmp_path / "model", dtype="bfloat16", max_shard_size="20KB")
    shards = sorted(p.name for p in (tmp_path / "model").glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model" / "model.safetensors.index.json").exists()
    with safe_open(str(tmp_path / "model" / shards[0]), framework="pt") as handle:
        assert all(handle.get_slice(k).get_dtype() == "BF16" for k in handle.keys())
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    reference = load_file(tiny_export["dir"] / "model" / "model.safetensors")
    for name, value in loaded.state_dict().items():
        if name in reference:
            torch.testing.assert_close(value.float(), reference[name].to(torch.bfloat16).float(), rtol=0, atol=0)


def test_an_unknown_dtype_is_refused_by_name(tmp_path, tiny_export, tiny_base_dir):
    with pytest.raises(ValueError, match="export.dtype: 'fp8'"):
        export_model(tiny_base_dir, tiny_export["edit"], tmp_path / "model", dtype="fp8")
    assert not (tmp_path / "model").exists()


def test_the_model_card_states_the_edit_and_metrics_with_intervals(tiny_export, tiny_data_dir):
    cell = {
        **tiny_export["cell"],
        "cell": {"model": "tiny", "dataset": "tiny-reviews", "seed": 0, "finetune": "full", "method": "top_k", "retention": 0.5},
    }
    meta = json.loads((tiny_data_dir / "meta.json").read_text())
    # The cell against itself as fine-tuned model: accuracy loss 0 exactly, interval [0, 0].
    statistics = cell_statistics(cell, cell, cell, meta, {"resamples": 200, "seed": 0, "level": 0.95})
    loss = statistics["statistics"]["accuracy_loss"]
    assert loss["value"] == 0 and loss["interval"] == (0.0, 0.0)
    accuracy = statistics["statistics"]["accuracy"]
    assert accuracy["interval"][0] <= accuracy["value"] <= accuracy["interval"][1]
    card = model_card(
        form="adapter",
        cell=cell,
        statistics=statistics,
        edit_summary={**tiny_export["cell"]["edit"], **tiny_export["adapter"]},
        provenance={"commit": "abc123", "base_model": "tiny", "config": {"edit": {"unedited_params": "finetuned"}}},
    )
    assert "library_name: peft" in card and "retention 50 %" in card and "abc123" in card
    assert f"| accuracy | {100 * accuracy['value']:.1f} % | [{100 * accuracy['interval'][0]:.1f}," in card
    assert "unedited_params: finetuned" in card


def test_a_lora_recipe_checkpoint_round_trips(tmp_path, tiny_base_dir, tiny_data_dir):
    """A LoRA fine-tune (rank 4) exported at full retention: an adapter on exactly the LoRA's
    target modules, each update of rank 4 above the rounding floor, reproducing the fine-tuned model."""
    from spectral_edit.train.finetune import finetune

    recipe = {"kind": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": list(DEFAULT_LORA_TARGETS)}
    finetune(
        tiny_base_dir, tiny_data_dir / "train.jsonl", tmp_path / "ft", TINY_DATASET, TINY_HYPER, 0, progress=False, recipe=recipe
    )
    compute_svd_cache(
        tiny_base_dir / "model.safetensors", tmp_path / "ft" / "model.safetensors", tmp_path / "svd", progress=False
    )
    finetuned = _cell(tmp_path / "ft", tiny_data_dir, tmp_path / "ft.json")
    edit = _edit(tmp_path / "svd", tmp_path / "ft", retention=1.0)
    summary = export_adapter(tiny_base_dir, edit, tmp_path / "adapter")
    assert {m.rsplit(".", 1)[-1] for m in summary["ranks"]} == set(DEFAULT_LORA_TARGETS)
    assert summary["modules_to_save"] == []  # LoRA trains the projections only
    plan = plan_adapter(load_model(tiny_base_dir), edit)
    base = load_file(tiny_base_dir / "model.safetensors")
    ft = load_file(tmp_path / "ft" / "model.safetensors")
    for module, (b, a) in plan.factors.items():
        name = module + ".weight"
        update = (b @ a).double()
        assert numerical_rank(torch.linalg.svdvals(update), base[name], ft[name]) == 4
        torch.testing.assert_close(b @ a, ft[name] - base[name], rtol=0, atol=1e-6)
    reloaded = _reload("adapter", tmp_path / "adapter", tiny_base_dir, tiny_data_dir, tmp_path / "reloaded.json")
    _assert_reproduces(finetuned["examples"], reloaded["examples"], ADAPTER_TOLERANCE)


def test_a_changed_bias_under_a_lora_module_is_refused_by_name(tmp_path):
    """PEFT cannot keep a module whole and give it a LoRA update: an attention bias that the
    fine-tune changed stops the adapter export (the model export still works)."""
    materialise_base_model(
        {"source": "random", "architecture": {**TINY_ARCHITECTURE, "attention_bias": True}, "init_seed": 0}, tmp_path / "base"
    )
    weights = load_file(tmp_path / "base" / "model.safetensors")
    generator = torch.Generator().manual_seed(0)
    finetuned = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in weights.items()}
    (tmp_path / "ft").mkdir()
    save_file(finetuned, tmp_path / "ft" / "model.safetensors", metadata={"format": "pt"})
    compute_svd_cache(
        tmp_path / "base" / "model.safetensors", tmp_path / "ft" / "model.safetensors", tmp_path / "svd", progress=False
    )
    edit = _edit(tmp_path / "svd", tmp_path / "ft")
    with pytest.raises(ExportError, match=r"'model\.layers\.0\.self_attn\.[qkvo]_proj\.bias' differs from the base model"):
        export_adapter(tmp_path / "base", edit, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    # With the undecomposed tensors kept at their base values there is nothing PEFT cannot hold.
    summary = export_adapter(tmp_path / "base", dataclasses.replace(edit, unedited_params="base"), tmp_path / "adapter")
    assert summary["modules_to_save"] == [] and summary["modules"] > 0


def test_smollm2s_real_update_exports_as_a_model_and_an_adapter_that_reproduce_the_cell(
    tmp_path, smollm2_dir, smollm2_update, tiny_data_dir
):
    """SmolLM2-135M (tied embeddings, 211 matrices) after two SFT steps, top-k at 5 %."""
    finetuned_dir, factors, _ = smollm2_update
    edit = _edit(factors.parent, finetuned_dir, retention=0.05)
    cell = _cell(smollm2_dir, tiny_data_dir, tmp_path / "cell.json", edit)
    export_model(smollm2_dir, edit, tmp_path / "model")
    summary = export_adapter(smollm2_dir, edit, tmp_path / "adapter")
    assert summary["tied_embeddings"] and "model.embed_tokens" in summary["ranks"]
    # The adapter holds k (m + n) numbers per matrix, not the base embedding (PEFT would add it).
    assert summary["adapter_bytes"] < 0.2 * (tmp_path / "model" / "model.safetensors").stat().st_size
    model = _reload("model", tmp_path / "model", smollm2_dir, tiny_data_dir, tmp_path / "model.json")
    _assert_reproduces(cell["examples"], model["examples"], MODEL_TOLERANCE)
    adapter = _reload("adapter", tmp_path / "adapter", smollm2_dir, tiny_data_dir, tmp_path / "adapter.json")
    _assert_reproduces(cell["examples"], adapter["examples"], ADAPTER_TOLERANCE)


def test_the_lm_eval_task_renders_the_cells_own_prompt(tmp_path, tiny_base_dir, tiny_data_dir):
    """The task lm-eval runs on an export: its context (jinja) is the workflow's user turn for
    every example, its choices the label words, the answer right after the assistant turn."""
    import jinja2
    import yaml

    from spectral_edit.benchmarks.lm_eval_task import write_task
    from spectral_edit.data import read_split
    from spectral_edit.data.prompts import formatter_for
    from spectral_edit.models import load_tokenizer

    path = write_task(tiny_data_dir, tmp_path, TINY_DATASET["prompt"])
    task = yaml.safe_load(path.read_text())
    assert task["doc_to_choice"] == TINY_DATASET["label_words"] and task["target_delimiter"] == ""
    assert task["dataset_kwargs"]["data_files"]["test"] == str((tiny_data_dir / "eval.jsonl").resolve())
    formatter = formatter_for(load_tokenizer(tiny_base_dir), TINY_DATASET)
    template = jinja2.Template(task["doc_to_text"])
    for example in read_split(tiny_data_dir / "eval.jsonl").to_dict(orient="records"):
        user = template.render(**example)
        wrapped = formatter.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        assert wrapped == formatter.prompt_text({"text": example["text"]})


def test_an_edit_that_keeps_no_component_is_refused_as_an_adapter(tmp_path, tiny_export, tiny_base_dir):
    """Without a LoRA target PEFT would pick default modules of its own: refuse, naming the fix."""
    edit = dataclasses.replace(tiny_export["edit"], method="dg_hard", params={"scale": 1e9, "noise_sigma": None}, retention=None)
    with pytest.raises(ExportError, match="keeps no component of any matrix; export the cell as a model"):
        export_adapter(tiny_base_dir, edit, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
