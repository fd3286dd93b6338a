"""Table 1 of Shortcuts in the Tail (Sec. 3.1, App. A) as the paper defines it, with intervals.

No-cost zone: an edit whose accuracy loss against its fine-tuned model (FT) is below
``below_pp`` (2 pp, the paper's rule; an accuracy gain is inside), and at least ``from_pp``
when that is set. The figures shade the same zone.

Regimes. A (model, dataset, recipe) is in the *boundary* regime when its FT is not resolvably
more accurate than the base on the balanced evaluation: the lower end of the interval of
acc_ft - acc_base is not above 0 (the IMDB-marker construction, where fine-tuning learns only
the marker). Such datasets are kept out of Table 1's rows and reported beside it with their
trajectory, as the paper's App. A does; ``analysis.regimes`` can set a dataset's regime.
A fine-tuned model that gives one answer for nearly every evaluation example (every seed at
least metrics.LABEL_PRIOR_SHARE of a label-balanced split) learned the *label prior*: not the
boundary regime (a model that learned the shortcut alone has a gap near 1, this one a gap of
0), so it is its own regime, named with the answer, the training split's label shares and
what to change. Every other dataset is in the *natural* regime.

Sweet spot r*: per (model, dataset, recipe) and method with a retention, among the retentions
whose seed-mean accuracy loss is in the zone and whose seed-mean bias reduction is at most
100 %, the one with the largest bias reduction (ties: the larger retention). A bias reduction
over 100 % means the gap has flipped sign (over-correction, not super-debiasing); the paper's
sweet spots are <= 100 %, so such retentions are listed, not chosen. Bias reduction is
undefined (n/a) when the interval of the FT gap includes 0: there is no gap to reduce. A sweet
spot whose accuracy-loss interval reaches outside the zone is *not resolved* by the
evaluation set: the set cannot tell it from an edit that costs more than the zone allows.
A method whose best in-zone retention does not narrow the gap (seed-mean bias reduction at
most 0) has *no sweet spot*: r* is left empty and the row says so (``sweet_spot``), with the
numbers of that best in-zone retention (``best_in_zone_retention``) for the reader to see.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from spectral_edit.evaluate.metrics import LABEL_PRIOR_SHARE, label_prior_note
from spectral_edit.plan.records import Analysis, NoCostZone

REFERENCE_METHODS = ("base", "finetuned")


def regimes(
    summary: pd.DataFrame, analysis: Analysis, cells: pd.DataFrame | None = None, metas: Mapping | None = None
) -> pd.DataFrame:
    """Per (model, dataset, finetune) of an edited recipe: the regime and what decided it.

    ``summary`` needs the base rows (compared with each recipe's FT through
    ``acc_gain_*``, see aggregate.finetune_vs_base) and the FT rows with their gap intervals;
    ``cells`` (per-seed rows with ``top_answer``/``top_answer_share``) and ``metas`` (label
    words, training label shares) find the fine-tunes that learned only the label prior.
    """
    overrides = analysis.regimes
    rows = []
    finetuned = summary[summary["method"] == "finetuned"]
    for _, ft in finetuned.iterrows():
        gain_low = ft.get("ft_gain_lo", math.nan)
        measured = "natural" if gain_low > 0 else "boundary"
        note = ""
        prior = _label_prior(cells, metas, ft)
        if prior is not None:
            measured, note = "label prior", prior
        chosen = overrides.get(ft["dataset"], "auto")
        rows.append(
            {
                "model": ft["model"],
                "dataset": ft["dataset"],
                "finetune": ft["finetune"],
                "regime": measured if chosen == "auto" else chosen,
                "regime_source": "measured" if chosen == "auto" else "config",
                "ft_gain_pp": ft.get("ft_gain_mean", math.nan),
                "ft_gain_lo": gain_low,
                "ft_gain_hi": ft.get("ft_gain_hi", math.nan),
                "gap_ft_defined": bool(ft["gap_lo"] > 0 or ft["gap_hi"] < 0),
                "note": note,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "model",
            "dataset",
            "finetune",
            "regime",
            "regime_source",
            "ft_gain_pp",
            "ft_gain_lo",
            "ft_gain_hi",
            "gap_ft_defined",
            "note",
        ],
    )


def _label_prior(cells: pd.DataFrame | None, metas: Mapping | None, ft: pd.Series) -> str | None:
    """The note on a fine-tune whose every seed gives one answer to (nearly) every example."""
    if cells is None or "top_answer_share" not in cells:
        return None
    seeds = cells[
        (cells["method"] == "finetuned")
        & (cells["model"] == ft["model"])
        & (cells["dataset"] == ft["dataset"])
        & (cells["finetune"] == ft["finetune"])
    ]
    if seeds.empty or not (seeds["top_answer_share"] >= LABEL_PRIOR_SHARE).all():
        return None
    meta = (metas or {}).get(ft["dataset"], {})
    words = meta.get("label_words") or []
    answers = sorted(set(int(a) for a in seeds["top_answer"]))
    word = " / ".join(words[a] if a < len(words) else str(a) for a in answers)
    share = float(seeds["top_answer_share"].min())
    return label_prior_note(word, share, meta.get("train_label_shares"), ft["dataset"], len(seeds))


def sweet_spots(summary: pd.DataFrame, zone: NoCostZone, regime_table: pd.DataFrame) -> pd.DataFrame:
    """Table 1 rows: per (model, dataset, recipe, method with a retention), r* and its numbers."""
    edited = summary[~summary["method"].isin(REFERENCE_METHODS) & summary["retention"].notna()]
    edited = edited[edited["finetune"] == edited["reference"]]  # edits of a recipe, not controls
    finetuned = summary[summary["method"] == "finetuned"].set_index(["model", "dataset", "finetune"])
    base = summary[summary["method"] == "base"].set_index(["model", "dataset"])
    regime_of = regime_table.set_index(["model", "dataset", "finetune"])
    rows = []
    for (model, dataset, finetune, method), curve in edited.groupby(["model", "dataset", "finetune", "method"], sort=False):
        ft = finetuned.loc[(model, dataset, finetune)]
        regime = regime_of.loc[(model, dataset, finetune)]
        row = {
            "model": model,
            "dataset": dataset,
            "finetune": finetune,
            "method": method,
            "regime": regime["regime"],
            "regime_source": regime["regime_source"],
            "regime_note": regime.get("note", ""),
            "n_seeds": int(curve["n_seeds"].max()),
            **{f"{name}_ft{suffix}": ft[f"{name}{suffix}"] for name in ("accuracy", "gap") for suffix in ("_mean", "_lo", "_hi")},
            **{
                f"{name}_base{suffix}": base.loc[(model, dataset), f"{name}{suffix}"]
                if (model, dataset) in base.index
                else math.nan
                for name in ("accuracy", "gap")
                for suffix in ("_mean", "_lo", "_hi")
            },
            "bias_reduction_defined": bool(regime["gap_ft_defined"]),
            "r_star": math.nan,
            "best_in_zone_retention": math.nan,
            "sweet_spot": "",
            "resolved": False,
            "over_correction": "",
        }
        for column in ("bias_reduction", "accuracy_loss"):
            for suffix in ("_mean", "_std", "_lo", "_hi"):
                row[column + suffix] = math.nan
        row["mcnemar_p"] = math.nan
        in_zone = curve[zone.contains(curve["accuracy_loss_mean"])]
        over = in_zone[in_zone["bias_reduction_mean"] > 100]
        row["over_correction"] = ", ".join(f"{100 * r:g}%" for r in over["retention"])
        candidates = in_zone[(in_zone["bias_reduction_mean"] <= 100) & in_zone["bias_reduction_mean"].notna()]
        if not row["bias_reduction_defined"]:
            row["sweet_spot"] = "n/a: no fine-tuned gap to reduce"
        elif not len(candidates):
            row["sweet_spot"] = "none: no retention in the no-cost zone"
        else:
            candidates = candidates.sort_values("retention", ascending=False)
            best = candidates.loc[candidates["bias_reduction_mean"].idxmax()]
            row.update({"best_in_zone_retention": float(best["retention"]), "mcnemar_p": best["mcnemar_p"]})
            for column in ("bias_reduction", "accuracy_loss"):
                for suffix in ("_mean", "_std", "_lo", "_hi"):
                    row[column + suffix] = float(best[column + suffix])
            if best["bias_reduction_mean"] > 0:
                row.update(r_star=float(best["retention"]), sweet_spot="r*")
                row["resolved"] = zone.contains_interval(best["accuracy_loss_lo"], best["accuracy_loss_hi"])
            else:
                row["sweet_spot"] = "none: every in-zone retention widens the gap or leaves it"
        rows.append(row)
    return pd.DataFrame(rows)


def _needed(fixed_sq: float, scaled_sq: float, now: int, margin: float) -> float:
    """The least count c with fixed_sq + scaled_sq * now / c < margin**2 (inf when the fixed
    part alone fills the margin, NaN when the margin is not positive)."""
    if not margin > 0:
        return math.nan
    room = margin**2 - fixed_sq
    if room <= 0:
        return math.inf
    return float(max(1, math.floor(scaled_sq * now / room) + 1))


def zone_resolution(table1: pd.DataFrame, cells: pd.DataFrame, zone: NoCostZone) -> pd.DataFrame:
    """Table 1 with what it took, or would take, to resolve the no-cost zone at each method's
    best in-zone retention, and the seed-to-seed spread of the fine-tuned gap.

    The seed-mean interval of the accuracy loss (two-level: seeds and examples; all seeds are
    scored on the same split) has upper half-width h; one seed's own interval (examples only)
    has half-width h_ex (the mean over seeds). Read as h**2 = h_seed**2 + h_ex**2, the seed part
    shrinks as 1/seeds and the example part, shared by the seeds, as 1/examples. With the mean
    loss as measured, the zone is resolved when h < margin (the zone's bound minus the mean):
    ``seeds_to_resolve`` at the same examples and ``examples_to_resolve`` at the same seeds are
    the least counts that give that (inf: the other part alone is too wide; empty: one seed,
    so the seed part is unknown, or a mean loss outside the zone). A projection from the
    measured spread, not a guarantee: another run's spread differs. The lower bound of a zone
    with ``from_pp`` is treated alike with the lower half-widths.
    """
    table1 = table1.copy()
    finetuned = cells[cells["method"] == "finetuned"]
    for column in ("n_eval", "ft_gap_by_seed", "ft_gap_spread", "seeds_to_resolve", "examples_to_resolve"):
        table1[column] = math.nan if column != "ft_gap_by_seed" else ""
    for index, row in table1.iterrows():
        key = (row["model"], row["dataset"], row["finetune"])
        ft = finetuned[(finetuned["model"] == key[0]) & (finetuned["dataset"] == key[1]) & (finetuned["finetune"] == key[2])]
        ft = ft.sort_values("seed")
        if len(ft):
            table1.at[index, "n_eval"] = int(ft["n_eval"].median())
            table1.at[index, "ft_gap_by_seed"] = " / ".join(f"{g:.3f}" for g in ft["gap"])
            table1.at[index, "ft_gap_spread"] = float(ft["gap"].max() - ft["gap"].min())
        retention = row["best_in_zone_retention"]
        if pd.isna(retention) or int(row["n_seeds"]) < 2 or not zone.contains(row["accuracy_loss_mean"]):
            continue
        at = cells[
            (cells["model"] == key[0])
            & (cells["dataset"] == key[1])
            & (cells["finetune"] == key[2])
            & (cells["method"] == row["method"])
            & np.isclose(cells["retention"].astype(float), float(retention))
        ]
        mean, n_seeds, n_eval = float(row["accuracy_loss_mean"]), int(row["n_seeds"]), int(table1.at[index, "n_eval"])
        sides = [
            (
                float(row["accuracy_loss_hi"]) - mean,
                float((at["accuracy_loss_hi"] - at["accuracy_loss"]).mean()),
                zone.below_pp - mean,
            )
        ]
        if zone.from_pp is not None:
            sides.append(
                (
                    mean - float(row["accuracy_loss_lo"]),
                    float((at["accuracy_loss"] - at["accuracy_loss_lo"]).mean()),
                    mean - zone.from_pp,
                )
            )
        seeds, examples = [], []
        for half, half_ex, margin in sides:
            seed_sq = max(0.0, half**2 - half_ex**2)
            seeds.append(_needed(half_ex**2, seed_sq, n_seeds, margin))
            examples.append(_needed(seed_sq, half_ex**2, n_eval, margin))
        table1.at[index, "seeds_to_resolve"] = max(seeds)
        table1.at[index, "examples_to_resolve"] = max(examples)
    return table1


def _with_interval(mean: float, low: float, high: float, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if math.isnan(low) or math.isnan(high):
        return f"{mean:.{digits}f} [n/a]"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def table1_markdown(
    table1: pd.DataFrame, trajectories: pd.DataFrame, zone: NoCostZone, headline_method: str, level: float
) -> str:
    """Table 1 (natural regime) and, beside it, the boundary-regime datasets with their trajectory."""
    pct = f"{100 * level:g} %"
    methods = [headline_method] + sorted(set(table1["method"]) - {headline_method}) if len(table1) else [headline_method]
    natural = table1[table1["regime"] == "natural"] if len(table1) else table1
    header = ["model", "dataset", "fine-tune", "FT acc", "FT gap", "base acc", "base gap"]
    header += [f"{m}: bias red. % (r*)" for m in methods]
    lines = [
        f"Table 1: bias reduction at the sweet-spot retention r*, the largest seed-mean bias reduction "
        f"(at most 100 %) among the retentions in the no-cost zone ({zone.describe()}), with its {pct} "
        "bootstrap interval. n/a: no retention in the zone, or the FT gap's interval includes 0 (no gap "
        "to reduce). †: the accuracy-loss interval at r* reaches outside the zone, so the evaluation set "
        "does not resolve it as a no-cost edit. ‡ none: no sweet spot, since the method's best in-zone "
        "retention does not narrow the gap (its bias reduction is at most 0). Datasets in the boundary regime "
        "are listed below, not here.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for (model, dataset, finetune), group in natural.groupby(["model", "dataset", "finetune"], sort=False):
        first = group.iloc[0]
        cells = [
            model,
            dataset,
            finetune,
            _with_interval(first["accuracy_ft_mean"], first["accuracy_ft_lo"], first["accuracy_ft_hi"], 3),
            _with_interval(first["gap_ft_mean"], first["gap_ft_lo"], first["gap_ft_hi"], 3),
            _with_interval(first["accuracy_base_mean"], first["accuracy_base_lo"], first["accuracy_base_hi"], 3),
            _with_interval(first["gap_base_mean"], first["gap_base_lo"], first["gap_base_hi"], 3),
        ]
        for method in methods:
            match = group[group["method"] == method]
            if match.empty:
                cells.append("")
                continue
            row = match.iloc[0]
            value = _with_interval(row["bias_reduction_mean"], row["bias_reduction_lo"], row["bias_reduction_hi"])
            if not math.isnan(row["r_star"]):
                value += f" ({100 * row['r_star']:g}%)" + ("" if row["resolved"] else " †")
            elif not math.isnan(row["best_in_zone_retention"]):
                value = f"none: best in zone {value} at {100 * row['best_in_zone_retention']:g}% ‡"
            cells.append(value)
        lines.append("| " + " | ".join(cells) + " |")
    if natural.empty:
        lines.append("| " + " | ".join(["(no dataset in the natural regime)"] + [""] * (len(header) - 1)) + " |")
    lines += ["", _boundary_markdown(table1, trajectories, headline_method, pct)]
    prior = table1[table1["regime"] == "label prior"] if len(table1) else table1
    if len(prior):
        lines += ["Label prior, kept out of Table 1 (no task and no shortcut to edit):", ""]
        for (model, dataset, finetune), group in prior.groupby(["model", "dataset", "finetune"], sort=False):
            lines.append(f"- {model} / {dataset} / {finetune}: {group.iloc[0]['regime_note']}")
        lines.append("")
    return "\n".join(lines) + "\n"


def _boundary_markdown(table1: pd.DataFrame, trajectories: pd.DataFrame, headline_method: str, pct: str) -> str:
    boundary = table1[table1["regime"] == "boundary"] if len(table1) else table1
    if boundary.empty:
        return "Boundary regime: no dataset (every fine-tuned model is resolvably more accurate than its base).\n"
    lines = [
        f"Boundary regime, kept out of Table 1 (Shortcuts in the Tail, App. A): the fine-tuned model is not "
        f"resolvably more accurate than the base, so moving toward the base raises accuracy and the no-cost "
        f"zone does not apply. {headline_method} trajectory, accuracy and gap with {pct} intervals:",
        "",
        "| model | dataset | fine-tune | regime from | model / retention | accuracy | gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for (model, dataset, finetune), group in boundary.groupby(["model", "dataset", "finetune"], sort=False):
        source = group.iloc[0]["regime_source"]
        curve = trajectories[
            (trajectories["model"] == model)
            & (trajectories["dataset"] == dataset)
            & ((trajectories["finetune"] == finetune) | (trajectories["method"] == "base"))
        ]
        for _, row in curve.iterrows():
            label = row["method"] if pd.isna(row["retention"]) else f"{100 * row['retention']:g}%"
            lines.append(
                f"| {model} | {dataset} | {finetune} | {source} | {label} | "
                f"{_with_interval(row['accuracy_mean'], row['accuracy_lo'], row['accuracy_hi'], 3)} | "
                f"{_with_interval(row['gap_mean'], row['gap_lo'], row['gap_hi'], 3)} |"
            )
    return "\n".join(lines) + "\n"


def sweet_spot_cells(table1: pd.DataFrame, seeds, methods) -> tuple[list[dict], list[str]]:
    """The cells at Table 1's sweet spots (natural-regime rows of ``methods``, every seed), and
    a line for each such row that has none (no retention in the no-cost zone, or no gap)."""
    from spectral_edit.layout import format_retention

    cells, without = [], []
    for _, row in table1.iterrows():
        if row["method"] not in methods:
            continue
        where = f"{row['model']} / {row['dataset']} / {row['finetune']} / {row['method']}"
        if row["regime"] != "natural":
            without.append(f"{where}: {row['regime']} regime, kept out of Table 1's rows")
            continue
        if not np.isfinite(row["r_star"]):
            reason = row.get("sweet_spot") or "no retention in the no-cost zone, or the FT gap's interval includes 0"
            without.append(f"{where}: no sweet spot ({reason})")
            continue
        for seed in seeds:
            cells.append(
                {
                    "model": row["model"],
                    "dataset": row["dataset"],
                    "seed": int(seed),
                    "finetune": row["finetune"],
                    "method": row["method"],
                    "retention": format_retention(float(row["r_star"])),
                }
            )
    return cells, without
