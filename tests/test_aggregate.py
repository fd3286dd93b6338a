"""Tables on hand-made cells with per-example scores: derived measures, seed statistics,
intervals against a direct bootstrap, McNemar by hand, the regime rule and Table 1's zone rule."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from spectral_edit.analysis.aggregate import build_tables
from spectral_edit.analysis.intervals import (
    GroupDesign,
    bootstrap_intervals,
    mcnemar_exact,
    point_statistics,
    resolvable_difference_pp,
)
from spectral_edit.analysis.table1 import NoCostZone, sweet_spot_cells
from spectral_edit.evaluate.metrics import group_metrics
from spectral_edit.plan.records import Analysis, with_schema_defaults

MAJORITY = ["negative|marker=1", "positive|marker=0"]
MINORITY = ["negative|marker=0", "positive|marker=1"]
GROUPS = MAJORITY + MINORITY
PER_GROUP = 25
META = {"majority_groups": MAJORITY, "minority_groups": MINORITY}


def _examples(correct_per_group, shift=0):
    """PER_GROUP examples per group; the first k of group g (rotated by ``shift``) are right."""
    examples = []
    for g, group in enumerate(GROUPS):
        label = 0 if group.startswith("negative") else 1
        right = np.roll(np.arange(PER_GROUP) < correct_per_group[g], shift)
        for i in range(PER_GROUP):
            examples.append(
                {
                    "id": f"eval-{g:02d}-{i:03d}",
                    "label": label,
                    "group": group,
                    "prediction": label if right[i] else 1 - label,
                    "label_log_probs": [0.0, 0.0],
                }
            )
    return examples


def _cell(tmp_path, method, seed, retention, correct_per_group, finetune="full", shift=0, dataset="d"):
    examples = _examples(correct_per_group, shift)
    metrics = group_metrics(
        [e["label"] for e in examples], [e["prediction"] for e in examples], [e["group"] for e in examples], MAJORITY, MINORITY
    )
    record = {
        "cell": {
            "model": "m",
            "dataset": dataset,
            "seed": seed,
            "method": method,
            "retention": retention,
            "finetune": None if method == "base" else finetune,
        },
        "edit": None,
        "metrics": metrics,
        "examples": examples,
    }
    path = tmp_path / f"{dataset}-{finetune}-{method}-{seed}-{retention}.json"
    path.write_text(json.dumps(record))
    return path


# The schema's default zone: the paper's rule, accuracy loss < 2 pp.
PAPER_ZONE = NoCostZone.from_mapping(with_schema_defaults("analysis")["no_cost_zone"])


def _analysis(**given) -> Analysis:
    """The analysis settings as the workflow has them: what a test sets, the schema's defaults."""
    return Analysis.from_mapping(with_schema_defaults("analysis", given))


def _tables(paths, **analysis):
    given = {"sweet_spot_method": "top_k", "bootstrap": {"resamples": 1000}, **analysis}
    return build_tables(paths, _analysis(**given), metas={"d": META, "e": META})


@pytest.fixture
def natural(tmp_path):
    """Base 0.56 and gap 0; FT 0.84 with a gap of 0.32 (majority 25/25, minority 17/25 and 17/25)."""
    cells = [
        ("base", None, None, (14, 14, 14, 14)),
        ("finetuned", 0, None, (25, 25, 17, 17)),
        ("finetuned", 1, None, (25, 24, 18, 17)),
        # top_k: 50% changes a few minority answers to right (in zone); 20% loses 5 pp.
        ("top_k", 0, 0.5, (25, 25, 19, 19)),
        ("top_k", 1, 0.5, (25, 24, 19, 18)),
        ("top_k", 0, 0.2, (22, 22, 19, 19)),
        ("top_k", 1, 0.2, (22, 21, 19, 19)),
        # bottom_k never in the zone.
        ("bottom_k", 0, 0.5, (14, 14, 14, 14)),
        ("bottom_k", 1, 0.5, (14, 14, 14, 14)),
    ]
    return [_cell(tmp_path, *c) for c in cells]


