"""The partition-conditional repair metric, the Wilcoxon comparison and runtime resolution."""

import math

import pandas as pd
import pytest
import torch
from scipy import stats

from spectral_edit.errors import ConfigError
from spectral_edit.repair import harmonic_mean, repair_scores, repair_table
from spectral_edit.runtime import resolve
from spectral_edit.stats import compare_methods


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


def test_repair_table_joins_cells_and_benchmarks():
    heldout = pd.DataFrame(
        [
            ("m", None, None, None, "base", None, "b1", 0.8),
            ("m", "t", 0, "full", "finetuned", None, "b1", 0.6),
            ("m", "t", 0, "full", "top_k", 0.5, "b1", 0.7),
        ],
        columns=["model", "dataset", "seed", "finetune", "method", "retention", "benchmark", "accuracy"],
    )
    cells = pd.DataFrame(
        [
            ("m", "t", 0, "full", "finetuned", float("nan"), 0.9),
            ("m", "t", 0, "full", "top_k", 0.5, 0.81),
        ],
        columns=["model", "dataset", "seed", "finetune", "method", "retention", "accuracy"],
    )
    table = repair_table(heldout, cells).set_index("method")
    assert table.loc["top_k", "healed"] == pytest.approx(50.0)
    assert table.loc["top_k", "task_retention"] == pytest.approx(90.0)
    assert table.loc["finetuned", "healed"] == 0.0


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
    device, dtype = resolve({})
    if torch.cuda.is_available():
        assert device.type == "cuda" and dtype == torch.bfloat16
    else:
        assert device.type == "cpu" and dtype == torch.float32
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve({"device": "cuda"})
    assert resolve({"device": "cpu", "dtype": "bfloat16"}) == (torch.device("cpu"), torch.bfloat16)
