"""Tables from the evaluation cells: every cell, mean +/- std over seeds, and Table 1.

Per (model, dataset, seed) every cell is compared with that seed's fine-tuned model (FT) of
its own fine-tuning recipe (a training-time control such as a LoRA checkpoint: with the
reference recipe, full SFT by default) and the base model:
    bias_reduction  = 100 (gap_ft - gap) / |gap_ft|          (percent)
    accuracy_loss   = 100 (acc_ft - acc)                      (percentage points)
    normalised_gap  = gap / |gap_ft|                          (1 = FT, 0 = no gap)
    acc_ft_to_base  = (acc - acc_ft) / (acc_base - acc_ft)    (0 = FT, 1 = base)
    gap_ft_to_base  = (gap - gap_ft) / (gap_base - gap_ft)    (0 = FT, 1 = base)
A ratio whose denominator is 0 is NaN.

Table 1 (Shortcuts in the Tail, Sec. 3.1): per (model, dataset) and method, the sweet spot is
the retention r* whose seed-mean bias reduction is largest among the retentions whose
seed-mean accuracy loss is below the no-cost bound (2 pp by default); ties go to the larger
retention. The table reports its bias reduction (mean +/- std over seeds) and r*.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

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
        ascending=[True, True, True, True, True, False, True], na_position="first",
    )
    return frame.drop(columns="_order").reset_index(drop=True)


def summarise(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of every metric, per (model, dataset, finetune, method, retention)."""
    columns = METRICS + DERIVED + ["acc_ft", "gap_ft", "acc_base", "gap_base", "energy_kept_fraction"]
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
    return summary[ordered]