def test_derived_measures_use_the_same_seeds_finetuned_model(natural):
    cells = _tables(natural)["cells"]
    row = cells[(cells["method"] == "top_k") & (cells["seed"] == 1) & (cells["retention"] == 0.5)].iloc[0]
    acc = lambda *k: sum(k) / 100  # noqa: E731
    gap_ft, gap = (25 + 24 - 18 - 17) / 50, (25 + 24 - 19 - 18) / 50
    assert row["bias_reduction"] == pytest.approx(100 * (gap_ft - gap) / gap_ft)
    assert row["accuracy_loss"] == pytest.approx(100 * (acc(25, 24, 18, 17) - acc(25, 24, 19, 18)))
    assert row["gap_ft_to_base"] == pytest.approx((gap - gap_ft) / (0.0 - gap_ft))
    # The point estimates of the bootstrap's statistic are the table's numbers.
    assert row["bias_reduction_lo"] <= row["bias_reduction"] <= row["bias_reduction_hi"]
    assert row["accuracy_lo"] <= row["accuracy"] <= row["accuracy_hi"]


def test_summary_is_mean_and_std_over_seeds_with_an_interval_of_the_mean(natural):
    summary = _tables(natural)["summary"]
    row = summary[(summary["method"] == "top_k") & (summary["retention"] == 0.2)].iloc[0]
    assert row["n_seeds"] == 2
    assert row["gap_mean"] == pytest.approx((0.12 + 0.10) / 2)
    assert row["gap_std"] == pytest.approx(pd.Series([0.12, 0.10]).std())
    assert row["gap_lo"] < row["gap_mean"] < row["gap_hi"]
    ft = summary[summary["method"] == "finetuned"].iloc[0]
    assert ft["ft_gain_mean"] == pytest.approx(100 * ((84 + 84) / 200 - 0.56))
    assert ft["ft_gain_lo"] > 0


def test_intervals_match_a_direct_stratified_paired_bootstrap():
    rng = np.random.default_rng(3)
    groups = np.repeat(GROUPS, 30)
    design = GroupDesign.from_examples(groups, MAJORITY, MINORITY)
    p_ft = np.where(np.isin(groups, MAJORITY), 0.95, 0.6)
    ft = (rng.random(len(groups)) < p_ft).astype(float)
    edit = ft.copy()
    flip = rng.choice(len(groups), 25, replace=False)
    edit[flip] = 1 - edit[flip]
    base = (rng.random(len(groups)) < 0.6).astype(float)
    got = bootstrap_intervals(edit[None], ft[None], base, design, n_resamples=20000, seed=1)
    # The same bootstrap written out: resample each group's examples with replacement, the
    # same draw for the edit, its FT and the base.
    draws = {"accuracy": [], "gap": [], "accuracy_loss": [], "bias_reduction": [], "worst_group_accuracy": []}
    index = [np.flatnonzero(groups == g) for g in GROUPS]
    for _ in range(20000):
        pick = np.concatenate([rng.choice(i, len(i)) for i in index])
        e, f, g = edit[pick], ft[pick], groups[pick]
        acc = lambda c, m: c[np.isin(g, m)].mean()  # noqa: E731, B023 (used within this iteration)
        gap_e, gap_f = acc(e, MAJORITY) - acc(e, MINORITY), acc(f, MAJORITY) - acc(f, MINORITY)
        draws["accuracy"].append(e.mean())
        draws["gap"].append(gap_e)
        draws["accuracy_loss"].append(100 * (f.mean() - e.mean()))
        draws["bias_reduction"].append(100 * (gap_f - gap_e) / abs(gap_f))
        draws["worst_group_accuracy"].append(min(e[g == name].mean() for name in GROUPS))
    # Monte Carlo error of a 2.5 % quantile at 20,000 draws is about a tenth of one example's step.
    step = {"accuracy": 1 / 120, "gap": 1 / 60, "accuracy_loss": 100 / 120, "bias_reduction": 8.0, "worst_group_accuracy": 1 / 30}
    for name, values in draws.items():
        low, high = np.percentile(values, [2.5, 97.5])
        assert got[name][0] == pytest.approx(low, abs=step[name]), name
        assert got[name][1] == pytest.approx(high, abs=step[name]), name


