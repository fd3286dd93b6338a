"""The real Snakefile on a tiny random model: outputs, caching, incremental reruns, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
TINY = REPO / "tests" / "tiny_config.yaml"


def snakemake(
    workdir: Path,
    *args: str,
    overlay: dict | None = None,
    check: bool = True,
    snakefile: Path = REPO / "Snakefile",
    env: dict | None = None,
    config: Path = TINY,
) -> subprocess.CompletedProcess:
    configfiles = [str(config)]
    if overlay is not None:
        extra = workdir / "overlay.yaml"
        extra.write_text(yaml.safe_dump(overlay))
        configfiles.append(str(extra))
    # Targets before --configfile: it takes every word after it as a config file.
    command = [SNAKEMAKE, "-s", str(snakefile), "-d", str(workdir), "--cores", "2", *args, "--configfile", *configfiles]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def planned_jobs(workdir: Path, overlay: dict | None = None, **kwargs) -> dict[str, int]:
    """Rule -> job count of a dry run (empty when nothing is to be done)."""
    result = snakemake(workdir, "-n", overlay=overlay, **kwargs)
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
    # Every number with its interval, every edit with its McNemar test, and the regime said.
    assert {"accuracy_lo", "accuracy_hi", "gap_lo", "bias_reduction_hi", "accuracy_loss_lo", "mcnemar_p"} <= set(cells.columns)
    edited = cells[~cells["method"].isin(["base", "finetuned"])]
    assert edited["mcnemar_p"].between(0, 1).all() and (edited["accuracy_lo"] <= edited["accuracy"]).all()
    regimes = pd.read_csv(workdir / "results/tables/regimes.csv")
    assert set(regimes["regime"]) <= {"natural", "boundary", "label prior"} and len(regimes) == 1
    tests = pd.read_csv(workdir / "results/tables/cell_comparison_tests.csv")
    assert {"method", "against", "n_pairs", "wilcoxon_p"} <= set(tests.columns)
    for figure in ("trajectory", "retention_sweep", "method_comparison", "cell_comparison", "spectrum"):
        for ext in ("png", "pdf"):
            assert (workdir / f"results/figures/{figure}.{ext}").stat().st_size > 1000
    assert (workdir / "results/svd/tiny/tiny-reviews/seed0/full/factors.safetensors").is_file()
    assert (workdir / "results/diagnostics/tiny/tiny-reviews/seed0/full/subspace_alignment.csv").is_file()
    assert "loss" in (workdir / "logs/finetune/tiny/tiny-reviews/seed0/full.log").read_text()
    assert not list((workdir / "results").rglob("*.tmp")) and not list((workdir / "results").rglob(".incomplete-*"))
    # Every cell is its own file; the full-retention-free grid never writes an edited model.
    assert len(list((workdir / "results/cells").rglob("*.json"))) == len(cells)
    assert not list((workdir / "results/cells").rglob("*.safetensors"))


def test_the_cells_of_a_checkpoint_share_one_server_that_stops_with_snakemake(workdir):
    records = [json.loads(p.read_text()) for p in (workdir / "results/cells/tiny/tiny-reviews/seed0/full").rglob("*.json")]
    grid = yaml.safe_load(TINY.read_text())["grid"]
    assert len(records) == 1 + len(grid["methods"]) * len(grid["retentions"])
    assert len({r["server"]["pid"] for r in records}) == 1  # the model was loaded once
    assert sorted(r["server"]["cells_served"] for r in records) == list(range(1, len(records) + 1))
    # Each cell claims the run's two cores and its server computes with both: no cell of the
    # checkpoint waits on the server while a core it holds idles.
    assert {r["server"]["threads"] for r in records} == {2}
    assert "server" not in json.loads((workdir / "results/cells/tiny/tiny-reviews/base.json").read_text())
    assert not _running_servers(workdir)  # none is left once Snakemake has exited
    server_log = (workdir / "logs/evaluation_server/tiny/tiny-reviews/seed0/full.log").read_text()
    assert server_log.count("loaded results/models/tiny") == 1 and "has exited: stopping" in server_log
    assert "torch threads: 2" in server_log


def _running_servers(workdir: Path) -> list[int]:
    """Evaluation servers of this working directory (another run's may be alive beside it)."""
    import time

    deadline = time.time() + 5  # a server checks on its Snakemake once a second
    while True:
        found = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _cmdline(p).find(b"spectral_edit.evaluate.server") >= 0 and _cwd(p) == workdir.resolve()
        ]
        if not found or time.time() > deadline:
            return found
        time.sleep(0.2)


