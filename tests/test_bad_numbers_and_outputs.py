"""What a new user met (issue 13, item 5): a diverged fine-tune stops with a line naming the
step or tensor, no metric comes from NaN scores, a variant cannot take a built-in method's name,
and outputs get the permissions the umask gives."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY_DATASET, TINY_HYPER
from spectral_edit.atomic import write_json
from spectral_edit.data import read_meta, read_split
from spectral_edit.data.prompts import formatter_for
from spectral_edit.edit.svd import compute_svd_cache
from spectral_edit.errors import ConfigError
from spectral_edit.evaluate.scoring import evaluate_model
from spectral_edit.models import load_model, load_tokenizer
from spectral_edit.plan.config import resolve_method
from spectral_edit.train.finetune import finetune


def test_a_diverging_fine_tune_stops_at_the_step_that_diverged(tmp_path, tiny_base_dir, tiny_data_dir):
    with pytest.raises(FloatingPointError, match=r"fine-tune diverged: training loss is (nan|inf) at step \d+"):
        finetune(
            tiny_base_dir,
            tiny_data_dir / "train.jsonl",
            tmp_path / "ft",
            TINY_DATASET,
            {**TINY_HYPER, "learning_rate": 1.0e30},
            seed=0,
            progress=False,
        )
    assert not (tmp_path / "ft" / "model.safetensors").exists()


def test_non_finite_weights_stop_the_svd_naming_the_tensor(tmp_path, tiny_base_dir):
    weights = load_file(tiny_base_dir / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][3, 5] = float("nan")
    save_file(weights, tmp_path / "nan.safetensors")
    with pytest.raises(FloatingPointError, match=r"nan.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' has non-finite"):
        compute_svd_cache(tiny_base_dir / "model.safetensors", tmp_path / "nan.safetensors", tmp_path / "svd", progress=False)
    assert not (tmp_path / "svd" / "factors.safetensors").exists()


def test_no_metric_from_nan_scores(tiny_base_dir, tiny_data_dir):
    model = load_model(tiny_base_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    formatter = formatter_for(load_tokenizer(tiny_base_dir), TINY_DATASET)
    with pytest.raises(FloatingPointError, match=r"non-finite label log-probabilities for example 'eval-\d+'"):
        evaluate_model(
            model, formatter, read_split(tiny_data_dir / "eval.jsonl"), read_meta(tiny_data_dir / "meta.json"), 4, False
        )


def test_a_variant_may_not_take_a_built_in_methods_name():
    config = {"method_variants": {"top_k": {"method": "bottom_k"}}}
    with pytest.raises(
        ConfigError, match="method_variants.top_k: a variant may not take the name of the built-in method 'top_k'"
    ):
        resolve_method(config, "top_k")
    # New parameters for a built-in under its own name stay allowed.
    method, params = resolve_method({"method_variants": {"random_k": {"method": "random_k", "seed_offset": 3}}}, "random_k")
    assert method.name == "random_k" and params["seed_offset"] == 3


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_get_the_permissions_the_umask_gives(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        write_json(tmp_path / "out.json", {"a": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == mode