def test_an_edit_that_changes_nothing_has_a_zero_width_paired_interval():
    groups = np.repeat(GROUPS, 10)
    design = GroupDesign.from_examples(groups, MAJORITY, MINORITY)
    ft = np.tile([1.0, 0.0], 20)
    intervals = bootstrap_intervals(ft[None], ft[None], ft, design, n_resamples=500)
    assert intervals["accuracy_loss"] == (0.0, 0.0)
    assert intervals["accuracy"][0] < intervals["accuracy"][1]
    assert point_statistics(ft[None], ft[None], ft, design)["accuracy_loss"] == 0.0


def _random_scores(seed=3):
    rng = np.random.default_rng(seed)
    groups = np.repeat(GROUPS, 30)
    design = GroupDesign.from_examples(groups, MAJORITY, MINORITY)
    scores = [(rng.random(len(groups)) < p).astype(float) for p in (0.7, 0.8, 0.5)]
    return design, *scores


def test_seeds_that_do_not_differ_give_the_one_seed_interval():
    design, edit, ft, base = _random_scores()
    one = bootstrap_intervals(edit[None], ft[None], base, design, n_resamples=4000, seed=2)
    three = bootstrap_intervals(np.tile(edit, (3, 1)), np.tile(ft, (3, 1)), base, design, n_resamples=4000, seed=2)
    for name in ("accuracy", "gap", "accuracy_loss", "worst_group_accuracy", "acc_ft_to_base"):
        # The draws of examples do not depend on the seeds drawn, so no Monte Carlo error either.
        assert three[name] == pytest.approx(one[name], abs=1e-9), name


def test_examples_that_score_alike_give_the_interval_of_the_seeds_alone():
    # Every example of a seed scores the same (all right or all wrong within each group), so
    # resampling examples changes nothing; the seeds' accuracies are 0.5, 0.75 and 1.0.
    groups = np.repeat(GROUPS, 10)
    design = GroupDesign.from_examples(groups, MAJORITY, MINORITY)
    right_groups = [2, 3, 4]
    edit = np.array([np.repeat([g < k for g in range(4)], 10) for k in right_groups], float)
    ft = np.ones_like(edit)
    got = bootstrap_intervals(edit, ft, np.ones(len(groups)), design, n_resamples=4000, seed=0)
    # The seed-only bootstrap of the mean of (0.5, 0.75, 1.0): its 2.5 % and 97.5 % quantiles are
    # the means of the draws {0.5, 0.5, 0.5} and {1, 1, 1} (each has probability 1/27 > 2.5 %).
    assert got["accuracy"] == pytest.approx((0.5, 1.0))
    assert got["accuracy_loss"] == pytest.approx((0.0, 50.0))
    one_seed = bootstrap_intervals(edit[1:2], ft[1:2], np.ones(len(groups)), design, n_resamples=500)
    assert one_seed["accuracy"] == (0.75, 0.75)  # and one seed alone has no spread at all


def test_two_level_interval_is_wider_than_either_level():
    design, edit, ft, base = _random_scores()
    rng = np.random.default_rng(5)
    edits = np.array([np.where(rng.random(len(edit)) < 0.15, 1 - edit, edit) for _ in range(4)])
    both = bootstrap_intervals(edits, np.tile(ft, (4, 1)), base, design, n_resamples=4000, seed=1)
    width = lambda i: i["accuracy"][1] - i["accuracy"][0]  # noqa: E731
    examples_only = bootstrap_intervals(np.tile(edits.mean(0), (1, 1)), ft[None], base, design, n_resamples=4000, seed=1)
    assert width(both) > width(examples_only)
    assert both["accuracy"][0] <= edits.mean() <= both["accuracy"][1]


