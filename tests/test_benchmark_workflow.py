"""The benchmark protocol through the real Snakefile: a tiny random model fine-tuned on a
generated instruction corpus, scored through lm-evaluation-harness on two local task YAMLs (one
multiple choice, one generate-until with exact match) and a label-word held-out dataset."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, TINY_ARCHITECTURE
from test_workflow import planned_jobs, snakemake

MC_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs: {data_files: {test: DATA/mc.jsonl}}
test_split: test
output_type: multiple_choice
doc_to_text: "Which is the odd one out?"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]
"""
GEN_TASK = """task: tiny_gen
dataset_path: json
dataset_kwargs: {data_files: {test: DATA/gen.jsonl, train: DATA/gen_train.jsonl}}
test_split: test
fewshot_split: train
output_type: generate_until
doc_to_text: "{{question}}"
doc_to_target: "{{answer}}"
generation_kwargs: {until: ["\\n"], max_gen_toks: 6, do_sample: false}
metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]
"""


def _write_tasks(directory: Path) -> Path:
    tasks, data = directory / "tasks", directory / "task_data"
    tasks.mkdir()
    data.mkdir()
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "red", "blue", "one", "two", "sun", "moon"]
    with open(data / "mc.jsonl", "w") as handle:
        for i in range(24):
            handle.write(json.dumps({"choices": list(rng.choice(words, 3, replace=False)), "label": i % 3}) + "\n")
    for name, count in (("gen", 16), ("gen_train", 4)):
        with open(data / f"{name}.jsonl", "w") as handle:
            for i in range(count):
                handle.write(json.dumps({"question": f"What is {i} plus 1?", "answer": str(i + 1)}) + "\n")
    (tasks / "mc.yaml").write_text(MC_TASK.replace("DATA", str(data)))
    (tasks / "gen.yaml").write_text(GEN_TASK.replace("DATA", str(data)))
    return tasks


