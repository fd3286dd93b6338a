"""Tables from the evaluation cells: every cell, mean +/- std over seeds, and Table 1.

Per (model, dataset, seed) every cell is compared with that seed's fine-tuned model (FT) of
its own fine-tuning recipe (a training-time control such as a LoRA checkpoint: with the
reference recipe, full SFT by default) and the base model:
    bias_reduction  = 100 (gap_ft - gap) / |gap_ft|          (percent)
    accuracy_loss   = 100 (acc_ft - acc)                      (percentage points)
    normalised_gap  = gap / |gap_ft|                          (1 = FT, 0 = no gap)
    acc_ft_to_base  = (acc - acc_ft) / (acc_base - acc_ft)    (0 = FT, 1 = base)
    gap_ft_to_base  = (gap - gap_ft) / (gap_base - gap_ft)    (0 = FT, 1 = base)
A ratio whose denominator is 0 is NaN. Every number gets a bootstrap interval from the cells'
per-example scores (``{name}_lo``, ``{name}_hi``; spectral_edit/analysis/intervals.py), and every
edited cell an exact McNemar test against its FT. Table 1 and the regimes: spectral_edit/analysis/table1.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from spectral_edit.analysis.intervals import STATISTICS, GroupDesign, align, bootstrap_intervals, mcnemar_counts, mcnemar_exact
from spectral_edit.analysis.stats import CELL_COLUMNS, TEST_COLUMNS
from spectral_edit.analysis.table1 import regimes, sweet_spots, table1_markdown, zone_resolution
from spectral_edit.evaluate.metrics import top_answer
from spectral_edit.plan.records import Analysis

KEYS = ["model", "dataset", "seed", "finetune", "method", "retention"]
METRICS = ["accuracy", "accuracy_majority", "accuracy_minority", "gap", "worst_group_accuracy"]
DERIVED = ["bias_reduction", "accuracy_loss", "normalised_gap", "acc_ft_to_base", "gap_ft_to_base"]
REFERENCE_METHODS = ("base", "finetuned")


def load_cells(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per cell file: its keys, metrics, per-group accuracies and edit statistics."""
    rows = []
    for path in paths:
        record = json.loads(Path(path).read_text())
        cell, metrics, edit = record["cell"], record["metrics"], record.get("edit") or {}
        row = {key: cell.get(key) for key in KEYS}
        row.update({m: metrics[m] for m in METRICS})
        row.update({f"acc[{g}]": v for g, v in metrics["group_accuracy"].items()})
        for key in ("kept_components", "total_components", "energy_kept_fraction"):
            row[key] = edit.get(key)
        row["n_eval"] = metrics["n"]
        row["_examples"] = record.get("examples")
        if row["_examples"]:
            row["top_answer"], row["top_answer_share"] = top_answer([e["prediction"] for e in row["_examples"]])
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["retention"] = pd.to_numeric(frame["retention"], errors="coerce")
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    return frame


def _ratio(numerator, denominator):
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator == 0, np.nan, numerator / denominator)