def test_mcnemar_exact_by_hand():
    # 8 examples only the edit gets right, 2 only the FT: p = 2 * P(X <= 2 | 10, 1/2) = 2 * 56 / 1024.
    edit = [True] * 8 + [False] * 2 + [True] * 5 + [False] * 3
    ft = [False] * 8 + [True] * 2 + [True] * 5 + [False] * 3
    result = mcnemar_exact(edit, ft)
    assert (result["mcnemar_b"], result["mcnemar_c"]) == (8, 2)
    assert result["mcnemar_p"] == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar_exact([True, False], [True, False])["mcnemar_p"] == 1.0
    # Six discordant examples all one way are the fewest that give p < 0.05 (2 / 64).
    assert resolvable_difference_pp(200) == pytest.approx(3.0)


def test_mcnemar_goes_into_the_cell_table(natural):
    cells = _tables(natural)["cells"]
    row = cells[(cells["method"] == "top_k") & (cells["seed"] == 0) & (cells["retention"] == 0.2)].iloc[0]
    # Against FT (25, 25, 17, 17): 3 + 3 majority examples lost, 2 + 2 minority gained.
    assert (row["mcnemar_b"], row["mcnemar_c"]) == (4, 6)
    assert row["mcnemar_p"] == pytest.approx(mcnemar_exact([True] * 4 + [False] * 6, [False] * 4 + [True] * 6)["mcnemar_p"])


def test_zone_rule():
    paper = PAPER_ZONE
    assert list(paper.contains([-30.0, 0.0, 1.99, 2.0, 5.0])) == [True, True, True, False, False]
    no_gains = NoCostZone(below_pp=2.0, from_pp=0.0)
    assert list(no_gains.contains([-0.5, 0.0, 1.0])) == [False, True, True]
    assert paper.contains_interval(-1.0, 1.5) and not paper.contains_interval(-1.0, 2.5)
    assert not no_gains.contains_interval(-1.0, 1.0)
    assert "< 2 pp" in paper.describe()


def test_table1_picks_the_in_zone_maximum_with_its_interval(natural):
    tables = _tables(natural)
    table1 = tables["table1"].set_index("method")
    assert table1.loc["top_k", "regime"] == "natural"
    assert table1.loc["top_k", "r_star"] == 0.5  # 0.2 reduces more but loses 4.5 pp
    assert (
        table1.loc["top_k", "bias_reduction_lo"]
        <= table1.loc["top_k", "bias_reduction_mean"]
        <= table1.loc["top_k", "bias_reduction_hi"]
    )
    assert math.isnan(table1.loc["bottom_k", "r_star"])
    assert "(50%)" in tables["table1_md"] and "n/a" in tables["table1_md"]
    wider = _tables(natural, no_cost_zone={"below_pp": 10.0})["table1"].set_index("method")
    assert wider.loc["top_k", "r_star"] == 0.2


def test_the_sweet_spot_cells_to_export_are_table1s_r_star_for_every_seed(natural):
    table1 = _tables(natural)["table1"]
    cells, without = sweet_spot_cells(table1, seeds=[0, 1], methods=["top_k"])
    assert cells == [
        {"model": "m", "dataset": "d", "seed": s, "finetune": "full", "method": "top_k", "retention": "0.5"} for s in (0, 1)
    ]
    assert without == []
    cells, without = sweet_spot_cells(table1, seeds=[0], methods=["top_k", "bottom_k"])
    assert len(cells) == 1 and without == ["m / d / full / bottom_k: no sweet spot (none: no retention in the no-cost zone)"]
    boundary = _tables(natural, regimes={"d": "boundary"})["table1"]
    cells, without = sweet_spot_cells(boundary, seeds=[0], methods=["top_k"])
    assert cells == [] and "boundary regime" in without[0]