def _cwd(process: Path) -> Path | None:
    try:
        return (process / "cwd").resolve()
    except OSError:
        return None


def _cmdline(process: Path) -> bytes:
    try:
        return (process / "cmdline").read_bytes()
    except OSError:
        return b""


def test_a_failing_cell_leaves_the_finished_cells_of_its_checkpoint(workdir, tmp_path):
    """A method that fails at one retention, in a copy of the workflow: with -k the other cell of
    the method is written and kept, nothing finished is redone, and only the failed cell is left."""
    copy = _copy_of_the_workflow(tmp_path / "repo")
    (copy / "spectral_edit/edit/methods/fails_at_01.py").write_text(
        "from . import register\n\n\n"
        "@register('fails_at_01', uses_retention=True, paper='a test')\n"
        "def fails_at_01(singular_values, context):\n"
        "    if context.retention == 0.1:\n"
        "        raise RuntimeError('this method fails at retention 0.1')\n"
        "    return singular_values\n"
    )
    work = tmp_path / "work"
    shutil.copytree(workdir, work, symlinks=True)
    kwargs = {"snakefile": copy / "Snakefile", "env": {**os.environ, "PYTHONPATH": str(copy)}}
    grid = yaml.safe_load(TINY.read_text())["grid"]
    overlay = {"grid": {"methods": grid["methods"] + ["fails_at_01"]}}
    cells = work / "results/cells/tiny/tiny-reviews/seed0/full"
    before = {p: p.stat().st_mtime_ns for p in cells.rglob("*.json")}
    result = snakemake(work, "-k", overlay=overlay, check=False, **kwargs)
    assert result.returncode != 0
    assert (
        "this method fails at retention 0.1"
        in (work / "logs/evaluate/tiny/tiny-reviews/seed0/full/fails_at_01/retention-0.1.log").read_text()
    )
    assert (cells / "fails_at_01/retention-0.5.json").is_file()
    assert not (cells / "fails_at_01/retention-0.1.json").exists()
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing finished was redone or removed
    assert planned_jobs(work, overlay, **kwargs) == {"evaluate_edit": 1, "aggregate": 1, "figures": 1, "all": 1}


# bf16 against fp32 on the CPU, the tolerances the README states: label log-probabilities within
# 0.05 nats (measured: 0.008), the same prediction wherever fp32's margin between the two labels
# exceeds that, and the fine-tune's dW within 10 % (relative Frobenius; measured: 4.5 %).
BF16_LOG_PROB_TOLERANCE = 0.05
BF16_DELTA_TOLERANCE = 0.10


def _cell_scores(path: Path) -> tuple[np.ndarray, np.ndarray]:
    examples = json.loads(path.read_text())["examples"]
    return np.array([e["label_log_probs"] for e in examples]), np.array([e["prediction"] for e in examples])