def add_reference_columns(cells: pd.DataFrame, controls: Iterable[str] = (), reference_finetune: str = "full") -> pd.DataFrame:
    """Attach each row's FT and base references and the derived measures.

    A row's FT is the unedited model of its own recipe and seed; rows of the ``controls``
    recipes (trained differently, not edited) are compared with ``reference_finetune``.
    """
    controls = set(controls)
    base = cells[cells["method"] == "base"][["model", "dataset", "accuracy", "gap"]]
    base = base.rename(columns={"accuracy": "acc_base", "gap": "gap_base"})
    finetuned = cells[cells["method"] == "finetuned"][["model", "dataset", "seed", "finetune", "accuracy", "gap"]]
    finetuned = finetuned.rename(columns={"accuracy": "acc_ft", "gap": "gap_ft", "finetune": "reference"})
    frame = cells[cells["method"] != "base"].copy()
    frame["reference"] = [reference_finetune if f in controls else f for f in frame["finetune"]]
    frame = frame.merge(finetuned, on=["model", "dataset", "seed", "reference"], how="left")
    base_rows = cells[cells["method"] == "base"].copy()
    base_rows["reference"] = reference_finetune
    frame = pd.concat([frame, base_rows], ignore_index=True)
    frame = frame.merge(base, on=["model", "dataset"], how="left")
    # The base row has no seed; it is compared with the seed-mean FT of the reference recipe.
    mean_ft = finetuned[finetuned["reference"] == reference_finetune].groupby(["model", "dataset"])[["acc_ft", "gap_ft"]].mean()
    is_base = frame["method"] == "base"
    for column in ("acc_ft", "gap_ft"):
        frame.loc[is_base, column] = [
            mean_ft[column].get((m, d), np.nan) for m, d in zip(frame.loc[is_base, "model"], frame.loc[is_base, "dataset"])
        ]
    frame["bias_reduction"] = 100 * _ratio(frame["gap_ft"] - frame["gap"], np.abs(frame["gap_ft"]))
    frame["accuracy_loss"] = 100 * (frame["acc_ft"] - frame["accuracy"])
    frame["normalised_gap"] = _ratio(frame["gap"], np.abs(frame["gap_ft"]))
    frame["acc_ft_to_base"] = _ratio(frame["accuracy"] - frame["acc_ft"], frame["acc_base"] - frame["acc_ft"])
    frame["gap_ft_to_base"] = _ratio(frame["gap"] - frame["gap_ft"], frame["gap_base"] - frame["gap_ft"])
    order = {"base": 0, "finetuned": 1}
    frame["_order"] = frame["method"].map(order).fillna(2)
    frame = frame.sort_values(
        ["model", "dataset", "finetune", "_order", "method", "retention", "seed"],
        ascending=[True, True, True, True, True, False, True],
        na_position="first",
    )
    return frame.drop(columns="_order").reset_index(drop=True)


# --- intervals --------------------------------------------------------------------------


class _Scores:
    """Per-example correctness of every cell, aligned per dataset, and the group design."""

    def __init__(self, cells: pd.DataFrame, metas: Mapping[str, Mapping]):
        self.design: dict[str, GroupDesign] = {}
        self.order: dict[str, list[str]] = {}
        for dataset, rows in cells.groupby("dataset", sort=False):
            if dataset not in metas:
                raise ValueError(f"no meta.json given for dataset {dataset!r}: its majority and minority groups are unknown")
            first = next((e for e in rows["_examples"] if e), None)
            if first is None:
                raise ValueError(f"the cells of dataset {dataset!r} store no per-example scores")
            self.order[dataset] = [str(e["id"]) for e in first]
            meta = metas[dataset]
            self.design[dataset] = GroupDesign.from_examples(
                [e["group"] for e in first], meta["majority_groups"], meta["minority_groups"]
            )

    def correct(self, row) -> np.ndarray:
        return align(row["_examples"], self.order[row["dataset"]])


def _reference_rows(cells: pd.DataFrame):
    """Lookups of the FT rows by (model, dataset, seed, recipe) and the base rows by (model, dataset)."""
    ft = {
        (r["model"], r["dataset"], int(r["seed"]), r["finetune"]): r for _, r in cells[cells["method"] == "finetuned"].iterrows()
    }
    base = {(r["model"], r["dataset"]): r for _, r in cells[cells["method"] == "base"].iterrows()}
    return ft, base