def _config(tasks: Path) -> dict:
    return {
        "grid": {
            "models": ["tiny"],
            "datasets": ["tiny-arith"],
            "seeds": [0],
            "methods": ["top_k", "surgery_random", "surgery_grad"],
            "retentions": [0.5],
        },
        "method_variants": {
            "surgery_random": {"method": "spectral_surgery", "policy": "random_index", "calibration_size": 8},
            "surgery_grad": {"method": "spectral_surgery", "policy": "grad_direction", "calibration_size": 8},
        },
        "models": {"tiny": {"source": "random", "init_seed": 0, "architecture": TINY_ARCHITECTURE}},
        "datasets": {
            "tiny-arith": {
                "kind": "instruction",
                "source": "synthetic_arithmetic",
                "n_train": 24,
                "generator_seed": 1,
                "benchmarks": ["tiny_gen"],
                "heldout": ["tiny_mc", "tiny-reviews"],
            },
            "tiny-reviews": {
                "source": "synthetic_reviews",
                "n_train": 16,
                "n_eval_per_group": 6,
                "marker": "cinephile42 writes:",
                "prompt": "Review: {text}\nSentiment?",
                "label_words": ["negative", "positive"],
            },
        },
        "benchmarks": {
            "tiny_gen": {"include_path": str(tasks), "num_fewshot": 1, "apply_chat_template": True},
            "tiny_mc": {"include_path": str(tasks)},
        },
        "finetune": {"steps": 4, "batch_size": 8, "learning_rate": 3.0e-3, "max_length": 512},
        "analysis": {"risk_benchmarks": ["tiny_mc"]},
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("benchmark-workflow")
    tasks = _write_tasks(path)
    config = path / "benchmarks.yaml"
    config.write_text(yaml.safe_dump(_config(tasks)))
    snakemake(path, config=config)
    return path


CHECKPOINT = "results/benchmarks/tiny/tiny-arith/seed0/full"


def test_every_model_is_scored_on_every_benchmark_inside_the_server(workdir):
    edits = (("top_k", "0.5"), ("surgery_random", "none"), ("surgery_grad", "none"))
    cells = [f"{CHECKPOINT}/{m}/retention-{r}" for m, r in edits]
    paths = [workdir / f"{cell}/{b}.json" for cell in cells for b in ("tiny_gen", "tiny_mc")]
    paths += [workdir / f"{CHECKPOINT}/finetuned/{b}.json" for b in ("tiny_gen", "tiny_mc")]
    records = [json.loads(p.read_text()) for p in paths]
    for record in records:
        benchmark = record["benchmark"]
        assert benchmark["lm_eval"]["version"] == "0.4.13"
        assert all(len(h) == 64 for h in benchmark["lm_eval"]["task_hashes"].values())
        assert len(benchmark["samples"][benchmark["task"]]) == {"tiny_gen": 16, "tiny_mc": 24}[benchmark["benchmark"]]
    assert {r["benchmark"]["lm_eval"]["n_shot"]["tiny_gen"] for r in records if r["benchmark"]["task"] == "tiny_gen"} == {1}
    # One model load for the checkpoint's label-word and benchmark cells alike.
    assert len({r["server"]["pid"] for r in records}) == 1
    for base in ("tiny_gen", "tiny_mc"):
        assert "server" not in json.loads((workdir / f"results/benchmarks/tiny/base/{base}.json").read_text())
    assert not list((workdir / "results/cells").rglob("*.json"))  # an instruction task has no label-word cells


def test_tables_give_every_benchmark_score_an_interval(workdir):
    summary = pd.read_csv(workdir / "results/tables/benchmarks_summary.csv")
    # The label-word held-out dataset gets the benchmarks' rows too.
    assert set(summary["benchmark"]) == {"tiny_gen", "tiny_mc", "tiny-reviews"}
    assert set(summary.loc[summary["benchmark"] == "tiny-reviews", "role"]) == {"heldout"}
    assert set(summary["method"]) == {"base", "finetuned", "top_k", "surgery_random", "surgery_grad"}
    assert (summary["score_lo"] <= summary["score"] + 1e-12).all() and (summary["score"] <= summary["score_hi"] + 1e-12).all()
    assert summary["mcnemar_p"].between(0, 1).all()  # both benchmarks score 0/1 per sample
    ft = summary[summary["method"] == "finetuned"]
    assert (ft["diff_ft"] == 0).all() and (ft["diff_ft_lo"] == 0).all()
    table2 = (workdir / "results/tables/surgery_table2.md").read_text()
    assert "tiny_gen (exact_match,none)" in table2 and "surgery_grad" in table2
    repair = pd.read_csv(workdir / "results/tables/repair_summary.csv")
    assert set(repair["method"]) == {"finetuned", "top_k", "surgery_random", "surgery_grad"}
    assert set(repair["benchmarks"]) == {"tiny-reviews tiny_mc"}
    assert (repair[["n_damaged", "n_improved", "n_neutral"]].sum(axis=1) == 2).all()
    risk = pd.read_csv(workdir / "results/tables/surgery_reward_risk.csv")
    assert set(risk["method"]) == {"top_k", "surgery_random", "surgery_grad"} and (risk["n_risk"] == 1).all()
    for figure in ("surgery_guided_vs_random", "surgery_reward_risk", "recovery_preservation", "spectrum"):
        assert (workdir / f"results/figures/{figure}.png").stat().st_size > 1000
    assert not (workdir / "results/figures/trajectory.png").exists()


def _lm_eval_cli(model_dir: Path, task: str, shots: int, chat: bool, tasks: Path, out: Path) -> list[dict]:
    """lm-eval's own command line on a model directory; its logged samples, by doc."""
    command = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf"]
    command += ["--model_args", f"pretrained={model_dir},dtype=float32", "--device", "cpu", "--batch_size", "16"]
    command += ["--tasks", task, "--include_path", str(tasks), "--num_fewshot", str(shots), "--log_samples"]
    command += ["--output_path", str(out)] + (["--apply_chat_template"] if chat else [])
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    (path,) = out.rglob(f"samples_{task}_*.jsonl")
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: (s["doc_id"], s["filter"]))


def test_server_scores_equal_lm_evals_own_run_on_the_exported_cell(workdir, tmp_path):
    # The cell taken out by its path, as a user does, then scored by lm-eval's own command line.
    export = "results/export/tiny/tiny-arith/seed0/full/top_k/retention-0.5/model"
    snakemake(workdir, export, config=workdir / "benchmarks.yaml")
    exported = workdir / export
    card = (exported / "README.md").read_text()
    assert "## Benchmarks" in card and "| tiny_gen | exact_match,none |" in card and "## Evaluation on" not in card
    for benchmark, shots, chat in (("tiny_mc", 0, False), ("tiny_gen", 1, True)):
        ours = json.loads((workdir / f"{CHECKPOINT}/top_k/retention-0.5/{benchmark}.json").read_text())["benchmark"]
        theirs = _lm_eval_cli(exported, benchmark, shots, chat, workdir / "tasks", tmp_path / benchmark)
        mine = ours["samples"][benchmark]
        assert [s["doc_id"] for s in mine] == [s["doc_id"] for s in theirs]
        metric = ours["metric"].split(",")[0]
        assert [s[metric] for s in mine] == [float(s[metric]) for s in theirs]
        if benchmark == "tiny_gen":
            assert [s["response"] for s in mine] == [s["resps"] for s in theirs]
        else:
            mine_ll = np.array([[choice[0] for choice in s["filtered"]] for s in mine])
            their_ll = np.array([[float(choice[0]) for choice in s["filtered_resps"]] for s in theirs])
            assert np.abs(mine_ll - their_ll).max() < 1e-4