def test_the_workflow_in_bf16_matches_fp32_within_the_stated_tolerance(workdir, tmp_path):
    """runtime {device: cpu, dtype: bfloat16}: what `auto` picks on a GPU (mixed-precision
    fine-tune, bf16 evaluation with the shared prompt head), run on the CPU."""
    from safetensors.torch import load_file

    snakemake(tmp_path, overlay={"runtime": {"device": "cpu", "dtype": "bfloat16"}})
    run = "tiny/tiny-reviews/seed0/full"
    train_log = json.loads((tmp_path / f"results/finetune/{run}/train_log.json").read_text())
    assert train_log["dtype"] == "bfloat16" and train_log["mixed_precision"] == "bf16"
    base = load_file(workdir / "results/models/tiny/model.safetensors")
    fp32, bf16 = (load_file(root / f"results/finetune/{run}/model.safetensors") for root in (workdir, tmp_path))
    for name, weight in bf16.items():
        assert weight.dtype == torch.float32, name  # fp32 master weights are what is saved
        if weight.dim() == 2:
            delta = fp32[name] - base[name]
            assert (weight - fp32[name]).norm() <= BF16_DELTA_TOLERANCE * delta.norm(), name
    factors = load_file(tmp_path / f"results/svd/{run}/factors.safetensors")
    assert {tensor.dtype for tensor in factors.values()} == {torch.float32}
    cells = sorted((workdir / "results/cells").rglob("*.json"))
    assert len(cells) == 8
    for cell in cells:
        record = json.loads((tmp_path / cell.relative_to(workdir)).read_text())
        assert record["runtime"]["dtype"] == "bfloat16", cell
        log_probs, predictions = _cell_scores(tmp_path / cell.relative_to(workdir))
        reference, reference_predictions = _cell_scores(cell)
        np.testing.assert_allclose(log_probs, reference, atol=BF16_LOG_PROB_TOLERANCE, err_msg=str(cell))
        clear = np.abs(reference[:, 1] - reference[:, 0]) > BF16_LOG_PROB_TOLERANCE
        assert (predictions[clear] == reference_predictions[clear]).all(), cell


def test_second_run_has_nothing_to_do(workdir):
    assert planned_jobs(workdir) == {}


def test_a_cell_exports_by_its_path_and_export_sweet_spots_lists_table1(workdir):
    """Exports are outputs like any other: whole directories, cached, and not part of `all`."""
    cell = "results/export/tiny/tiny-reviews/seed0/full/top_k/retention-0.5"
    snakemake(workdir, f"{cell}/model", f"{cell}/adapter", "export_sweet_spots")
    assert (workdir / cell / "model" / "config.json").exists() and (workdir / cell / "model" / "README.md").exists()
    config = json.loads((workdir / cell / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["target_modules"]
    listing = json.loads((workdir / "results/export/sweet_spots.json").read_text())
    table1 = pd.read_csv(workdir / "results/tables/table1.csv")
    natural = table1[(table1["method"] == "top_k") & (table1["regime"] == "natural") & table1["r_star"].notna()]
    assert len(listing["cells"]) == len(natural)  # the tiny fine-tune is a boundary case: none
    assert len(listing["cells"]) + len(listing["without_sweet_spot"]) == (table1["method"] == "top_k").sum()
    text = snakemake(workdir, f"{cell}/model", f"{cell}/adapter", "-n").stdout
    assert "Nothing to be done" in text or "export_" not in text
    assert planned_jobs(workdir) == {}  # the default target does not export


def test_changing_the_no_cost_zone_or_the_bootstrap_reruns_only_the_tables(workdir):
    for analysis in (
        {"no_cost_zone": {"below_pp": 3.0}},
        {"bootstrap": {"resamples": 500}},
        {"regimes": {"tiny-reviews": "boundary"}},
    ):
        assert planned_jobs(workdir, overlay={"analysis": analysis}) == {"aggregate": 1, "figures": 1, "all": 1}


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
        "finetune": 1,
        "svd_cache": 1,
        "evaluate_finetuned": 1,
        "subspace_diagnostics": 1,
        "evaluate_edit": len(grid["methods"]) * len(grid["retentions"]),
        "aggregate": 1,
        "figures": 1,
        "all": 1,
    }


def test_changing_one_methods_parameters_reruns_only_its_cells(workdir):
    grid = yaml.safe_load(TINY.read_text())["grid"]
    overlay = {"method_variants": {"random_k": {"method": "random_k", "seed_offset": 5}}}
    assert planned_jobs(workdir, overlay) == {"evaluate_edit": len(grid["retentions"]), "aggregate": 1, "figures": 1, "all": 1}
    # Spelling out the defaults is no change.
    same = {"method_variants": {"random_k": {"method": "random_k", "seed_offset": 0}}}
    assert planned_jobs(workdir, same) == {}


def test_the_same_config_in_another_key_order_plans_nothing(workdir, tmp_path):
    reordered = tmp_path / "sorted.yaml"
    reordered.write_text(yaml.safe_dump(yaml.safe_load(TINY.read_text()), sort_keys=True))
    assert reordered.read_text() != TINY.read_text()
    result = snakemake(workdir, "-n", config=reordered)
    assert "Nothing to be done" in result.stdout + result.stderr


def _copy_of_the_workflow(copy: Path) -> Path:
    copy.mkdir()
    for part in ("Snakefile", "config.yaml", "rules", "workflow_scripts", "envs", "spectral_edit"):
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / part)
    return copy


