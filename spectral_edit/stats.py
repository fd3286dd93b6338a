"""Method comparisons with a paired Wilcoxon signed-rank test (the DG-Hard referee's request).

Each method gets one score per (model, dataset, seed) cell of an edited recipe: its bias
reduction at its sweet spot r* (Table 1's in-zone maximum, chosen per (model, dataset) on the
seed means) for methods with a retention; for methods without one, and for the training-time
controls, their single cell's bias reduction, if its accuracy loss is inside the no-cost zone.
A method with no in-zone cell has no score there. Only datasets in the natural regime whose
fine-tuned gap is resolved from 0 count (the others have no bias reduction in Table 1, and so
none in its comparison). The strongest baseline is the method other
than the headline one (``analysis.sweet_spot_method``) with the highest mean score; every other
method is compared with it by ``scipy.stats.wilcoxon`` over the cells both have (two-sided).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

KEYS = ["model", "dataset", "seed", "finetune"]


def method_scores(
    cells: pd.DataFrame, table1: pd.DataFrame, zone, controls=(), natural: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per (model, dataset, seed, finetune, method) with its score (bias reduction).

    ``zone`` is a table1.NoCostZone; ``natural`` the (model, dataset, finetune) rows in the
    natural regime (None: every row counts).
    """
    rows = []
    if natural is not None:
        keep = set(zip(natural["model"], natural["dataset"]))
        cells = cells[[(m, d) in keep for m, d in zip(cells["model"], cells["dataset"])]]
        table1 = table1[[(m, d) in keep for m, d in zip(table1["model"], table1["dataset"])]] if len(table1) else table1
    edited = cells[~cells["method"].isin(["base", "finetuned"])]
    for _, spot in table1.iterrows():
        if math.isnan(spot["r_star"]):
            continue
        chosen = edited[
            (edited["model"] == spot["model"])
            & (edited["dataset"] == spot["dataset"])
            & (edited["finetune"] == spot["finetune"])
            & (edited["method"] == spot["method"])
            & np.isclose(edited["retention"].astype(float), spot["r_star"])
        ]
        rows += [{**{k: r[k] for k in KEYS}, "method": r["method"], "score": r["bias_reduction"]} for _, r in chosen.iterrows()]
    fixed = edited[edited["retention"].isna() & zone.contains(edited["accuracy_loss"])]
    rows += [{**{k: r[k] for k in KEYS}, "method": r["method"], "score": r["bias_reduction"]} for _, r in fixed.iterrows()]
    control_rows = cells[
        (cells["method"] == "finetuned") & cells["finetune"].isin(list(controls)) & zone.contains(cells["accuracy_loss"])
    ]
    rows += [
        {**{k: r[k] for k in KEYS}, "finetune": r["reference"], "method": r["finetune"], "score": r["bias_reduction"]}
        for _, r in control_rows.iterrows()
    ]
    frame = pd.DataFrame(rows, columns=KEYS + ["method", "score"])
    return frame.dropna(subset=["score"])


def compare_methods(scores: pd.DataFrame, headline: str) -> pd.DataFrame:
    """Per method: n, mean and std of its score, and the Wilcoxon test against the strongest baseline."""
    columns = ["method", "n", "score_mean", "score_std", "baseline", "n_pairs", "median_difference", "wilcoxon_p"]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    summary = scores.groupby("method")["score"].agg(["count", "mean", "std"])
    others = summary.drop(index=headline, errors="ignore")
    baseline = others["mean"].idxmax() if len(others) else None
    wide = scores.pivot_table(index=KEYS, columns="method", values="score")
    rows = []
    for method, row in summary.sort_values("mean", ascending=False).iterrows():
        entry = {
            "method": method,
            "n": int(row["count"]),
            "score_mean": row["mean"],
            "score_std": row["std"],
            "baseline": baseline,
            "n_pairs": 0,
            "median_difference": math.nan,
            "wilcoxon_p": math.nan,
        }
        if baseline is not None and method != baseline:
            pairs = wide[[method, baseline]].dropna()
            difference = pairs[method] - pairs[baseline]
            entry.update(n_pairs=len(pairs), median_difference=float(difference.median()) if len(pairs) else math.nan)
            if len(pairs) and (difference != 0).any():
                entry["wilcoxon_p"] = float(stats.wilcoxon(pairs[method], pairs[baseline]).pvalue)
        rows.append(entry)
    return pd.DataFrame(rows, columns=columns)


def comparisons_markdown(table: pd.DataFrame, headline: str) -> str:
    if table.empty:
        return "No method has a cell inside the no-cost zone, so there is nothing to compare.\n"
    baseline = table["baseline"].iloc[0]
    lines = [
        f"Method comparison: bias reduction (%) at each method's in-zone sweet spot, mean ± std over the "
        f"(model, dataset, seed) cells; paired Wilcoxon signed-rank test against the strongest baseline "
        f"({baseline}; headline method {headline}). n/a: fewer than one non-zero paired difference.",
        "",
        "| method | cells | bias reduction % | pairs with baseline | median difference | Wilcoxon p |",
        "|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        std = "" if math.isnan(row["score_std"]) else f" ± {row['score_std']:.1f}"
        diff = "" if math.isnan(row["median_difference"]) else f"{row['median_difference']:+.1f}"
        p = "baseline" if row["method"] == baseline else ("n/a" if math.isnan(row["wilcoxon_p"]) else f"{row['wilcoxon_p']:.3g}")
        lines.append(f"| {row['method']} | {row['n']} | {row['score_mean']:.1f}{std} | {row['n_pairs']} | {diff} | {p} |")
    return "\n".join(lines) + "\n"
