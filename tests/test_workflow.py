"""The real Snakefile on a tiny random model: outputs, caching, incremental reruns, bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = REPO / "tests" / "tiny_config.yaml"


def snakemake(workdir: Path, *args: str, overlay: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    configfiles = [str(TINY)]
    if overlay is not None:
        extra = workdir / "overlay.yaml"
        extra.write_text(yaml.safe_dump(overlay))
        configfiles.append(str(extra))
    command = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2",
               "--configfile", *configfiles, *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def planned_jobs(workdir: Path, overlay: dict | None = None) -> dict[str, int]:
    """Rule -> job count of a dry run (empty when nothing is to be done)."""
    result = snakemake(workdir, "-n", overlay=overlay)
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    return {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)\s*$", table, flags=re.M) if rule != "total"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("workflow")
    snakemake(path)
    return path


def test_full_run_writes_every_artifact(workdir):
    tiny = yaml.safe_load(TINY.read_text())
    grid = tiny["grid"]
    cells = pd.read_csv(workdir / "results/tables/cells.csv")
    assert len(cells) == 2 + len(grid["methods"]) * len(grid["retentions"])
    assert set(cells["method"]) == {"base", "finetuned", *grid["methods"]}
    table1 = pd.read_csv(workdir / "results/tables/table1.csv")
    assert set(table1["method"]) == set(grid["methods"])
    assert "Table 1" in (workdir / "results/tables/table1.md").read_text()
    for figure in ("trajectory", "retention_sweep", "method_comparison", "spectrum"):
        for ext in ("png", "pdf"):
            assert (workdir / f"results/figures/{figure}.{ext}").stat().st_size > 1000
    assert (workdir / "results/svd/tiny/tiny-reviews/seed0/full/factors.safetensors").is_file()
    assert (workdir / "results/diagnostics/tiny/tiny-reviews/seed0/full/subspace_alignment.csv").is_file()
    assert "loss" in (workdir / "logs/finetune/tiny/tiny-reviews/seed0/full.log").read_text()
    assert not list((workdir / "results").rglob("*.tmp")) and not list((workdir / "results").rglob(".incomplete-*"))
    # Every cell is its own file; the full-retention-free grid never writes an edited model.
    assert len(list((workdir / "results/cells").rglob("*.json"))) == len(cells)
    assert not list((workdir / "results/cells").rglob("*.safetensors"))


def test_second_run_has_nothing_to_do(workdir):
    assert planned_jobs(workdir) == {}


def test_adding_a_retention_plans_only_the_new_cells(workdir):
    grid = yaml.safe_load(TINY.read_text())["grid"]
    plan = planned_jobs(workdir, {"grid": {"retentions": grid["retentions"] + [0.3]}})
    assert plan == {"evaluate_edit": len(grid["methods"]), "aggregate": 1, "figures": 1, "all": 1}


def test_adding_a_method_plans_only_its_cells(workdir):
    grid = yaml.safe_load(TINY.read_text())["grid"]
    overlay = {
        "grid": {"methods": grid["methods"] + ["random_k_b"]},
        "method_variants": {"random_k_b": {"method": "random_k", "seed_offset": 1}},
    }
    assert planned_jobs(workdir, overlay) == {"evaluate_edit": len(grid["retentions"]), "aggregate": 1, "figures": 1, "all": 1}


def test_changing_a_finetune_hyperparameter_reruns_it_and_its_dependants(workdir):
    grid = yaml.safe_load(TINY.read_text())["grid"]
    plan = planned_jobs(workdir, {"finetune": {"learning_rate": 1.0e-3}})
    assert plan == {
        "finetune": 1, "svd_cache": 1, "evaluate_finetuned": 1, "subspace_diagnostics": 1,
        "evaluate_edit": len(grid["methods"]) * len(grid["retentions"]),
        "aggregate": 1, "figures": 1, "all": 1,
    }


@pytest.mark.parametrize("overlay, extra_jobs", [
    ({"grid": {"methods": ["dg_hard"]}}, {"marchenko_pastur_diagnostics": 1}),
    ({"grid": {"methods": ["surgery"]},
      "method_variants": {"surgery": {"method": "spectral_surgery", "policy": "abs_select", "calibration_size": 8}}},
     {"sensitivities": 1}),
    ({"grid": {"methods": ["top_k_mlp"]}}, {}),
])
def test_adding_a_method_without_retention_plans_one_cell(workdir, overlay, extra_jobs):
    grid = yaml.safe_load(TINY.read_text())["grid"]
    overlay = {**overlay, "grid": {"methods": grid["methods"] + overlay["grid"]["methods"]}}
    assert planned_jobs(workdir, overlay) == {"evaluate_edit": 1, **extra_jobs, "aggregate": 1, "figures": 1, "all": 1}


def test_adding_a_lora_control_plans_its_fine_tune_and_reference_cell_only(workdir):
    overlay = {"grid": {"controls": ["lora-r4"]}, "finetunes": {"lora-r4": {"kind": "lora", "rank": 4}}}
    assert planned_jobs(workdir, overlay) == {"finetune": 1, "evaluate_finetuned": 1, "aggregate": 1, "figures": 1, "all": 1}


def test_every_method_runs_on_full_and_speclora_updates(tmp_path):
    """The all-methods overlay: every registered method, a LoRA control and a SpecLoRA fine-tune."""
    overlay = yaml.safe_load((REPO / "tests" / "tiny_all_methods.yaml").read_text())
    overlay["grid"]["retentions"] = [0.5]
    overlay["grid"]["controls"] = ["lora-r4"]
    snakemake(tmp_path, overlay=overlay)
    cells = pd.read_csv(tmp_path / "results/tables/cells.csv")
    edited = cells[~cells["method"].isin(["base", "finetuned"])]
    for finetune in overlay["grid"]["finetunes"]:
        assert set(edited[edited["finetune"] == finetune]["method"]) == set(overlay["grid"]["methods"])
    assert set(cells[cells["method"] == "finetuned"]["finetune"]) == {"full", "speclora-k4", "lora-r4"}
    assert cells["accuracy"].notna().all()
    for figure in ("controls_pareto", "layer_subsets", "method_comparison", "trajectory"):
        assert (tmp_path / f"results/figures/{figure}.png").stat().st_size > 1000
    for finetune in overlay["grid"]["finetunes"]:
        diagnostics = tmp_path / f"results/diagnostics/tiny/tiny-reviews/seed0/{finetune}"
        assert pd.read_csv(diagnostics / "dg_hard_ranks.csv")["rank_kept"].ge(0).all()
        assert (diagnostics / "marchenko_pastur.pdf").is_file() and (diagnostics / "subspace_alignment.png").is_file()
    dg = cells[cells["method"] == "dg_hard"]
    assert dg["retention"].isna().all()
    assert (tmp_path / "results/cells/tiny/tiny-reviews/seed0/full/dg_hard/retention-none.json").is_file()


@pytest.mark.parametrize(
    "overlay, culprit",
    [
        ({"grid": {"retentons": [0.5]}}, "grid: unknown key 'retentons'"),
        ({"grid": {"retentions": [0.5, 1.5]}}, r"grid.retentions[1]"),
        ({"grid": {"seeds": [0.5]}}, r"grid.seeds[0]"),
        ({"grid": {"methods": ["top_j"]}}, "unknown method 'top_j'"),
        ({"grid": {"models": ["gpt-9"]}}, "unknown model 'gpt-9'"),
        ({"grid": {"datasets": ["imbd"]}}, "unknown dataset 'imbd'"),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, overlay, culprit):
    result = snakemake(tmp_path, "-n", overlay=overlay, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert culprit in output
    assert "ConfigError" in output
    assert not (tmp_path / "results").exists()