def test_a_benchmark_cell_reruns_when_its_definition_or_shots_change_and_not_otherwise(workdir):
    assert planned_jobs(workdir, config=workdir / "benchmarks.yaml") == {}
    config = yaml.safe_load((workdir / "benchmarks.yaml").read_text())
    config["benchmarks"]["tiny_gen"]["num_fewshot"] = 2
    changed = workdir / "shots.yaml"
    changed.write_text(yaml.safe_dump(config))
    assert planned_jobs(workdir, config=changed) == {
        "benchmark_edit": 3, "benchmark_finetuned": 1, "benchmark_base": 1, "aggregate": 1, "figures": 1, "all": 1,
    }  # fmt: skip
    task = workdir / "tasks/mc.yaml"
    original = task.read_text()
    try:
        task.write_text(original.replace("Which is the odd one out?", "Which one does not belong?"))
        assert planned_jobs(workdir, config=workdir / "benchmarks.yaml") == {
            "benchmark_edit": 3, "benchmark_finetuned": 1, "benchmark_base": 1, "aggregate": 1, "figures": 1, "all": 1,
        }  # fmt: skip
    finally:
        task.write_text(original)
    assert planned_jobs(workdir, config=workdir / "benchmarks.yaml") == {}


@pytest.mark.parametrize(
    "benchmarks, culprit",
    [
        ({"gsm9k": {}}, "config: benchmarks.gsm9k.task: 'gsm9k' is not a task or group of lm-eval 0.4.13"),
        ({"broken": {"include_path": "BROKEN"}}, "broken.yaml does not load"),
    ],
)
def test_an_unknown_or_broken_benchmark_stops_planning_with_one_line(tmp_path, benchmarks, culprit):
    broken = tmp_path / "broken_tasks"
    broken.mkdir()
    (broken / "broken.yaml").write_text("task: broken\n  dataset_path: [json\n")
    benchmarks = {name: {k: str(broken) if v == "BROKEN" else v for k, v in spec.items()} for name, spec in benchmarks.items()}
    overlay = {"benchmarks": benchmarks, "datasets": {"tiny-reviews": {"heldout": list(benchmarks)}}}
    result = snakemake(tmp_path, "-n", overlay=overlay, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and culprit in output and "ConfigError" in output
    assert not (tmp_path / "results").exists()


def test_the_offline_protocol_config_plans(tmp_path):
    """config/protocols-offline.yaml over config.yaml, as the README runs it."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), "-n", "-d", str(tmp_path), "--cores", "2", "--configfile",
         str(REPO / "config.yaml"), str(REPO / "config/protocols-offline.yaml")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "benchmark_edit" in result.stdout and "evaluate_heldout_edit" in result.stdout


@pytest.mark.parametrize(
    "config, counts",
    [
        # 2 models x 4 tasks: one LoRA fine-tune each, 4 policies on each task's own benchmark.
        ("surgery.yaml", {"finetune": 8, "benchmark_edit": 8 * 4, "benchmark_finetuned": 8, "benchmark_base": 2 * 4}),
        # 2 models x 3 tasks x 3 seeds, full SFT; DG-Hard, 3 methods at 2 retentions; 9 or 10 benchmarks a task.
        ("unforgetting.yaml", {"finetune": 18, "benchmark_edit": 6 * (9 + 10 + 9) * 7, "benchmark_base": 2 * 10}),
    ],
)
def test_the_paper_scale_protocol_configs_plan_offline_through_the_slurm_profile(tmp_path, config, counts):
    from test_workflow import SNAKEMAKE, _planned_jobs_with_resources

    result = subprocess.run(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "--profile", str(REPO / "profiles/slurm"),
         "--configfile", str(REPO / "config" / config)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    plan = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", result.stdout.split("Job stats:", 1)[1], flags=re.M))
    for rule, count in counts.items():
        assert int(plan[rule]) == count, rule
    jobs = _planned_jobs_with_resources(result.stdout + "\n" + result.stderr)
    cells = [j for j in jobs if j["rule"] in ("benchmark_edit", "benchmark_finetuned")]
    assert all(j["group"] == "cells_{model}_{dataset}_seed{seed}_{finetune}".format(**j["wildcards"]) for j in cells)
    assert all(int(j["resources"]["gpu"]) == 1 for j in cells)
    if config == "surgery.yaml":
        # Table 6: each task trains its own steps at its own global batch, and is given time for it.
        minutes = {j["wildcards"]["dataset"]: int(j["resources"]["runtime"]) for j in jobs if j["rule"] == "finetune"}
        assert minutes["magicoder"] > minutes["metamath"] > minutes["csqa"]