def test_sweet_spot_whose_loss_interval_leaves_the_zone_is_not_resolved(natural):
    table1 = _tables(natural)["table1"].set_index("method")
    # At r* the edit gains 3 pp (loss -3 pp) with an interval reaching below -3.5 pp: inside
    # the paper's zone (no lower bound) it is resolved ...
    assert table1.loc["top_k", "accuracy_loss_mean"] == pytest.approx(-3.0)
    assert table1.loc["top_k", "accuracy_loss_lo"] < -3.5 and table1.loc["top_k", "accuracy_loss_hi"] < 2.0
    assert table1.loc["top_k", "resolved"]
    # ... but in a zone that starts at -3.5 pp its interval leaves the zone.
    strict = _tables(natural, no_cost_zone={"below_pp": 2.0, "from_pp": -3.5})
    row = strict["table1"].set_index("method").loc["top_k"]
    assert row["r_star"] == 0.5 and not row["resolved"]
    assert "(50%) †" in strict["table1_md"]


def test_over_100_percent_is_listed_not_chosen(tmp_path):
    paths = [
        _cell(tmp_path, "base", None, None, (14, 14, 14, 14)),
        _cell(tmp_path, "finetuned", 0, None, (25, 25, 15, 15)),
        _cell(tmp_path, "top_k", 0, 0.5, (22, 22, 18, 18)),  # gap 0.16: 60 %, loss 0 pp
        _cell(tmp_path, "top_k", 0, 0.2, (19, 19, 21, 21)),  # gap -0.08: 120 %, loss 0 pp
    ]
    row = _tables(paths)["table1"].set_index("method").loc["top_k"]
    assert row["r_star"] == 0.5 and row["bias_reduction_mean"] == pytest.approx(60.0)
    assert row["over_correction"] == "20%"


def test_a_method_that_widens_the_gap_in_the_zone_has_no_sweet_spot(tmp_path):
    paths = [
        _cell(tmp_path, "base", None, None, (14, 14, 14, 14)),
        _cell(tmp_path, "finetuned", 0, None, (25, 25, 15, 15)),  # gap 0.40
        _cell(tmp_path, "top_k", 0, 0.5, (22, 22, 18, 18)),  # gap 0.16: 60 %, loss 0 pp
        _cell(tmp_path, "uniform_shrink", 0, 0.5, (25, 25, 13, 13)),  # gap 0.48: -20 %, loss 4 pp: out
        _cell(tmp_path, "uniform_shrink", 0, 0.2, (25, 25, 15, 14)),  # gap 0.42: -5 %, loss 1 pp: in
    ]
    tables = _tables(paths)
    table1 = tables["table1"].set_index("method")
    shrink = table1.loc["uniform_shrink"]
    assert math.isnan(shrink["r_star"]) and shrink["best_in_zone_retention"] == 0.2
    assert shrink["bias_reduction_mean"] == pytest.approx(-5.0) and shrink["sweet_spot"].startswith("none: every")
    assert table1.loc["top_k", "r_star"] == 0.5 and table1.loc["top_k", "sweet_spot"] == "r*"
    assert "none: best in zone -5.0 [" in tables["table1_md"] and "at 20% ‡" in tables["table1_md"]
    _, without = sweet_spot_cells(tables["table1"], seeds=[0], methods=["uniform_shrink"])
    assert without == ["m / d / full / uniform_shrink: no sweet spot (none: every in-zone retention widens the gap or leaves it)"]