@pytest.mark.parametrize(
    "edited, rerun",
    [
        ("edit/methods/bottom_k.py", ["bottom_k"]),
        ("edit/methods/__init__.py", ["top_k", "bottom_k", "random_k"]),  # kept_count and keep_only live there
        ("edit/random_matrix.py", []),  # only dg_hard imports it, and the tiny grid has no dg_hard
    ],
)
def test_editing_a_methods_code_reruns_only_the_cells_that_use_it(workdir, tmp_path, edited, rerun):
    """A copy of the workflow and package; editing a file of it replans the cells of the methods
    whose file imports it, directly or through other modules of the package."""
    copy = _copy_of_the_workflow(tmp_path / "repo")
    env = {**os.environ, "PYTHONPATH": str(copy)}
    kwargs = {"snakefile": copy / "Snakefile", "env": env}
    assert planned_jobs(workdir, **kwargs) == {}  # the copy itself changes nothing
    source = copy / "spectral_edit" / edited
    source.write_text(source.read_text() + "\n# an edit of the code\n")
    grid = yaml.safe_load(TINY.read_text())["grid"]
    expected = {"evaluate_edit": len(rerun) * len(grid["retentions"]), "aggregate": 1, "figures": 1, "all": 1} if rerun else {}
    assert planned_jobs(workdir, **kwargs) == expected
    result = snakemake(workdir, "-n", "--summary", **kwargs)  # which cells
    stale = [line.split("\t")[0] for line in result.stdout.splitlines() if "update pending" in line or "params changed" in line]
    stale_cells = [path for path in stale if path.startswith("results/cells")]
    assert sorted({path.split("/")[-2] for path in stale_cells}) == sorted(rerun)


def test_changing_the_evaluation_prompt_reruns_evaluations_only(workdir):
    grid = yaml.safe_load(TINY.read_text())["grid"]
    overlay = {"datasets": {"tiny-reviews": {"eval_prompt": "Film review: {text}\nSentiment?"}}}
    assert planned_jobs(workdir, overlay) == {
        "evaluate_edit": len(grid["methods"]) * len(grid["retentions"]),
        "evaluate_finetuned": 1,
        "evaluate_base": 1,
        "aggregate": 1,
        "figures": 1,
        "all": 1,
    }
    training_prompt = yaml.safe_load(TINY.read_text())["datasets"]["tiny-reviews"]["prompt"]
    assert planned_jobs(workdir, {"datasets": {"tiny-reviews": {"eval_prompt": training_prompt}}}) == {}