def summary_markdown(summary: pd.DataFrame) -> str:
    """Every (model, dataset, finetune, method, setting) with mean ± std over seeds."""
    header = ["model", "dataset", "fine-tune", "method", "retention", "accuracy", "gap", "worst group",
              "bias red. %", "acc. loss pp", "seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        retention = "" if pd.isna(row["retention"]) else f"{100 * row['retention']:g}%"
        lines.append("| " + " | ".join([
            str(row["model"]), str(row["dataset"]), "" if pd.isna(row["finetune"]) else str(row["finetune"]),
            str(row["method"]), retention,
            _pm(row["accuracy_mean"], row["accuracy_std"], 3), _pm(row["gap_mean"], row["gap_std"], 3),
            _pm(row["worst_group_accuracy_mean"], row["worst_group_accuracy_std"], 3),
            _pm(row["bias_reduction_mean"], row["bias_reduction_std"]),
            _pm(row["accuracy_loss_mean"], row["accuracy_loss_std"]), str(int(row["n_seeds"])),
        ]) + " |")
    return "\n".join(lines) + "\n"


def sweet_spots(cells: pd.DataFrame, no_cost_pp: float = 2.0) -> pd.DataFrame:
    """Table 1: per (model, dataset, method with a retention), the in-zone maximum."""
    rows = []
    edited = cells[~cells["method"].isin(REFERENCE_METHODS) & cells["retention"].notna()]
    for (model, dataset, finetune, method), group in edited.groupby(["model", "dataset", "finetune", "method"], sort=False):
        per_r = group.groupby("retention")[["bias_reduction", "accuracy_loss"]].agg(["mean", "std"])
        per_r = per_r.sort_index(ascending=False)
        in_zone = per_r[per_r[("accuracy_loss", "mean")] < no_cost_pp]
        in_zone = in_zone[in_zone[("bias_reduction", "mean")].notna()]
        refs = group.iloc[0]
        row = {
            "model": model,
            "dataset": dataset,
            "finetune": finetune,
            "method": method,
            "n_seeds": int(group["seed"].nunique()),
            "gap_ft": float(group.groupby("seed")["gap_ft"].first().mean()),
            "acc_ft": float(group.groupby("seed")["acc_ft"].first().mean()),
            "gap_base": float(refs["gap_base"]),
            "acc_base": float(refs["acc_base"]),
            "r_star": math.nan,
            "bias_reduction_mean": math.nan,
            "bias_reduction_std": math.nan,
            "accuracy_loss_mean": math.nan,
            "accuracy_loss_std": math.nan,
        }
        if len(in_zone):
            best = in_zone[("bias_reduction", "mean")].idxmax()
            row.update(
                r_star=float(best),
                bias_reduction_mean=float(per_r.loc[best, ("bias_reduction", "mean")]),
                bias_reduction_std=float(per_r.loc[best, ("bias_reduction", "std")]),
                accuracy_loss_mean=float(per_r.loc[best, ("accuracy_loss", "mean")]),
                accuracy_loss_std=float(per_r.loc[best, ("accuracy_loss", "std")]),
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _pm(mean: float, std: float, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table1_markdown(table1: pd.DataFrame, no_cost_pp: float, headline_method: str) -> str:
    """Markdown Table 1: one row per (model, dataset, fine-tune), one column per method."""
    methods = [headline_method] + sorted(set(table1["method"]) - {headline_method})
    header = ["model", "dataset", "fine-tune", "FT acc", "FT gap", "base acc", "base gap"]
    header += [f"{m}: bias red. % (r*)" for m in methods]
    lines = [
        f"Table 1: bias reduction at the sweet-spot retention r* (largest seed-mean reduction with "
        f"accuracy loss < {no_cost_pp:g} pp; mean ± std over seeds; n/a: no retention in the zone).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for (model, dataset, finetune), group in table1.groupby(["model", "dataset", "finetune"], sort=False):
        first = group.iloc[0]
        cells = [model, dataset, finetune, f"{first['acc_ft']:.3f}", f"{first['gap_ft']:.3f}",
                 f"{first['acc_base']:.3f}", f"{first['gap_base']:.3f}"]
        for method in methods:
            match = group[group["method"] == method]
            if match.empty:
                cells.append("")
                continue
            row = match.iloc[0]
            value = _pm(row["bias_reduction_mean"], row["bias_reduction_std"])
            if not math.isnan(row["r_star"]):
                value += f" ({100 * row['r_star']:g}%)"
            cells.append(value)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def repair_markdown(summary: pd.DataFrame, tolerance_pp: float) -> str:
    if summary.empty:
        return "No task names held-out benchmarks (datasets.<task>.heldout), so there are no repair scores.\n"
    header = ["model", "task", "fine-tune", "method", "retention", "% healed", "% preserved", "% non-damage",
              "% task retention", "harmonic mean", "seeds"]
    lines = [
        f"Partition-conditional repair on the held-out benchmarks (tolerance {tolerance_pp:g} pp; "
        "definitions in spectral_edit/repair.py and the README); mean ± std over seeds, n/a: empty partition.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for _, row in summary.iterrows():
        retention = "" if pd.isna(row["retention"]) else f"{100 * row['retention']:g}%"
        values = [_pm(row[f"{s}_mean"], row[f"{s}_std"]) for s in ("healed", "preserved", "non_damage", "task_retention", "hm")]
        lines.append("| " + " | ".join([str(row["model"]), str(row["dataset"]), str(row["finetune"]), str(row["method"]),
                                         retention, *values, str(int(row["n_seeds"]))]) + " |")
    return "\n".join(lines) + "\n"


def build_tables(cell_paths: Iterable[str | Path], analysis: Mapping, controls: Iterable[str] = (),
                 heldout_paths: Iterable[str | Path] = ()) -> dict[str, object]:
    """All tables from the cell files: cells, summary, Table 1 with the method comparison, and the
    held-out benchmarks with their repair scores (each frame with a markdown rendering)."""
    from .repair import load_heldout, repair_table, summarise_repair
    from .stats import compare_methods, comparisons_markdown, method_scores

    controls = list(controls)
    reference = analysis.get("reference_finetune", "full")
    cells = add_reference_columns(load_cells(cell_paths), controls, reference)
    no_cost = float(analysis.get("no_cost_pp", 2.0))
    table1 = sweet_spots(cells, no_cost)
    headline = analysis.get("sweet_spot_method", "top_k")
    summary = summarise(cells)
    comparisons = compare_methods(method_scores(cells, table1, no_cost, controls), headline)
    heldout = load_heldout(heldout_paths)
    tolerance = float(analysis.get("heldout_tolerance_pp", 1.0))
    repair = repair_table(heldout, cells, tolerance)
    repair_summary = summarise_repair(repair)
    return {
        "cells": cells,
        "summary": summary,
        "summary_md": summary_markdown(summary),
        "table1": table1,
        "table1_md": table1_markdown(table1, no_cost, headline) + "\n" + comparisons_markdown(comparisons, headline),
        "comparisons": comparisons,
        "heldout": heldout,
        "repair": repair,
        "repair_summary": repair_summary,
        "repair_md": repair_markdown(repair_summary, tolerance),
    }