def test_a_finetune_that_learned_only_the_label_prior_is_named_as_such(tmp_path):
    # Every seed answers "positive" (label 1) for every example: right on the positive groups
    # (the 2nd and 4th), wrong on the negative ones; accuracy 0.5, gap 0.
    paths = [
        _cell(tmp_path, "base", None, None, (14, 14, 14, 14)),
        _cell(tmp_path, "finetuned", 0, None, (0, 25, 0, 25)),
        _cell(tmp_path, "finetuned", 1, None, (0, 25, 0, 25)),
        _cell(tmp_path, "top_k", 0, 0.5, (0, 25, 0, 25)),
        _cell(tmp_path, "top_k", 1, 0.5, (1, 25, 0, 25)),
    ]
    meta = {**META, "label_words": ["negative", "positive"], "train_label_shares": {"negative": 0.18, "positive": 0.82}}
    tables = build_tables(paths, _analysis(sweet_spot_method="top_k", bootstrap={"resamples": 500}), metas={"d": meta})
    row = tables["regimes"].iloc[0]
    assert row["regime"] == "label prior" and row["regime_source"] == "measured"
    assert row["note"].startswith("the fine-tuned model (2 seed(s)) answers 'positive' for 100 % of the evaluation examples")
    assert "training labels: negative 18 %, positive 82 %" in row["note"] and "balance_labels: true" in row["note"]
    table1_rows, beside = tables["table1_md"].split("Label prior, kept out of Table 1")
    assert "| m | d |" not in table1_rows and "- m / d / full: the fine-tuned model (2 seed(s)) answers 'positive'" in beside
    # One seed that learned something is not the label prior.
    paths[2] = _cell(tmp_path, "finetuned", 1, None, (20, 25, 10, 25))
    assert _tables(paths)["regimes"].iloc[0]["regime"] != "label prior"


def test_boundary_regime_is_decided_from_the_measured_numbers(tmp_path):
    paths = [
        # d: FT at chance below the base (the marker construction) -> boundary.
        _cell(tmp_path, "base", None, None, (16, 16, 16, 16), dataset="d"),
        _cell(tmp_path, "finetuned", 0, None, (25, 25, 1, 1), dataset="d"),
        _cell(tmp_path, "top_k", 0, 0.5, (24, 24, 6, 6), dataset="d"),
        # e: FT clearly above the base -> natural.
        _cell(tmp_path, "base", None, None, (13, 13, 13, 13), dataset="e"),
        _cell(tmp_path, "finetuned", 0, None, (25, 25, 17, 17), dataset="e"),
        _cell(tmp_path, "top_k", 0, 0.5, (25, 25, 18, 18), dataset="e"),
    ]
    tables = _tables(paths)
    regimes = tables["regimes"].set_index("dataset")
    assert regimes.loc["d", "regime"] == "boundary" and regimes.loc["d", "ft_gain_hi"] < 0
    assert regimes.loc["e", "regime"] == "natural" and regimes.loc["e", "ft_gain_lo"] > 0
    assert (regimes["regime_source"] == "measured").all()
    table1_rows, beside = tables["table1_md"].split("Boundary regime")
    assert "| m | e |" in table1_rows and "| m | d |" not in table1_rows
    assert "| m | d | full | measured | 50% |" in beside
    # The comparison only counts natural-regime datasets.
    assert set(tables["comparisons"]["method"]) <= {"top_k"}
    forced = _tables(paths, regimes={"d": "natural", "e": "boundary"})["regimes"].set_index("dataset")
    assert forced.loc["d", "regime"] == "natural" and forced.loc["d", "regime_source"] == "config"
    assert forced.loc["e", "regime"] == "boundary"


def test_a_gap_not_separated_from_zero_gives_no_bias_reduction(tmp_path):
    paths = [
        _cell(tmp_path, "base", None, None, (10, 10, 10, 10)),
        _cell(tmp_path, "finetuned", 0, None, (20, 20, 19, 19)),
        _cell(tmp_path, "top_k", 0, 0.5, (20, 20, 20, 19)),
        _cell(tmp_path, "dg_hard", 0, None, (20, 20, 20, 20)),
    ]
    tables = _tables(paths)
    assert not tables["regimes"].iloc[0]["gap_ft_defined"]
    row = tables["table1"].iloc[0]
    assert math.isnan(row["bias_reduction_mean"]) and math.isnan(row["r_star"])
    assert tables["comparisons"].empty  # not even a method without a retention is scored there


