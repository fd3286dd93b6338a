"""A cell's edit is one record that survives the trip to the evaluation server as JSON, and an
evaluation job is built by the kind of cell its rule names, a wrong kind stopping it at once."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from snakemake.iocontainers import InputFiles, Params, Wildcards

from spectral_edit.edit.record import SHOWN, EditSpec, as_edit_spec
from spectral_edit.evaluate.client import encode_request
from spectral_edit.evaluate.request import CELL_KINDS, cell_job
from spectral_edit.evaluate.server import decode_request

EDIT = EditSpec(
    method="dg_hard",
    params={"calibration_size": 64, "noise_sigma": None, "nested": {"a": [1, 2.5]}},
    retention=0.05,
    seed=2,
    unedited_params="base",
    factors="results/svd/factors.safetensors",
    finetuned_weights="results/finetune/model.safetensors",
    sensitivities="results/sensitivities/ncal64.safetensors",
)


BASE_WEIGHTS = "results/models/m/model.safetensors"


@pytest.mark.parametrize("edit", [EDIT, dataclasses.replace(EDIT, retention=None, sensitivities=None, base_weights=BASE_WEIGHTS)])
def test_the_record_survives_json_unchanged(edit):
    text = json.dumps(edit.to_json())
    assert EditSpec.from_json(json.loads(text)) == edit
    assert list(json.loads(text)) == [f.name for f in dataclasses.fields(EditSpec)]


def test_a_request_crosses_the_socket_with_its_edit_as_the_record():
    request = {"cell": {"model": "m"}, "batch_size": 4, "edit": EDIT}
    sent = json.loads(json.dumps(encode_request(request)))
    assert decode_request(sent) == request
    assert decode_request({"cell": {}, "weights": "w"}) == {"cell": {}, "weights": "w"}


def test_a_cell_shows_the_edit_without_its_files():
    assert list(EDIT.shown()) == list(SHOWN) == ["method", "params", "retention", "seed", "unedited_params"]


def test_the_record_keeps_its_own_params_and_reads_a_callers_dict():
    params = {"policy": {"k": 1}}
    edit = dataclasses.replace(EDIT, params=params)
    params["policy"]["k"] = 2
    assert edit.params == {"policy": {"k": 1}}
    legacy = {"factors": "f", "finetuned_weights": "w", "method": "top_k", "retention": 0.5}
    assert as_edit_spec(legacy) == EditSpec(method="top_k", retention=0.5, factors="f", finetuned_weights="w")
    assert as_edit_spec(EDIT) is EDIT


@pytest.mark.parametrize(
    "data, message",
    [
        ({**EDIT.to_json(), "finetuned": "x"}, r"unknown field\(s\) \['finetuned'\]"),
        ({k: v for k, v in EDIT.to_json().items() if k != "factors"}, r"missing field\(s\) \['factors'\]"),
        ({**EDIT.to_json(), "unedited_params": "finetune"}, "unedited_params must be one of"),
        ({**EDIT.to_json(), "retention": "0.5"}, "retention must be a number or None"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_a_malformed_record_is_refused_with_the_field_named(data, message):
    with pytest.raises(ValueError, match=message):
        EditSpec.from_json(data)


EDIT_WILDCARDS = {"model": "m", "dataset": "d", "seed": "2", "finetune": "full", "method": "dg-hard", "retention": "0.05"}
FILES = {
    "base_weights": "results/models/m/model.safetensors",
    "factors": "results/svd/factors.safetensors",
    "finetuned_weights": "results/finetune/model.safetensors",
    "sensitivities": "results/sensitivities/ncal64.safetensors",
    "model_weights": "results/finetune/model.safetensors",
    "eval": "results/data/d/eval.jsonl",
    "meta": "results/data/d/meta.json",
}
PARAMS = {
    "method": {"name": "dg_hard", "params": EDIT.params, "code": "digest"},
    "unedited_params": "base",
    "prompt": {"prompt": "{text}"},
    "batch_size": 4,
}


def _job(kind, wildcards, files=FILES, params=PARAMS):
    return cell_job(kind, Wildcards(fromdict=wildcards), InputFiles(fromdict=files), Params(fromdict=params))


def test_an_edited_cell_builds_the_record_from_its_rule():
    job = _job("edit", EDIT_WILDCARDS)
    assert job.request["edit"] == EDIT
    assert job.cell == {
        "model": "m",
        "dataset": "d",
        "benchmark": None,
        "seed": 2,
        "finetune": "full",
        "method": "dg-hard",
        "retention": 0.05,
    }
    assert job.model_dir == job.server_model_dir == "results/models/m" and job.checkpoint == FILES["finetuned_weights"]
    assert job.servable and job.in_process_request()["eval_path"] == FILES["eval"]


def test_the_references_dispatch_on_their_kind():
    finetuned = _job("finetuned", {"model": "m", "dataset": "d", "seed": "2", "finetune": "full", "benchmark": "b"})
    assert finetuned.cell["method"] == "finetuned" and finetuned.cell["benchmark"] == "b"
    assert finetuned.request["weights"] == finetuned.checkpoint == FILES["model_weights"]
    assert "weights" not in finetuned.in_process_request() and finetuned.model_dir == "results/finetune"
    assert finetuned.server_model_dir == "results/models/m"
    base = _job("base", {"model": "m", "dataset": "d"}, params={**PARAMS, "benchmark": {"task": "x"}})
    assert list(base.cell) == ["model", "dataset", "benchmark", "seed", "finetune", "method", "retention"]
    assert base.cell["method"] == "base" and base.cell["seed"] is base.cell["retention"] is None
    assert not base.servable and base.request["benchmark"] == {"task": "x"} and "eval_path" not in base.request


@pytest.mark.parametrize("kind", ["edited", None, "Base"])
def test_a_wrong_kind_stops_the_job_naming_the_kinds(kind):
    with pytest.raises(ValueError, match=rf"params.kind is {kind!r}, not one of {list(CELL_KINDS)!r}".replace("[", r"\[")):
        _job(kind, EDIT_WILDCARDS)


def test_a_served_cell_builds_its_request_without_torch():
    code = "import sys, spectral_edit.evaluate.request, spectral_edit.evaluate.client; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_kind_its_rules_wildcards_do_not_fit_is_an_error():
    with pytest.raises(ValueError, match=r"'edit' cell needs the wildcards .* its rule has \['model', 'dataset'\]"):
        _job("edit", {"model": "m", "dataset": "d"})