def _compared_rows(rows: pd.DataFrame, scores: _Scores, ft_rows, base_rows):
    """(edit, FT, base) correctness for a set of rows of one (model, dataset, recipe, method,
    retention): one row per seed; the base is compared with every seed of the reference FT."""
    first = rows.iloc[0]
    base_row = base_rows.get((first["model"], first["dataset"]))
    if base_row is None:
        return None
    base = scores.correct(base_row)
    if first["method"] == "base":
        seeds = sorted(
            seed
            for (model, dataset, seed, recipe) in ft_rows
            if (model, dataset, recipe) == (first["model"], first["dataset"], first["reference"])
        )
        edit = np.tile(base, (len(seeds), 1))
    else:
        seeds = sorted(int(s) for s in rows["seed"])
        by_seed = {int(r["seed"]): r for _, r in rows.iterrows()}
        edit = np.array([scores.correct(by_seed[s]) for s in seeds])
    ft = [ft_rows.get((first["model"], first["dataset"], s, first["reference"])) for s in seeds]
    if not seeds or any(r is None for r in ft):
        return None
    return edit, np.array([scores.correct(r) for r in ft]), base


def _interval_columns(intervals: Mapping[str, tuple[float, float]] | None) -> dict:
    out = {}
    for name in STATISTICS:
        low, high = intervals[name] if intervals else (math.nan, math.nan)
        out[f"{name}_lo"], out[f"{name}_hi"] = low, high
    return out


def _mcnemar_columns(edit: np.ndarray, ft: np.ndarray) -> dict:
    """Exact McNemar test; with several seeds, the discordant counts are summed over seeds."""
    per_seed = [mcnemar_exact(e.astype(bool), f.astype(bool)) for e, f in zip(edit, ft)]
    return mcnemar_counts(sum(r["mcnemar_b"] for r in per_seed), sum(r["mcnemar_c"] for r in per_seed))


def add_cell_intervals(cells: pd.DataFrame, scores: _Scores, bootstrap: Mapping) -> pd.DataFrame:
    """Per row (one cell, one seed): intervals of every statistic, and McNemar against its FT."""
    ft_rows, base_rows = _reference_rows(cells)
    extra = []
    for index, row in cells.iterrows():
        compared = _compared_rows(cells.loc[[index]], scores, ft_rows, base_rows)
        values = _interval_columns(None)
        if compared is not None:
            edit, ft, base = compared
            values = _interval_columns(bootstrap_intervals(edit, ft, base, scores.design[row["dataset"]], **bootstrap))
            if row["method"] not in REFERENCE_METHODS:
                values.update(_mcnemar_columns(edit, ft))
        extra.append(values)
    return pd.concat([cells, pd.DataFrame(extra, index=cells.index)], axis=1)


def summarise(cells: pd.DataFrame, scores: _Scores | None = None, bootstrap: Mapping | None = None) -> pd.DataFrame:
    """Mean and std over seeds of every metric, per (model, dataset, finetune, method, retention),
    with bootstrap intervals of the seed means and, for FT rows, of FT accuracy minus base
    accuracy (``ft_gain``, pp) that decides the regime."""
    columns = METRICS + DERIVED + ["acc_ft", "gap_ft", "acc_base", "gap_base", "energy_kept_fraction", "top_answer_share"]
    columns = [c for c in columns if c in cells]
    keys = ["model", "dataset", "finetune", "reference", "method", "retention"]
    grouped = cells.groupby(keys, dropna=False, sort=False)
    mean = grouped[columns].mean().add_suffix("_mean")
    std = grouped[columns].std(ddof=1).add_suffix("_std")
    count = grouped.size().rename("n_seeds")
    summary = pd.concat([mean, std, count], axis=1).reset_index()
    ordered = keys + ["n_seeds"]
    for column in columns:
        ordered += [f"{column}_mean", f"{column}_std"]
    summary = summary[ordered]
    if scores is None:
        return summary
    ft_rows, base_rows = _reference_rows(cells)
    extra = []
    for _, rows in grouped:
        compared = _compared_rows(rows, scores, ft_rows, base_rows)
        values = _interval_columns(None)
        values.update(ft_gain_mean=math.nan, ft_gain_lo=math.nan, ft_gain_hi=math.nan)
        if compared is not None:
            edit, ft, base = compared
            design = scores.design[rows.iloc[0]["dataset"]]
            values.update(_interval_columns(bootstrap_intervals(edit, ft, base, design, **bootstrap)))
            method = rows.iloc[0]["method"]
            if method not in REFERENCE_METHODS:
                values.update(_mcnemar_columns(edit, ft))
            if method == "finetuned":
                own = np.array([scores.correct(r) for _, r in rows.sort_values("seed").iterrows()])
                gain = bootstrap_intervals(np.tile(base, (len(own), 1)), own, base, design, **bootstrap)["accuracy_loss"]
                values.update(ft_gain_mean=100 * float(own.mean() - base.mean()), ft_gain_lo=gain[0], ft_gain_hi=gain[1])
        extra.append(values)
    return pd.concat([summary, pd.DataFrame(extra, index=summary.index)], axis=1)