def test_zero_finetuned_gap_gives_nan_not_infinity(tmp_path):
    paths = [
        _cell(tmp_path, "base", None, None, (10, 10, 10, 10)),
        _cell(tmp_path, "finetuned", 0, None, (15, 15, 15, 15)),
        _cell(tmp_path, "top_k", 0, 0.5, (16, 15, 15, 15)),
    ]
    cells = _tables(paths)["cells"]
    assert cells["bias_reduction"].isna().sum() == 3
    assert cells["bias_reduction_lo"].isna().all()


def _cell_rows(points):
    """Hand-made cell rows: (seed, method, retention, bias reduction %, accuracy loss pp)."""
    rows = []
    for seed, method, retention, reduction, loss in points:
        rows.append(
            {
                "model": "m", "dataset": "d", "seed": seed, "finetune": "full", "reference": "full",
                "method": method, "retention": retention, "bias_reduction": reduction, "accuracy_loss": loss,
                "bias_reduction_lo": reduction - 10, "bias_reduction_hi": reduction + 10,
                "accuracy_loss_lo": loss - 1, "accuracy_loss_hi": loss + 1,
            }
        )  # fmt: skip
    return pd.DataFrame(rows)


def test_each_cell_picks_each_methods_best_in_zone_point_and_top_k_is_tested_against_every_control():
    from spectral_edit.analysis.stats import best_in_zone_per_cell, paired_against

    cells = _cell_rows(
        [
            (0, "top_k", 0.5, 40.0, 1.0), (0, "top_k", 0.1, 70.0, 3.0),   # 0.1 is out of the zone
            (1, "top_k", 0.5, 30.0, 0.5), (1, "top_k", 0.1, 30.0, 1.0),   # a tie: the larger retention
            (2, "top_k", 0.5, 10.0, 0.0), (2, "top_k", 0.1, 120.0, 1.0),  # over 100 %: listed, not chosen
            (0, "random_k", 0.5, 20.0, 0.0), (0, "random_k", 0.1, 50.0, 1.5),
            (1, "random_k", 0.5, 5.0, 0.0), (1, "random_k", 0.1, 60.0, 4.0),
            (2, "random_k", 0.5, 25.0, 0.2),
            (0, "bottom_k", 0.5, 0.0, 9.0), (1, "bottom_k", 0.5, 0.0, 9.0),  # never in the zone
        ]
    )  # fmt: skip
    best = best_in_zone_per_cell(cells, PAPER_ZONE).set_index(["seed", "method"])
    assert best.loc[(0, "top_k"), ["retention", "bias_reduction"]].tolist() == [0.5, 40.0]
    assert best.loc[(1, "top_k"), "retention"] == 0.5 and best.loc[(2, "top_k"), "bias_reduction"] == 10.0
    assert best.loc[(0, "random_k"), ["retention", "bias_reduction", "accuracy_loss"]].tolist() == [0.1, 50.0, 1.5]
    assert best.loc[(2, "top_k"), "in_zone_retentions"] == 1 and "bottom_k" not in best.index.get_level_values("method")
    tests = paired_against(best.reset_index(), "top_k", {"n_resamples": 1000}).set_index("against")
    # top_k minus random_k per seed: 40 - 50, 30 - 5, 10 - 25 = -10, +25, -15.
    row = tests.loc["random_k"]
    assert (row["n_pairs"], row["wins"], row["ties"], row["losses"]) == (3, 1, 0, 2)
    assert row["mean_difference"] == pytest.approx(0.0)
    assert row["mean_difference_lo"] < 0 < row["mean_difference_hi"]
    assert row["wilcoxon_p"] == pytest.approx(scipy_stats.wilcoxon([-10.0, 25.0, -15.0]).pvalue)
    assert "bottom_k" not in tests.index  # no in-zone point in any cell: nothing to pair