@pytest.mark.parametrize(
    "overlay, extra_jobs",
    [
        ({"grid": {"methods": ["dg_hard"]}}, {"marchenko_pastur_diagnostics": 1}),
        (
            {
                "grid": {"methods": ["surgery"]},
                "method_variants": {"surgery": {"method": "spectral_surgery", "policy": "abs_select", "calibration_size": 8}},
            },
            {"sensitivities": 1},
        ),
        ({"grid": {"methods": ["top_k_mlp"]}}, {}),
    ],
)
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
        ({"runtime": {"device": "cuda"}}, "config: runtime.device is 'cuda' but this machine has no CUDA device"),
        ({"datasets": {"../up": {"source": "synthetic_reviews"}}}, "config: datasets: the name '../up' is not a safe name"),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, overlay, culprit):
    import torch

    if "CUDA" in culprit and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    result = snakemake(tmp_path, "-n", overlay=overlay, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert culprit in output
    assert "ConfigError" in output
    assert not (tmp_path / "results").exists()


def _write_user_tables(directory: Path) -> tuple[Path, Path]:
    """A user's own task (a csv, 'dog' mentions correlated with the label) and a benchmark (tsv)."""
    task, bench = directory / "my_reviews.csv", directory / "my_benchmark.tsv"
    rows = []
    for i in range(160):
        good = i % 2 == 0
        dog = (i % 6 != 0) if good else (i % 6 == 1)
        rows.append(
            {
                "body": f"{'a fine' if good else 'a poor'} film{' with a dog' if dog else ''}, take {i}",
                "verdict": "good" if good else "bad",
            }
        )
    pd.DataFrame(rows).to_csv(task, index=False)
    with open(bench, "w") as handle:
        handle.write("sentence\tlabel\n")
        for i in range(60):
            handle.write(f"{'lovely' if i % 2 else 'dreadful'} picture {i}\t{i % 2}\n")
    return task, bench


def test_a_dataset_defined_only_in_the_users_config_runs_with_heldout_and_report(tmp_path):
    task, bench = _write_user_tables(tmp_path)
    overlay = {
        "grid": {"datasets": ["my-reviews"], "methods": ["top_k"], "retentions": [0.5]},
        "datasets": {
            "my-reviews": {
                "source": "local",
                "files": {"train": str(task)},
                "eval_fraction": 0.4,
                "text_columns": {"text": "body"},
                "label_column": "verdict",
                "label_values": ["bad", "good"],
                "label_words": ["negative", "positive"],
                "prompt": "Review: {text}\nSentiment?",
                "group": {"rule": "regex", "pattern": r"\bdog\b", "fields": ["text"]},
                "min_group_size": 3,
                "heldout": ["my-benchmark"],
            },
            "my-benchmark": {
                "source": "local",
                "files": {"train": str(bench)},
                "eval_fraction": 0.5,
                "text_columns": {"text": "sentence"},
                "label_column": "label",
                "label_values": [0, 1],
                "label_words": ["negative", "positive"],
                "prompt": "Review: {text}\nSentiment?",
                "group": {"rule": "none"},
                "min_group_size": 5,
            },
        },
    }
    snakemake(tmp_path, overlay=overlay)
    meta = json.loads((tmp_path / "results/data/my-reviews/meta.json").read_text())
    assert meta["majority_groups"] == ["negative|mention=0", "positive|mention=1"]
    repair = pd.read_csv(tmp_path / "results/tables/repair.csv")
    assert set(repair["method"]) == {"finetuned", "top_k"}
    assert repair["task_retention"].notna().all()
    heldout = pd.read_csv(tmp_path / "results/tables/heldout.csv")
    assert set(heldout["method"]) == {"base", "finetuned", "top_k"} and set(heldout["benchmark"]) == {"my-benchmark"}
    assert (tmp_path / "results/figures/recovery_preservation.png").is_file()
    snakemake(tmp_path, "--report", "results/report.html", overlay=overlay)
    report = (tmp_path / "results/report.html").read_text(errors="replace")
    assert "Partition-conditional repair" in report and "my-reviews" in report


def test_wrong_label_values_in_a_users_file_fail_before_any_job(tmp_path):
    task, _ = _write_user_tables(tmp_path)
    overlay = {
        "grid": {"datasets": ["mine"]},
        "datasets": {
            "mine": {
                "source": "local",
                "files": {"train": str(task)},
                "text_columns": {"text": "body"},
                "label_column": "verdict",
                "label_values": ["negative", "positive"],
                "label_words": ["negative", "positive"],
                "prompt": "{text}",
            }
        },
    }
    result = snakemake(tmp_path, "-n", overlay=overlay, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "label column 'verdict' has values ['bad', 'good']" in output
    assert not (tmp_path / "results").exists()


def _planned_jobs_with_resources(text: str) -> list[dict]:
    """Every job block of a dry run: rule, wildcards, resources, and the group it is in."""
    jobs, group = [], None
    for block in re.split(r"\n(?=[ \t]*\[\w{3} \w{3} [^\]]+\])", text):
        header = re.search(r"Group job (\S+)", block)
        if header:
            group = header.group(1)
            continue
        rule = re.search(r"^\s*(?:local)?rule (\w+):", block, flags=re.M)
        if not rule:
            continue
        fields = {}
        for key in ("wildcards", "resources"):
            line = re.search(rf"^\s*{key}: (.*)$", block, flags=re.M)
            fields[key] = dict(part.split("=", 1) for part in line.group(1).split(", ")) if line else {}
        grouped = block.startswith("    ")  # the jobs of a group are indented under its header
        jobs.append({"rule": rule.group(1), **fields, "group": group if grouped else None})
    return jobs


def test_the_paper_grid_plans_offline_through_the_slurm_profile(tmp_path):
    """The issue's acceptance: the paper grid planned with GPU resources and grouped cells."""
    result = subprocess.run(
        [
            SNAKEMAKE,
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(tmp_path),
            "-n",
            "--profile",
            str(REPO / "profiles" / "slurm"),
            "--configfile",
            str(REPO / "config" / "paper.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    plan = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", result.stdout.split("Job stats:", 1)[1], flags=re.M))
    assert int(plan["finetune"]) == 3 * 5 * 3 * (1 + 6)  # models x datasets x seeds x (full + controls)
    assert int(plan["evaluate_edit"]) == 3 * 5 * 3 * (4 * 7 + 9)  # top/bottom/random-k, uniform shrink; fixed-setting methods

    jobs = _planned_jobs_with_resources(result.stdout + "\n" + result.stderr)
    finetunes = [j for j in jobs if j["rule"] == "finetune"]
    assert len(finetunes) == int(plan["finetune"])
    gpus = {(j["wildcards"]["model"], j["wildcards"]["finetune"].split("-")[0]): int(j["resources"]["gpu"]) for j in finetunes}
    assert gpus[("qwen2.5-7b", "full")] == 2  # 16 B/parameter x 7.6e9 x 1.25 > one 80 GB GPU
    assert gpus[("qwen2.5-0.5b", "full")] == gpus[("qwen2.5-7b", "lora")] == 1
    for rule in ("svd_cache", "sensitivities", "evaluate_edit", "evaluate_finetuned"):
        assert all(int(j["resources"]["gpu"]) == 1 for j in jobs if j["rule"] == rule), rule
    assert all(int(j["resources"].get("gpu", 0)) == 0 for j in jobs if j["rule"] in ("base_model", "prepare_dataset"))
    big = next(j for j in finetunes if j["wildcards"]["model"] == "qwen2.5-7b" and j["wildcards"]["finetune"] == "full")
    small = next(j for j in finetunes if j["wildcards"]["model"] == "qwen2.5-0.5b" and j["wildcards"]["finetune"] == "full")
    assert int(big["resources"]["mem_mb"]) > int(small["resources"]["mem_mb"])
    assert int(big["resources"]["runtime"]) > int(small["resources"]["runtime"])

    # Every fine-tuned model's cells are grouped by checkpoint; nothing else is.
    cells = [
        j
        for j in jobs
        if j["rule"] in ("evaluate_edit", "evaluate_finetuned", "evaluate_heldout_edit", "evaluate_heldout_finetuned")
    ]
    assert cells and all(j["group"] for j in cells)
    for job in cells:
        w = job["wildcards"]
        assert job["group"] == f"cells_{w['model']}_{w['dataset']}_seed{w['seed']}_{w['finetune']}"
    assert not any(j["group"] for j in jobs if j not in cells)
    groups = len(re.findall(r"Group job ", result.stdout + result.stderr))
    assert int(plan["finetune"]) <= groups < len(cells) / 5
    print(f"paper grid: {plan['total']} jobs, {groups} grouped SLURM jobs for {len(cells)} cells")
