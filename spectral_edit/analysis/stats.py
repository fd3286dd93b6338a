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


# --- top-k against each control, cell by cell (issue 22: the comparison the papers leave open) ---

CELL_COLUMNS = KEYS + ["method", "retention", "bias_reduction", "bias_reduction_lo", "bias_reduction_hi"]
CELL_COLUMNS += ["accuracy_loss", "accuracy_loss_lo", "accuracy_loss_hi", "in_zone_retentions"]


def best_in_zone_per_cell(cells: pd.DataFrame, zone, natural: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (model, dataset, seed, finetune) cell and edit method: the method's best in-zone
    point in that cell alone, by Table 1's rule (the largest bias reduction at most 100 % among
    the retentions whose accuracy loss is in ``zone``; ties: the larger retention), with its
    accuracy loss and the cell's intervals (over the examples). A method with no in-zone
    retention in a cell has no row there. Each cell picks its own best on its own evaluation
    set, which flatters every method alike (one pick among its retentions)."""
    edited = cells[~cells["method"].isin(["base", "finetuned"]) & (cells["finetune"] == cells["reference"])]
    if natural is not None:
        keep = set(zip(natural["model"], natural["dataset"], natural["finetune"]))
        edited = edited[[k in keep for k in zip(edited["model"], edited["dataset"], edited["finetune"])]]
    rows = []
    for key, group in edited.groupby(KEYS + ["method"], sort=False):
        inside = group[zone.contains(group["accuracy_loss"]) & (group["bias_reduction"] <= 100) & group["bias_reduction"].notna()]
        if inside.empty:
            continue
        inside = inside.sort_values("retention", ascending=False, na_position="last")
        best = inside.loc[inside["bias_reduction"].idxmax()]
        row = dict(zip(KEYS + ["method"], key))
        row.update({column: best.get(column, math.nan) for column in CELL_COLUMNS if column not in row})
        row["in_zone_retentions"] = len(inside)
        rows.append(row)
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


TEST_COLUMNS = ["method", "against", "n_pairs", "wins", "ties", "losses", "mean_difference"]
TEST_COLUMNS += ["mean_difference_lo", "mean_difference_hi", "wilcoxon_p"]


def paired_against(best: pd.DataFrame, headline: str, bootstrap: dict | None = None) -> pd.DataFrame:
    """``headline``'s best in-zone bias reduction against each other method's, over the cells
    both have: wins / ties / losses, the mean difference (headline minus the other, pp of bias
    reduction) with a percentile bootstrap interval over the cells, and the two-sided Wilcoxon
    signed-rank p (SciPy; zero differences dropped)."""
    bootstrap = {"n_resamples": 2000, "seed": 0, "level": 0.95, **(bootstrap or {})}
    wide = best.pivot_table(index=KEYS, columns="method", values="bias_reduction")
    rows = []
    for other in [m for m in wide.columns if m != headline]:
        entry = dict.fromkeys(TEST_COLUMNS, math.nan)
        entry.update(method=headline, against=other, n_pairs=0, wins=0, ties=0, losses=0)
        if headline in wide:
            pairs = wide[[headline, other]].dropna()
            difference = (pairs[headline] - pairs[other]).to_numpy(float)
            entry.update(
                n_pairs=len(difference),
                wins=int((difference > 0).sum()),
                ties=int((difference == 0).sum()),
                losses=int((difference < 0).sum()),
            )
            if len(difference):
                entry["mean_difference"] = float(difference.mean())
            if len(difference) >= 2 and np.ptp(difference) > 0:
                interval = stats.bootstrap(
                    (difference,),
                    np.mean,
                    n_resamples=int(bootstrap["n_resamples"]),
                    confidence_level=float(bootstrap["level"]),
                    method="percentile",
                    rng=np.random.default_rng(int(bootstrap["seed"])),
                ).confidence_interval
                entry.update(mean_difference_lo=float(interval.low), mean_difference_hi=float(interval.high))
            if (difference != 0).any():
                entry["wilcoxon_p"] = float(stats.wilcoxon(difference).pvalue)
        rows.append(entry)
    return pd.DataFrame(rows, columns=TEST_COLUMNS)


def cell_comparison_markdown(best: pd.DataFrame, tests: pd.DataFrame, headline: str, level: float) -> str:
    if best.empty:
        return "Cell by cell: no method has an in-zone retention in any natural-regime cell.\n"
    per_method = best.groupby("method").agg(
        cells=("bias_reduction", "size"), reduction=("bias_reduction", "mean"), loss=("accuracy_loss", "mean")
    )
    lines = [
        f"Cell by cell: each method's best in-zone point in every (model, dataset, seed) cell of the natural "
        f"regime (its largest bias reduction ≤ 100 % among the retentions in the zone, picked per cell), and "
        f"{headline} against each other method over the cells both have: mean difference of bias reduction "
        f"({headline} minus the other, pp) with a {100 * level:g} % bootstrap interval over the cells, and the "
        f"two-sided Wilcoxon signed-rank p.",
        "",
        "| method | cells with an in-zone point | mean best bias reduction % | mean accuracy loss pp | "
        f"{headline} wins / ties / losses | mean difference | Wilcoxon p |",
        "|---|---|---|---|---|---|---|",
    ]
    by_other = tests.set_index("against") if len(tests) else tests
    for method, row in per_method.sort_values("reduction", ascending=False).iterrows():
        if method != headline and method in by_other.index:
            test = by_other.loc[method]
            record = f"{test['wins']} / {test['ties']} / {test['losses']}"
            mean = test["mean_difference"]
            interval = (
                ""
                if math.isnan(test["mean_difference_lo"])
                else f" [{test['mean_difference_lo']:+.1f}, {test['mean_difference_hi']:+.1f}]"
            )
            difference = "n/a" if math.isnan(mean) else f"{mean:+.1f}{interval}"
            p = "n/a" if math.isnan(test["wilcoxon_p"]) else f"{test['wilcoxon_p']:.3g}"
        else:
            record, difference, p = ("(headline)", "", "") if method == headline else ("", "", "")
        lines.append(
            f"| {method} | {int(row['cells'])} | {row['reduction']:.1f} | {row['loss']:.2f} | {record} | {difference} | {p} |"
        )
    return "\n".join(lines) + "\n"