def _resolution_frames(mean: float, high: float, per_seed_half: float, n_seeds: int = 3, low: float | None = None):
    """One Table 1 row at retention 0.1 and its per-seed cells: accuracy loss `mean` (pp) with
    the two-level interval up to `high`; each seed's own interval `per_seed_half` above it."""
    key = {"model": "m", "dataset": "d", "finetune": "full"}
    row = {**key, "method": "top_k", "n_seeds": n_seeds, "best_in_zone_retention": 0.1, "accuracy_loss_mean": mean}
    row.update(accuracy_loss_hi=high, accuracy_loss_lo=mean - (high - mean) if low is None else low)
    seeds = range(n_seeds)
    edited = [
        {**key, "method": "top_k", "seed": s, "retention": 0.1, "accuracy_loss": mean, "accuracy_loss_hi": mean + per_seed_half}
        for s in seeds
    ]
    for cell in edited:
        cell["accuracy_loss_lo"] = cell["accuracy_loss"] - per_seed_half
    gaps = [0.39, 0.28, 0.19][:n_seeds]
    finetuned = [{**key, "method": "finetuned", "seed": s, "retention": math.nan, "gap": gaps[s], "n_eval": 200} for s in seeds]
    return pd.DataFrame([row]), pd.DataFrame(edited + finetuned)


def test_the_seeds_and_examples_that_resolve_the_zone_are_projected_from_the_two_parts_of_the_interval():
    from spectral_edit.analysis.table1 import zone_resolution

    # h = 2.0 above a mean of 0.5, one seed's own 1.2: seed part 4 - 1.44 = 2.56, margin 1.5 (2.25).
    table1, cells = _resolution_frames(mean=0.5, high=2.5, per_seed_half=1.2)
    row = zone_resolution(table1, cells, PAPER_ZONE).iloc[0]
    assert row["n_eval"] == 200 and row["ft_gap_by_seed"] == "0.390 / 0.280 / 0.190"
    assert row["ft_gap_spread"] == pytest.approx(0.20)
    assert row["seeds_to_resolve"] == math.floor(2.56 * 3 / (2.25 - 1.44)) + 1  # 10 seeds at 200 examples
    assert math.isinf(row["examples_to_resolve"])  # the seed part alone (2.56) exceeds 2.25
    # No seed variance: the interval is the examples' alone, more seeds do not narrow it.
    table1, cells = _resolution_frames(mean=0.5, high=2.5, per_seed_half=2.0)
    row = zone_resolution(table1, cells, PAPER_ZONE).iloc[0]
    assert math.isinf(row["seeds_to_resolve"]) and row["examples_to_resolve"] == math.floor(4.0 * 200 / 2.25) + 1
    # Already resolved: the counts it takes are at most the ones it had.
    table1, cells = _resolution_frames(mean=-3.0, high=1.0, per_seed_half=2.0)
    row = zone_resolution(table1, cells, PAPER_ZONE).iloc[0]
    assert row["seeds_to_resolve"] <= 3 and row["examples_to_resolve"] <= 200
    # One seed: the seed part is unknown; a mean outside the zone: no projection.
    for frames in (_resolution_frames(0.5, 2.5, 1.2, n_seeds=1), _resolution_frames(2.5, 4.0, 1.0)):
        row = zone_resolution(*frames, PAPER_ZONE).iloc[0]
        assert math.isnan(row["seeds_to_resolve"]) and math.isnan(row["examples_to_resolve"])
    # A zone with a lower bound also needs the lower side inside it.
    table1, cells = _resolution_frames(mean=0.5, high=1.0, per_seed_half=0.3, low=-1.5)
    row = zone_resolution(table1, cells, NoCostZone(below_pp=2.0, from_pp=0.0)).iloc[0]
    assert row["seeds_to_resolve"] == math.floor((4.0 - 0.09) * 3 / (0.25 - 0.09)) + 1
