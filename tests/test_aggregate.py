"""Tables on hand-made cells: derived measures, seed statistics and Table 1's sweet spot."""

import json
import math

import pandas as pd
import pytest

from spectral_edit.aggregate import build_tables, sweet_spots


def _cell(tmp_path, method, seed, retention, accuracy, gap, finetune="full"):
    record = {
        "cell": {"model": "m", "dataset": "d", "seed": seed, "method": method, "retention": retention,
                 "finetune": None if method == "base" else finetune},
        "edit": None,
        "metrics": {
            "n": 4, "accuracy": accuracy, "accuracy_majority": accuracy + gap / 2,
            "accuracy_minority": accuracy - gap / 2, "gap": gap, "worst_group_accuracy": accuracy - gap / 2,
            "group_accuracy": {"g": accuracy},
        },
    }
    path = tmp_path / f"{finetune}-{method}-{seed}-{retention}.json"
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def paths(tmp_path):
    cells = [
        ("base", None, None, 0.80, 0.02),
        ("finetuned", 0, None, 0.90, 0.40),
        ("finetuned", 1, None, 0.92, 0.20),
        # top_k: r=0.5 in zone with reduction 50% / 50%; r=0.2 bigger reduction but 5 pp loss.
        ("top_k", 0, 0.5, 0.89, 0.20), ("top_k", 1, 0.5, 0.91, 0.10),
        ("top_k", 0, 0.2, 0.85, 0.04), ("top_k", 1, 0.2, 0.87, 0.02),
        # bottom_k never in the zone.
        ("bottom_k", 0, 0.5, 0.70, 0.30), ("bottom_k", 1, 0.5, 0.70, 0.10),
    ]
    return [_cell(tmp_path, *c) for c in cells]


def test_derived_measures_use_the_same_seeds_finetuned_model(paths):
    tables = build_tables(paths, {"no_cost_pp": 2.0, "sweet_spot_method": "top_k"})
    cells = tables["cells"]
    row = cells[(cells["method"] == "top_k") & (cells["seed"] == 1) & (cells["retention"] == 0.5)].iloc[0]
    assert row["bias_reduction"] == pytest.approx(100 * (0.20 - 0.10) / 0.20)
    assert row["accuracy_loss"] == pytest.approx(100 * (0.92 - 0.91))
    assert row["normalised_gap"] == pytest.approx(0.5)
    assert row["gap_ft_to_base"] == pytest.approx((0.10 - 0.20) / (0.02 - 0.20))
    assert row["acc_ft_to_base"] == pytest.approx((0.91 - 0.92) / (0.80 - 0.92))


def test_summary_is_mean_and_std_over_seeds(paths):
    summary = build_tables(paths, {})["summary"]
    row = summary[(summary["method"] == "top_k") & (summary["retention"] == 0.2)].iloc[0]
    assert row["n_seeds"] == 2
    assert row["gap_mean"] == pytest.approx(0.03)
    assert row["gap_std"] == pytest.approx(pd.Series([0.04, 0.02]).std())
    assert row["bias_reduction_mean"] == pytest.approx((90 + 90) / 2)


def test_table1_picks_the_in_zone_maximum(paths):
    tables = build_tables(paths, {"no_cost_pp": 2.0, "sweet_spot_method": "top_k"})
    table1 = tables["table1"].set_index("method")
    assert table1.loc["top_k", "r_star"] == 0.5  # 0.2 reduces more but loses 5 pp
    assert table1.loc["top_k", "bias_reduction_mean"] == pytest.approx(50.0)
    assert math.isnan(table1.loc["bottom_k", "r_star"])
    assert "50.0 ± 0.0 (50%)" in tables["table1_md"] and "n/a" in tables["table1_md"]
    wider = sweet_spots(tables["cells"], no_cost_pp=10.0)
    assert wider.set_index("method").loc["top_k", "r_star"] == 0.2


def test_zero_finetuned_gap_gives_nan_not_infinity(tmp_path):
    paths = [_cell(tmp_path, "base", None, None, 0.5, 0.0), _cell(tmp_path, "finetuned", 0, None, 0.6, 0.0),
             _cell(tmp_path, "top_k", 0, 0.5, 0.6, 0.1)]
    cells = build_tables(paths, {})["cells"]
    assert cells["bias_reduction"].isna().sum() == 3