def summary_markdown(summary: pd.DataFrame, level: float = 0.95) -> str:
    """Every (model, dataset, finetune, method, setting): seed mean with its interval."""
    header = [
        "model",
        "dataset",
        "fine-tune",
        "method",
        "retention",
        "accuracy",
        "gap",
        "worst group",
        "bias red. %",
        "acc. loss pp",
        "McNemar p",
        "seeds",
    ]
    lines = [
        f"Seed means with {100 * level:g} % bootstrap intervals over the evaluation examples "
        "(stratified by group, paired with the fine-tuned model); McNemar: exact test against the "
        "fine-tuned model, discordant examples summed over seeds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for _, row in summary.iterrows():
        retention = "" if pd.isna(row["retention"]) else f"{100 * row['retention']:g}%"
        p = row.get("mcnemar_p", math.nan)
        lines.append(
            "| "
            + " | ".join(
                [
                    str(row["model"]),
                    str(row["dataset"]),
                    "" if pd.isna(row["finetune"]) else str(row["finetune"]),
                    str(row["method"]),
                    retention,
                    _ci(row, "accuracy", 3),
                    _ci(row, "gap", 3),
                    _ci(row, "worst_group_accuracy", 3),
                    _ci(row, "bias_reduction"),
                    _ci(row, "accuracy_loss"),
                    "" if pd.isna(p) else f"{p:.3g}",
                    str(int(row["n_seeds"])),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def _ci(row, name: str, digits: int = 1) -> str:
    mean = row.get(f"{name}_mean", math.nan)
    if pd.isna(mean):
        return "n/a"
    low, high = row.get(f"{name}_lo", math.nan), row.get(f"{name}_hi", math.nan)
    if pd.isna(low) or pd.isna(high):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _pm(mean: float, std: float, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def repair_markdown(summary: pd.DataFrame, tolerance_pp: float, level: float = 0.95) -> str:
    if summary.empty:
        return "No task names held-out benchmarks (datasets.<task>.heldout), so there are no repair scores.\n"
    header = ["model", "task", "fine-tune", "method", "retention", "% healed", "% preserved", "% non-damage"]
    header += ["% task retention", "harmonic mean", "damaged / improved / neutral", "seeds"]
    lines = [
        f"Partition-conditional repair on the held-out benchmarks (Spectral Unforgetting; tolerance {tolerance_pp:g} pp; "
        "definitions in spectral_edit/analysis/repair.py and the README): seed means with "
        f"{100 * level:g} % bootstrap intervals over the benchmarks' samples, the partition held fixed; n/a: empty partition.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for _, row in summary.iterrows():
        retention = "" if pd.isna(row["retention"]) else f"{100 * row['retention']:g}%"
        values = [_ci({**row, f"{s}_mean": row[s]}, s) for s in ("healed", "preserved", "non_damage", "task_retention", "hm")]
        partition = " / ".join(f"{row[f'n_{p}']:g}" for p in ("damaged", "improved", "neutral"))
        cells = [str(row["model"]), str(row["dataset"]), str(row["finetune"]), str(row["method"]), retention, *values]
        lines.append("| " + " | ".join([*cells, partition, str(int(row["n_seeds"]))]) + " |")
    return "\n".join(lines) + "\n"


def _label_word_tables(cell_paths, analysis, controls, metas, bootstrap) -> dict:
    """The Shortcuts-in-the-Tail tables of the label-word cells."""
    from spectral_edit.analysis.stats import (
        best_in_zone_per_cell,
        cell_comparison_markdown,
        compare_methods,
        comparisons_markdown,
        method_scores,
        paired_against,
    )

    cells = add_reference_columns(load_cells(cell_paths), controls, analysis.reference_finetune)
    scores = _Scores(cells, metas)
    cells = add_cell_intervals(cells, scores, bootstrap)
    summary = summarise(cells, scores, bootstrap)
    zone = analysis.no_cost_zone
    regime_table = regimes(summary, analysis, cells, metas)
    table1 = zone_resolution(sweet_spots(summary, zone, regime_table), cells, zone)
    headline = analysis.sweet_spot_method
    trajectories = summary[summary["method"].isin([headline, "finetuned", "base"])]
    # Scored where Table 1 has a number: the natural regime, with a gap to reduce.
    natural = regime_table[(regime_table["regime"] == "natural") & regime_table["gap_ft_defined"]]
    comparisons = compare_methods(method_scores(cells, table1, zone, controls, natural), headline)
    cell_best = best_in_zone_per_cell(cells, zone, natural)
    cell_tests = paired_against(cell_best, headline, bootstrap)
    return {
        "cells": cells,
        "summary": summary,
        "summary_md": summary_markdown(summary, bootstrap["level"]),
        "table1": table1,
        "regimes": regime_table,
        "table1_md": table1_markdown(table1, trajectories, zone, headline, bootstrap["level"])
        + "\n"
        + comparisons_markdown(comparisons, headline)
        + "\n"
        + cell_comparison_markdown(cell_best, cell_tests, headline, bootstrap["level"]),
        "comparisons": comparisons,
        "cell_comparison": cell_best,
        "cell_comparison_tests": cell_tests,
    }


def build_tables(
    cell_paths: Iterable[str | Path],
    analysis: Analysis,
    controls: Iterable[str] = (),
    heldout_paths: Iterable[str | Path] = (),
    metas: Mapping[str, str | Path | Mapping] = (),
    benchmark_paths: Iterable[str | Path] = (),
    benchmark_roles: Mapping[tuple[str, str], str] | None = None,
    surgery_policies: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """All tables from the cell files: cells, summary, Table 1 with the method comparison; the
    held-out benchmarks with their repair scores; the lm-eval benchmarks with Spectral Surgery's
    Table 2 and the numbers of its Figs. 3 and 4 (each frame with a markdown rendering).

    ``metas`` maps every label-word dataset to its prepared meta.json (a path or its content):
    its majority and minority groups define the gap that the intervals resample.
    ``benchmark_roles`` maps (task, benchmark) to "target" or "heldout"; ``surgery_policies``
    maps grid method names to their Spectral Surgery policy.
    """
    from spectral_edit.analysis.benchmark_scores import from_label_word_record, load_record
    from spectral_edit.analysis.benchmark_tables import (
        benchmark_tables,
        guided_vs_random,
        reward_risk,
        surgery_table2,
        surgery_table2_markdown,
    )
    from spectral_edit.analysis.repair import heldout_frame, repair_tables

    controls = list(controls)
    metas = {name: m if isinstance(m, Mapping) else json.loads(Path(m).read_text()) for name, m in dict(metas).items()}
    bootstrap = analysis.bootstrap.resampling()
    cell_paths, roles = list(cell_paths), dict(benchmark_roles or {})
    tables = _label_word_tables(cell_paths, analysis, controls, metas, bootstrap) if cell_paths else _empty_label_word_tables()
    cells = tables["cells"]
    benchmark_records = [load_record(p) for p in benchmark_paths]
    label_word_heldout = [load_record(p) for p in heldout_paths]
    heldout_records = label_word_heldout + [
        r for r in benchmark_records if roles.get((r["cell"].get("dataset"), r["cell"]["benchmark"])) == "heldout"
    ]
    # Base cells of a benchmark carry no task: held out for any task that names it so.
    heldout_names = {b for (_, b), role in roles.items() if role == "heldout"}
    heldout_records += [r for r in benchmark_records if r["cell"]["method"] == "base" and r["cell"]["benchmark"] in heldout_names]
    # What measures each cell's task: its label-word cell, or its own benchmarks (instruction tasks).
    task: dict[tuple, list] = {}
    for _, row in cells.iterrows():
        if row["method"] != "base" and row["_examples"]:
            key = (row["model"], row["dataset"], int(row["seed"]), row["finetune"], row["method"], _retention(row["retention"]))
            task[key] = [from_label_word_record({"examples": row["_examples"]})]
    for record in sorted(benchmark_records, key=lambda r: r["cell"]["benchmark"]):
        cell = record["cell"]
        if cell["method"] != "base" and roles.get((cell["dataset"], cell["benchmark"])) == "target":
            key = (cell["model"], cell["dataset"], cell["seed"], cell["finetune"], cell["method"], cell.get("retention"))
            task.setdefault(key, []).append(record["scores"])
    tolerance = analysis.heldout_tolerance_pp
    resampling = {k: bootstrap[k] for k in ("n_resamples", "seed", "level")}
    repair, repair_summary = repair_tables(task, heldout_records, tolerance, resampling)
    # The label-word held-out datasets get the same rows as the benchmarks (score, changes, intervals).
    held = {(r["cell"]["dataset"], r["cell"]["benchmark"]): "heldout" for r in label_word_heldout if r["cell"]["dataset"]}
    per_seed, benchmark_summary = benchmark_tables(benchmark_records + label_word_heldout, roles | held, resampling)
    return {
        **tables,
        "cells": cells.drop(columns="_examples"),
        "heldout": heldout_frame(heldout_records),
        "repair": repair,
        "repair_summary": repair_summary,
        "repair_md": repair_markdown(repair_summary, tolerance, bootstrap["level"]),
        "benchmarks": per_seed,
        "benchmarks_summary": benchmark_summary,
        "surgery_table2": surgery_table2(benchmark_summary),
        "surgery_table2_md": surgery_table2_markdown(benchmark_summary, bootstrap["level"]),
        "surgery_guided_vs_random": guided_vs_random(benchmark_summary, dict(surgery_policies or {})),
        "surgery_reward_risk": reward_risk(benchmark_records, benchmark_summary, list(analysis.risk_benchmarks), resampling),
    }


def _retention(value):
    return None if pd.isna(value) else float(value)


def _empty_label_word_tables() -> dict:
    """The label-word tables of a grid of instruction tasks: no rows, the columns they have."""
    summary_columns = ["model", "dataset", "finetune", "reference", "method", "retention", "n_seeds"]
    empty = pd.DataFrame(columns=[*KEYS, *METRICS, "_examples"])
    return {
        "cells": empty,
        "summary": pd.DataFrame(columns=summary_columns),
        "summary_md": "No label-word task in the grid.\n",
        "table1": pd.DataFrame(columns=["model", "dataset", "finetune", "method", "r_star"]),
        "regimes": pd.DataFrame(columns=["model", "dataset", "finetune", "regime", "gap_ft_defined"]),
        "table1_md": "No label-word task in the grid, so there is no Table 1 (benchmarks: surgery_table2.md, repair.md).\n",
        "comparisons": pd.DataFrame(columns=["method", "n", "score_mean", "score_std", "baseline"]),
        "cell_comparison": pd.DataFrame(columns=CELL_COLUMNS),
        "cell_comparison_tests": pd.DataFrame(columns=TEST_COLUMNS),
    }
