"""The partition-conditional repair metric, the Wilcoxon comparison and runtime resolution."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from spectral_edit.analysis.benchmark_scores import Scores
from spectral_edit.analysis.repair import harmonic_mean, repair_scores, repair_tables
from spectral_edit.analysis.stats import compare_methods
from spectral_edit.errors import ConfigError
from spectral_edit.runtime import resolve


def test_repair_scores_by_hand():
    base = {"a": 0.80, "b": 0.50, "c": 0.70, "d": 0.60}
    finetuned = {"a": 0.60, "b": 0.70, "c": 0.705, "d": 0.40}  # a, d damaged; b improved; c neutral (0.5 pp)
    edit = {"a": 0.70, "b": 0.65, "c": 0.69, "d": 0.70}
    scores = repair_scores(edit, finetuned, base, task_edit=0.88, task_ft=0.90, tolerance_pp=1.0)
    assert scores["n_damaged"] == 2 and scores["n_improved"] == 1 and scores["n_neutral"] == 1
    # healed: a recovers (0.70-0.60)/(0.80-0.60) = 0.5; d overshoots the base: clipped to 1.
    assert scores["healed"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    # preserved: b keeps (0.65-0.50)/(0.70-0.50) = 0.75 of its gain.
    assert scores["preserved"] == pytest.approx(75.0)
    # non-damage: c at 0.69 >= min(0.70, 0.705) - 0.01 = 0.69.
    assert scores["non_damage"] == pytest.approx(100.0)
    assert scores["task_retention"] == pytest.approx(100 * 0.88 / 0.90)
    expected = 4 / (1 / 75.0 + 1 / 75.0 + 1 / 100.0 + 1 / (100 * 0.88 / 0.90))
    assert scores["hm"] == pytest.approx(expected)


def test_reference_models_score_as_defined():
    base, finetuned = {"a": 0.8, "b": 0.5}, {"a": 0.6, "b": 0.7}
    as_ft = repair_scores(finetuned, finetuned, base, 0.9, 0.9)
    assert as_ft["healed"] == 0 and as_ft["preserved"] == 100 and as_ft["hm"] == 0
    as_base = repair_scores(base, finetuned, base, 0.9, 0.9)
    assert as_base["healed"] == 100 and as_base["preserved"] == 0


def test_harmonic_mean_skips_undefined_partitions():
    assert harmonic_mean([math.nan, 50.0, 100.0]) == pytest.approx(2 / (1 / 50 + 1 / 100))
    assert math.isnan(harmonic_mean([math.nan]))
    assert harmonic_mean([0.0, 90.0]) == 0.0


def _scores(correct: list[int], prefix: str = "b1") -> Scores:
    return Scores(np.array(correct, float), tuple(f"{prefix}/{i}" for i in range(len(correct))), (len(correct),))


def test_repair_tables_join_cells_and_benchmarks_with_intervals():
    # Held-out b1: base 80/100, FT 60/100 (damaged), top-k 70/100: healed (0.7 - 0.6) / (0.8 - 0.6) = 50 %.
    cell = {"model": "m", "dataset": "t", "seed": 0, "finetune": "full", "benchmark": "b1"}
    heldout = [
        {"cell": {**cell, "dataset": None, "seed": None, "finetune": None, "method": "base", "retention": None},
         "scores": _scores([1] * 80 + [0] * 20)},
        {"cell": {**cell, "method": "finetuned", "retention": None}, "scores": _scores([1] * 60 + [0] * 40)},
        {"cell": {**cell, "method": "top_k", "retention": 0.5}, "scores": _scores([1] * 70 + [0] * 30)},
    ]  # fmt: skip
    # The task itself: FT 9/10, top-k 8/10 -> retention 88.9 %.
    task = {
        ("m", "t", 0, "full", "finetuned", None): [_scores([1] * 9 + [0], "task")],
        ("m", "t", 0, "full", "top_k", 0.5): [_scores([1] * 8 + [0, 0], "task")],
    }
    per_seed, summary = repair_tables(task, heldout, 1.0, {"n_resamples": 500, "seed": 0, "level": 0.95})
    table = summary.set_index("method")
    assert table.loc["top_k", "healed"] == pytest.approx(50.0)
    assert table.loc["top_k", "task_retention"] == pytest.approx(100 * 0.8 / 0.9)
    assert table.loc["top_k", "n_damaged"] == 1 and table.loc["finetuned", "healed"] == 0.0
    # The point scores are repair_scores' on the accuracies; the interval contains them.
    expected = repair_scores({"b1": 0.7}, {"b1": 0.6}, {"b1": 0.8}, 0.8, 0.9)
    for name in ("healed", "task_retention", "hm"):
        assert table.loc["top_k", name] == pytest.approx(expected[name])
        assert table.loc["top_k", f"{name}_lo"] <= table.loc["top_k", name] <= table.loc["top_k", f"{name}_hi"]
    # Three independent sets of 100: the healed share is far from pinned down.
    assert table.loc["top_k", "healed_hi"] - table.loc["top_k", "healed_lo"] >= 40
    assert per_seed.set_index("method").loc["top_k", "healed"] == pytest.approx(50.0)


def test_wilcoxon_against_the_strongest_baseline():
    rows = []
    top = [50, 60, 55, 70, 65, 40]
    random_k = [30, 35, 50, 20, 45, 41]
    bottom = [5, 0, 10, 2, 8, 1]
    for i in range(6):
        key = {"model": "m", "dataset": f"d{i}", "seed": 0, "finetune": "full"}
        rows += [
            {**key, "method": "top_k", "score": top[i]},
            {**key, "method": "random_k", "score": random_k[i]},
            {**key, "method": "bottom_k", "score": bottom[i]},
        ]
    table = compare_methods(pd.DataFrame(rows), headline="top_k").set_index("method")
    assert (table["baseline"] == "random_k").all()  # the best method other than the headline one
    assert table.loc["top_k", "wilcoxon_p"] == pytest.approx(stats.wilcoxon(top, random_k).pvalue)
    assert table.loc["bottom_k", "wilcoxon_p"] == pytest.approx(stats.wilcoxon(bottom, random_k).pvalue)
    assert math.isnan(table.loc["random_k", "wilcoxon_p"])
    assert table.loc["top_k", "n_pairs"] == 6


def test_runtime_defaults_to_fp32_on_cpu_and_bf16_on_gpu():
    device, dtype = resolve(None)  # the schema's defaults: auto, auto
    if torch.cuda.is_available():
        assert device.type == "cuda" and dtype == torch.bfloat16
    else:
        assert device.type == "cpu" and dtype == torch.float32
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve({"device": "cuda", "dtype": "auto"})
    assert resolve({"device": "cpu", "dtype": "bfloat16"}) == (torch.device("cpu"), torch.bfloat16)
