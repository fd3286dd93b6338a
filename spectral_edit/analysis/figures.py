"""The papers' figures, drawn from the aggregated tables and the SVD spectra.

trajectory          accuracy loss vs bias reduction, parametric in retention, for every method
                    with a retention; no-cost zone shaded, sweet spots ringed (Shortcuts Fig. 2);
                    datasets in the boundary regime in panels of their own (App. A)
retention_sweep     accuracy and gap vs retention, rescaled FT -> base (Fig. 3/6)
method_comparison   every method side by side: normalised gap vs retention (methods without a
                    retention as horizontal lines), and accuracy vs gap with the fixed-setting
                    methods and the training-time controls as points (Fig. 4/7)
cell_comparison     one point per (dataset, seed) cell and method: its best in-zone point in that
                    cell, accuracy loss against bias reduction (the comparison of issue 22)
spectrum            singular-value decay of dW on representative MLP matrices, and the
                    fraction of components holding 90% of the energy (Fig. 10)
controls_pareto     (with controls) the top-k trajectory and the LoRA / SpecLoRA points in the
                    accuracy-gap plane, no-cost zone, best in-zone point per method ringed (Fig. 5/8)
layer_subsets       (with the layer-subset methods) |gap| when only one subset of matrices is
                    truncated, against the fine-tuned and base levels (Fig. 9)
recovery_preservation  (with held-out benchmarks) % healed on the damaged partition against
                    % preserved on the improved one, per method (Spectral Unforgetting, Fig. 1)
surgery_guided_vs_random  (with target benchmarks and the random_index and grad_direction
                    policies) the improvement of each over the unedited model (Spectral Surgery Fig. 3)
surgery_reward_risk (with target benchmarks) per edit, the mean improvement on the aligned
                    benchmarks against the drop on the risk benchmarks (Spectral Surgery Fig. 4)
Every figure is written as PNG and PDF. Error bars and bands are the bootstrap intervals of
the tables (spectral_edit/analysis/intervals.py); the shaded no-cost zone is Table 1's
(spectral_edit/analysis/table1.NoCostZone).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from spectral_edit.analysis.table1 import NoCostZone  # noqa: E402
from spectral_edit.atomic import atomic_path  # noqa: E402
from spectral_edit.edit.svd_cache import read_spectrum  # noqa: E402
from spectral_edit.layout import CORE_FIGURES, SUBSET_METHODS, figure_names  # noqa: E402,F401  (figure_names: re-exported)

ZONE_COLOUR = "#2ca02c"
METHOD_COLOURS = {"top_k": "#1f77b4", "bottom_k": "#d62728", "random_k": "#7f7f7f", "uniform_shrink": "#ff7f0e"}


def save_figure(fig, out_stem: Path, formats: Sequence[str]) -> list[Path]:
    written = []
    for ext in formats:
        path = Path(out_stem).with_suffix(f".{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight", dpi=150)
        written.append(path)
    plt.close(fig)
    return written


def _colour(method: str, methods: Sequence[str]) -> str:
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    others = [m for m in methods if m not in METHOD_COLOURS]
    return plt.get_cmap("tab10")((3 + others.index(method)) % 10 if method in others else 9)


def _ci(frame: pd.DataFrame, name: str) -> np.ndarray:
    """Asymmetric error bars (2 x n) from the interval columns ``{name}_lo``/``_hi`` around
    ``{name}_mean``; a missing interval draws no bar."""
    mean = frame[f"{name}_mean"].to_numpy(float)
    if f"{name}_lo" not in frame:
        return np.zeros((2, len(frame)))
    low, high = frame[f"{name}_lo"].to_numpy(float), frame[f"{name}_hi"].to_numpy(float)
    return np.nan_to_num(np.clip(np.vstack([mean - low, high - mean]), 0, None))


def _shade_loss_zone(ax, zone: NoCostZone) -> None:
    """The no-cost zone on an accuracy-loss x axis (pp), after the data set the limits."""
    left, right = ax.get_xlim()
    start = left if zone.from_pp is None else zone.from_pp
    ax.axvspan(start, zone.below_pp, color=ZONE_COLOUR, alpha=0.15, label=f"no-cost zone ({zone.describe()})")
    ax.set_xlim(min(left, start), max(right, zone.below_pp + 0.5))


def _shade_accuracy_zone(ax, zone: NoCostZone, acc_ft: float) -> None:
    """The no-cost zone on an accuracy y axis: accuracies whose loss against acc_ft is in it."""
    bottom, top = ax.get_ylim()
    upper = top if zone.from_pp is None else acc_ft - zone.from_pp / 100
    ax.axhspan(
        acc_ft - zone.below_pp / 100,
        max(upper, acc_ft - zone.below_pp / 100),
        color=ZONE_COLOUR,
        alpha=0.12,
        label=f"no-cost zone ({zone.describe()})",
    )
    ax.set_ylim(min(bottom, acc_ft - zone.below_pp / 100), max(top, upper))


def _boundary(regimes: pd.DataFrame | None) -> set[tuple[str, str, str]]:
    if regimes is None or regimes.empty:
        return set()
    rows = regimes[regimes["regime"] == "boundary"]
    return set(zip(rows["model"], rows["dataset"], rows["finetune"]))


def _no_gap(regimes: pd.DataFrame | None) -> set[tuple[str, str, str]]:
    """Checkpoints whose fine-tuned gap is not resolved from 0 (their bias reductions and
    normalised gaps are ratios of noise: Table 1 says n/a), or that learned only the label
    prior (no task to keep): the figures leave them out."""
    if regimes is None or regimes.empty:
        return set()
    prior = regimes["regime"] == "label prior" if "regime" in regimes else False
    rows = regimes[~regimes["gap_ft_defined"].astype(bool) | prior]
    return set(zip(rows["model"], rows["dataset"], rows["finetune"]))


def _edits(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[~summary["method"].isin(["base", "finetuned"])]


def _with_retention(summary: pd.DataFrame) -> pd.DataFrame:
    return _edits(summary)[lambda f: f["retention"].notna()].sort_values("retention", ascending=False)


def _edited_finetunes(summary: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(_edits(summary)["finetune"].dropna()))


def _panels(summary: pd.DataFrame) -> list[tuple[str, str, str]]:
    edited = _edits(summary)
    return list(dict.fromkeys(zip(edited["model"], edited["dataset"], edited["finetune"])))


def _log_retention_axis(ax, retentions) -> None:
    ticks = sorted(set(np.round(np.asarray(retentions, float), 4)))
    ax.set_xscale("log")
    if ticks:
        ax.set_xlim(max(ticks) * 1.3, min(ticks) / 1.3)  # decreasing retention to the right
        ax.set_xticks(ticks, [f"{100 * t:g}%" for t in ticks], fontsize=7)
    ax.minorticks_off()


def trajectory(
    summary: pd.DataFrame, table1: pd.DataFrame, analysis: Mapping, out_stem: Path, formats, regimes: pd.DataFrame | None = None
) -> list[Path]:
    zone = NoCostZone.from_analysis(analysis)
    data = _with_retention(summary)
    data = data[data["finetune"] == data["reference"]]  # edits of a recipe
    no_gap = _no_gap(regimes)
    data = data[[k not in no_gap for k in zip(data["model"], data["dataset"], data["finetune"])]]
    boundary = _boundary(regimes)
    data = data.assign(
        _regime=["boundary" if k in boundary else "natural" for k in zip(data["model"], data["dataset"], data["finetune"])]
    )
    methods = list(dict.fromkeys(data["method"]))
    panels = list(dict.fromkeys(zip(data["model"], data["finetune"], data["_regime"]))) or [("", "", "natural")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.8 * len(panels), 4.8), squeeze=False)
    for ax, (model, finetune, regime) in zip(axes[0], panels):
        ax.axhline(0, color="black", lw=0.6)
        ax.axhline(100, color="black", lw=0.6, ls=":")
        ax.axvline(0, color="black", lw=0.6)
        subset = data[(data["model"] == model) & (data["finetune"] == finetune) & (data["_regime"] == regime)]
        datasets = list(dict.fromkeys(subset["dataset"]))
        styles = ["-", "--", ":", "-."]
        for (dataset, method), curve in subset.groupby(["dataset", "method"], sort=False):
            colour = _colour(method, methods)
            style = styles[datasets.index(dataset) % len(styles)]
            x, y = curve["accuracy_loss_mean"].to_numpy(), curve["bias_reduction_mean"].to_numpy()
            label = method if len(datasets) == 1 else f"{dataset} / {method}"
            spot = (
                table1[
                    (table1["model"] == model)
                    & (table1["dataset"] == dataset)
                    & (table1["finetune"] == finetune)
                    & (table1["method"] == method)
                ]
                if len(table1)
                else table1
            )
            if regime == "natural" and len(spot) and str(spot.iloc[0].get("sweet_spot", "")).startswith("none: every"):
                label += " (no sweet spot: widens the gap in the zone)"
            ax.errorbar(
                x,
                y,
                xerr=_ci(curve, "accuracy_loss"),
                yerr=_ci(curve, "bias_reduction"),
                color=colour,
                ls=style,
                marker="o",
                ms=4,
                lw=1.4,
                capsize=2,
                elinewidth=0.8,
                label=label,
            )
            for xi, yi, r in zip(x, y, curve["retention"]):
                ax.annotate(f"{100 * r:g}%", (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=6, color=colour)
            if regime == "natural" and len(spot) and not math.isnan(spot.iloc[0]["r_star"]):
                ring = curve[np.isclose(curve["retention"], spot.iloc[0]["r_star"])]
                ax.scatter(
                    ring["accuracy_loss_mean"],
                    ring["bias_reduction_mean"],
                    s=260,
                    facecolors="none",
                    edgecolors=colour,
                    linewidths=2,
                    zorder=5,
                )
        # One dataset in the panel: name it (several are told apart in the legend).
        where = f"{datasets[0]} / " if len(datasets) == 1 else ""
        if regime == "natural":
            _shade_loss_zone(ax, zone)
            ax.set_title(f"{where}{model} ({finetune}): parametric in retention", fontsize=9)
        else:
            ax.set_title(f"{where}{model} ({finetune}): boundary regime, not in Table 1", fontsize=9)
        ax.set_xlabel("accuracy loss (pp)")
        ax.set_ylabel("bias reduction (%)  (above 100: gap flipped sign)")
        ax.legend(fontsize=7, loc="best")
    left_out = sorted({d for (_, d, _) in no_gap})
    note = f"; left out, no fine-tuned gap to reduce: {', '.join(left_out)}" if left_out else ""
    fig.suptitle(f"Bias vs accuracy trajectories (rings: sweet spot r*; bars: bootstrap intervals{note})", fontsize=10)
    return save_figure(fig, out_stem, formats)


def cell_comparison_figure(best: pd.DataFrame | None, analysis: Mapping, out_stem: Path, formats) -> list[Path]:
    """One point per (model, dataset, seed) cell and method: the method's best in-zone point in
    that cell (stats.best_in_zone_per_cell), accuracy loss against bias reduction, with the
    cell's intervals over the examples."""
    zone = NoCostZone.from_analysis(analysis)
    best = best if best is not None else pd.DataFrame(columns=["method", "dataset"])
    methods = list(dict.fromkeys(best["method"]))
    datasets = list(dict.fromkeys(best["dataset"]))
    markers = ["o", "s", "^", "D", "v", "P"]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.axhline(0, color="black", lw=0.6)
    ax.axvline(0, color="black", lw=0.6)
    for (dataset, method), points in best.groupby(["dataset", "method"], sort=False):
        x, y = points["accuracy_loss"].to_numpy(float), points["bias_reduction"].to_numpy(float)
        ax.errorbar(
            x,
            y,
            xerr=[x - points["accuracy_loss_lo"], points["accuracy_loss_hi"] - x],
            yerr=[y - points["bias_reduction_lo"], points["bias_reduction_hi"] - y],
            ls="none",
            marker=markers[datasets.index(dataset) % len(markers)],
            ms=6,
            color=_colour(method, methods),
            elinewidth=0.6,
            capsize=2,
            alpha=0.85,
            label=f"{dataset} / {method}",
        )
    left, right = ax.get_xlim()
    left = min(left, zone.below_pp - 1, zone.from_pp if zone.from_pp is not None else left)
    right = max(right, zone.below_pp + 0.5)
    ax.set_xlim(left, right)
    start = left if zone.from_pp is None else zone.from_pp  # a gain is inside the zone unless from_pp says otherwise
    ax.axvspan(start, zone.below_pp, color=ZONE_COLOUR, alpha=0.12, label=f"no-cost zone ({zone.describe()})")
    if best.empty:
        ax.text(0.5, 0.5, "no in-zone point in any natural-regime cell", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("accuracy loss at the cell's best in-zone retention (pp)")
    ax.set_ylabel("best in-zone bias reduction (%)")
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"Each method's best in-zone point per (dataset, seed) cell ({zone.describe()})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_stem, formats)


def retention_sweep(
    summary: pd.DataFrame, analysis: Mapping, out_stem: Path, formats, regimes: pd.DataFrame | None = None
) -> list[Path]:
    method = analysis.get("sweet_spot_method", "top_k")
    data = _with_retention(summary)
    data = data[data["method"] == method]
    boundary = _boundary(regimes)
    columns = list(dict.fromkeys(zip(data["model"], data["finetune"]))) or [("", "")]
    datasets = list(dict.fromkeys(data["dataset"])) or [""]
    fig, axes = plt.subplots(len(datasets), len(columns), figsize=(5 * len(columns), 3.6 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        for col, (model, finetune) in enumerate(columns):
            ax = axes[row][col]
            curve = data[(data["model"] == model) & (data["dataset"] == dataset) & (data["finetune"] == finetune)]
            r = curve["retention"].to_numpy()
            for column, colour, label in (("acc_ft_to_base", "#1f77b4", "accuracy"), ("gap_ft_to_base", "#d62728", "gap")):
                mean = curve[f"{column}_mean"].to_numpy()
                low, high = mean - _ci(curve, column)[0], mean + _ci(curve, column)[1]
                ax.plot(r, mean, marker="o", ms=4, color=colour, label=label)
                ax.fill_between(r, low, high, color=colour, alpha=0.2, lw=0)
            ax.axhline(0, color="black", lw=0.8, ls="--")
            ax.axhline(1, color="black", lw=0.8, ls=":")
            _log_retention_axis(ax, r)
            regime = " — boundary regime" if (model, dataset, finetune) in boundary else ""
            ax.set_title(f"{dataset} / {model} ({finetune}){regime}", fontsize=9)
            ax.set_xlabel("retention r")
            ax.set_ylabel("rescaled: 0 = FT, 1 = base")
            ax.legend(fontsize=8)
    fig.suptitle(f"{method} retention sweep, accuracy and gap rescaled FT → base (bands: bootstrap intervals)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out_stem, formats)


def _reference_rows(summary, model, dataset):
    refs = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
    return refs[refs["method"] == "finetuned"], refs[refs["method"] == "base"]


def method_comparison(
    summary: pd.DataFrame, analysis: Mapping, out_stem: Path, formats, regimes: pd.DataFrame | None = None
) -> list[Path]:
    zone = NoCostZone.from_analysis(analysis)
    boundary = _boundary(regimes)
    no_gap = _no_gap(regimes)
    edited = _edits(summary)
    methods = list(dict.fromkeys(edited["method"]))
    edited_finetunes = _edited_finetunes(summary)
    panels = _panels(summary) or [("", "", "")]
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 4.4 * len(panels)), squeeze=False)
    for row, (model, dataset, finetune) in enumerate(panels):
        left, right = axes[row]
        here = edited[(edited["model"] == model) & (edited["dataset"] == dataset) & (edited["finetune"] == finetune)]
        finetuned, base = _reference_rows(summary, model, dataset)
        own_ft = finetuned[finetuned["finetune"] == finetune]
        controls = finetuned[~finetuned["finetune"].isin(edited_finetunes)]
        sweep = here[here["retention"].notna()].sort_values("retention", ascending=False)
        gap_defined = (model, dataset, finetune) not in no_gap
        for method, curve in sweep.groupby("method", sort=False):
            colour = _colour(method, methods)
            if gap_defined:
                left.errorbar(
                    curve["retention"],
                    curve["normalised_gap_mean"],
                    yerr=_ci(curve, "normalised_gap"),
                    marker="o",
                    ms=4,
                    color=colour,
                    capsize=2,
                    elinewidth=0.8,
                    label=method,
                )
            right.errorbar(
                curve["gap_mean"],
                curve["accuracy_mean"],
                xerr=_ci(curve, "gap"),
                yerr=_ci(curve, "accuracy"),
                marker="o",
                ms=4,
                color=colour,
                capsize=2,
                elinewidth=0.8,
                label=method,
            )
        for method, point in here[here["retention"].isna()].groupby("method", sort=False):
            colour = _colour(method, methods)
            if gap_defined:
                left.axhline(point["normalised_gap_mean"].iloc[0], color=colour, ls="-.", lw=1.2, label=f"{method} (fixed)")
            right.errorbar(
                point["gap_mean"],
                point["accuracy_mean"],
                xerr=_ci(point, "gap"),
                yerr=_ci(point, "accuracy"),
                marker="P",
                ms=9,
                color=colour,
                ls="none",
                label=method,
            )
        for _, control in controls.iterrows():
            right.scatter(control["gap_mean"], control["accuracy_mean"], marker="D", s=40, color="#8c564b", zorder=6)
            right.annotate(
                control["finetune"],
                (control["gap_mean"], control["accuracy_mean"]),
                textcoords="offset points",
                xytext=(4, -8),
                fontsize=6,
                color="#8c564b",
            )
        left.axhline(1, color="black", ls="--", lw=0.8, label="fine-tuned")
        left.axhline(0, color="black", lw=0.6)
        if not gap_defined:
            left.text(
                0.5,
                0.5,
                "fine-tuned gap not resolved from 0:\nno normalised gap",
                transform=left.transAxes,
                ha="center",
                va="center",
                fontsize=8,
            )
        if len(sweep):
            _log_retention_axis(left, sweep["retention"])
        left.set_xlabel("retention r")
        left.set_ylabel("normalised gap  Δ_r / |Δ_ft|")
        regime = ", boundary regime" if (model, dataset, finetune) in boundary else ""
        left.set_title(f"{dataset} / {model} ({finetune}{regime})", fontsize=9)
        left.legend(fontsize=7)
        if len(own_ft):
            acc_ft = float(own_ft["accuracy_mean"].iloc[0])
            if not regime:
                _shade_accuracy_zone(right, zone, acc_ft)
            right.errorbar(
                own_ft["gap_mean"],
                own_ft["accuracy_mean"],
                xerr=_ci(own_ft, "gap"),
                yerr=_ci(own_ft, "accuracy"),
                marker="*",
                ms=13,
                color="black",
                ls="none",
                zorder=6,
                label="fine-tuned",
            )
        if len(base):
            right.errorbar(
                base["gap_mean"],
                base["accuracy_mean"],
                xerr=_ci(base, "gap"),
                yerr=_ci(base, "accuracy"),
                marker="s",
                ms=7,
                color="#9467bd",
                ls="none",
                zorder=6,
                label="base",
            )
        if len(controls):
            right.scatter([], [], marker="D", s=40, color="#8c564b", label="training-time controls")
        right.set_xlabel("gap  Δ = acc_maj − acc_min")
        right.set_ylabel("accuracy")
        right.set_title(f"{dataset} / {model} ({finetune}): accuracy vs gap", fontsize=9)
        right.legend(fontsize=7)
    fig.suptitle("Methods side by side (bars: bootstrap intervals)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out_stem, formats)


def controls_pareto(
    summary: pd.DataFrame, analysis: Mapping, controls: Mapping[str, Mapping], out_stem: Path, formats
) -> list[Path]:
    """Top-k on the reference fine-tune against the training-time controls (LoRA sweep)."""
    zone = NoCostZone.from_analysis(analysis)
    reference = analysis.get("reference_finetune", "full")
    method = analysis.get("sweet_spot_method", "top_k")
    pairs = list(dict.fromkeys(zip(summary["model"], summary["dataset"])))
    pairs = [p for p in pairs if p[0] is not None] or [("", "")]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.8 * len(pairs), 4.8), squeeze=False)
    for ax, (model, dataset) in zip(axes[0], pairs):
        finetuned, base = _reference_rows(summary, model, dataset)
        ref = finetuned[finetuned["finetune"] == reference]
        if ref.empty:
            ax.set_title(f"{dataset} / {model}: no {reference} fine-tune")
            continue
        acc_ft = float(ref["accuracy_mean"].iloc[0])
        sweep = summary[
            (summary["model"] == model)
            & (summary["dataset"] == dataset)
            & (summary["finetune"] == reference)
            & (summary["method"] == method)
        ].sort_values("retention", ascending=False)
        points = {method: pd.concat([ref, sweep])}
        ax.errorbar(
            sweep["gap_mean"],
            sweep["accuracy_mean"],
            xerr=_ci(sweep, "gap"),
            yerr=_ci(sweep, "accuracy"),
            marker="o",
            ms=4,
            color="#1f77b4",
            capsize=2,
            elinewidth=0.8,
            label=f"{method} ({reference})",
        )
        for kind in sorted({c["kind"] for c in controls.values()}):
            names = [n for n, c in controls.items() if c["kind"] == kind]
            rows = finetuned[finetuned["finetune"].isin(names)]
            sizes = [20 + 2 * float(controls[n].get("rank", 8)) for n in rows["finetune"]]
            colour = "#d62728" if kind == "lora" else "#ff7f0e"
            ax.scatter(
                rows["gap_mean"], rows["accuracy_mean"], s=sizes, marker="D", color=colour, alpha=0.8, label=kind, zorder=5
            )
            for _, r in rows.iterrows():
                ax.annotate(
                    r["finetune"], (r["gap_mean"], r["accuracy_mean"]), textcoords="offset points", xytext=(5, 3), fontsize=6
                )
            points[kind] = rows
        for name, frame in points.items():
            inside = frame[zone.contains(100 * (acc_ft - frame["accuracy_mean"]))]
            if len(inside):
                best = inside.loc[inside["gap_mean"].abs().idxmin()]
                colour = "#1f77b4" if name == method else ("#d62728" if name == "lora" else "#ff7f0e")
                ax.scatter(
                    [best["gap_mean"]],
                    [best["accuracy_mean"]],
                    s=300,
                    facecolors="none",
                    edgecolors=colour,
                    linewidths=2,
                    zorder=6,
                )
        _shade_accuracy_zone(ax, zone, acc_ft)
        ax.scatter(
            ref["gap_mean"], ref["accuracy_mean"], marker="*", s=180, color="black", zorder=7, label=f"{reference} fine-tune"
        )
        if len(base):
            ax.scatter(base["gap_mean"], base["accuracy_mean"], marker="s", s=60, color="#9467bd", zorder=7, label="base")
        ax.set_xlabel("gap  Δ")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{dataset} / {model}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Post-hoc top-k vs rank-constrained training (rings: best in-zone point per method)", fontsize=10)
    return save_figure(fig, out_stem, formats)


def layer_subsets(summary: pd.DataFrame, out_stem: Path, formats) -> list[Path]:
    """|gap| with truncation on one subset of matrices, against FT and base."""
    panels = [p for p in _panels(summary) if len(summary[(summary["finetune"] == p[2]) & summary["method"].isin(SUBSET_METHODS)])]
    panels = panels or [("", "", "")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (model, dataset, finetune) in zip(axes[0], panels):
        here = summary[(summary["model"] == model) & (summary["dataset"] == dataset) & (summary["finetune"] == finetune)]
        finetuned, base = _reference_rows(summary, model, dataset)
        own = finetuned[finetuned["finetune"] == finetune]
        labels, values, errors = [], [], []
        for method in SUBSET_METHODS:
            row = here[here["method"] == method]
            if len(row):
                labels.append(method.replace("top_k_", "").replace("_", " "))
                values.append(abs(float(row["gap_mean"].iloc[0])))
                low, high = _ci(row, "gap")[:, 0]  # interval of the gap; of |gap| when it keeps its sign
                errors.append((low, high) if row["gap_mean"].iloc[0] >= 0 else (high, low))
        bars = ax.bar(range(len(values)), values, yerr=np.array(errors).T if errors else None, color="#1f77b4", capsize=3)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
        if len(own):
            ax.axhline(abs(float(own["gap_mean"].iloc[0])), color="black", ls="--", lw=1, label="fine-tuned |Δ|")
        if len(base):
            ax.axhline(abs(float(base["gap_mean"].iloc[0])), color="black", ls=":", lw=1, label="base |Δ|")
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel("|gap Δ|")
        ax.set_title(f"{dataset} / {model} ({finetune})", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Per-layer subset compression (truncation only on the subset)", fontsize=11)
    return save_figure(fig, out_stem, formats)


def _bars(frame: pd.DataFrame, name: str) -> np.ndarray:
    """Error bars (2 x n) from ``{name}_lo``/``_hi`` around ``{name}``; none where missing."""
    value = frame[name].to_numpy(float)
    low, high = frame[f"{name}_lo"].to_numpy(float), frame[f"{name}_hi"].to_numpy(float)
    return np.nan_to_num(np.clip(np.vstack([value - low, high - value]), 0, None))


def recovery_preservation(repair_summary: pd.DataFrame, out_stem: Path, formats) -> list[Path]:
    """% healed (damaged partition) against % preserved (improved partition) per method, with
    the bootstrap intervals of both; an empty partition is drawn at 0 healed / 100 preserved."""
    data = repair_summary.dropna(subset=["healed", "preserved"], how="all")
    pairs = list(dict.fromkeys(zip(repair_summary["model"], repair_summary["dataset"]))) or [("", "")]
    methods = list(dict.fromkeys(data["method"]))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.6 * len(pairs), 5.0), squeeze=False)
    h = np.linspace(40.5, 100, 200)
    for ax, (model, dataset) in zip(axes[0], pairs):
        ax.plot(h, 80 * h / (2 * h - 80), color="black", ls=":", lw=0.8, label="HM(healed, preserved) = 80")
        here = data[(data["model"] == model) & (data["dataset"] == dataset)]
        recipes = list(dict.fromkeys(here["finetune"]))
        for (finetune, method), group in here.groupby(["finetune", "method"], sort=False):
            colour = "black" if method == "finetuned" else _colour(method, methods)
            group = group.sort_values("retention", ascending=False)
            x, y = group["healed"].fillna(0.0), group["preserved"].fillna(100.0)
            marker = "oDs^v<>"[recipes.index(finetune) % 7]  # one marker per fine-tuning recipe
            style = dict(marker=marker, ms=4) if group["retention"].notna().any() else dict(marker=marker, ms=7, ls="none")
            ax.errorbar(
                x, y, xerr=_bars(group, "healed"), yerr=_bars(group, "preserved"), color=colour, capsize=2, elinewidth=0.7,
                label=f"{method} ({finetune})", **style,
            )  # fmt: skip
        ax.set_xlim(-5, 105)
        ax.set_ylim(-5, 105)
        ax.set_xlabel("% healed (damaged benchmarks)")
        ax.set_ylabel("% preserved (improved benchmarks)")
        ax.set_title(f"{dataset} / {model}", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(
        "Recovery × preservation on held-out benchmarks with bootstrap intervals "
        "(an empty partition is drawn at 0 healed / 100 preserved)",
        fontsize=9,
    )
    return save_figure(fig, out_stem, formats)


def surgery_guided_vs_random(points: pd.DataFrame, out_stem: Path, formats) -> list[Path]:
    """Spectral Surgery Fig. 3: per (model, task, benchmark) the improvement over the unedited
    model of random_index (x) and of grad_direction (y), with bootstrap intervals; above the
    diagonal the gradient signal beats random perturbation."""
    fig, ax = plt.subplots(figsize=(5.4, 5.0))
    values = np.concatenate([points[c].to_numpy(float) for c in ("random_lo", "random_hi", "guided_lo", "guided_hi")])
    values = values[np.isfinite(values)]
    reach = max(0.01, float(np.abs(values).max()) * 1.1) if values.size else 0.05
    ax.plot([-reach, reach], [-reach, reach], color="black", ls=":", lw=0.8, label="guided = random")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    for i, (_, row) in enumerate(points.iterrows()):
        frame = points.iloc[[i]]
        ax.errorbar(
            frame["random"], frame["guided"], xerr=_bars(frame, "random"), yerr=_bars(frame, "guided"), marker="o", ms=6,
            capsize=2, color=plt.get_cmap("tab10")(i % 10),
            label=f"{row['model']} / {row['dataset']} ({row['finetune']}): {row['benchmark']}",
        )  # fmt: skip
    ax.set_xlim(-reach, reach)
    ax.set_ylim(-reach, reach)
    first = points.iloc[0] if len(points) else None
    ax.set_xlabel(f"improvement of {first['random_method'] if first is not None else 'random_index'} over the unedited model")
    ax.set_ylabel(f"improvement of {first['guided_method'] if first is not None else 'grad_direction'} over the unedited model")
    ax.legend(fontsize=6)
    ax.set_title("Guided vs random spectral edits (Spectral Surgery Fig. 3)", fontsize=9)
    return save_figure(fig, out_stem, formats)


def surgery_reward_risk(points: pd.DataFrame, out_stem: Path, formats, risk_benchmarks: Sequence[str]) -> list[Path]:
    """Spectral Surgery Fig. 4: per model and edit, the reward (mean improvement on the aligned
    target benchmarks) against the risk (the drop on the risk benchmarks, clipped at 0)."""
    panels = list(dict.fromkeys(zip(points["model"], points["finetune"]))) or [("", "")]
    methods = list(dict.fromkeys(points["method"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 5.0), squeeze=False)
    for ax, (model, finetune) in zip(axes[0], panels):
        here = points[(points["model"] == model) & (points["finetune"] == finetune)]
        for _, row in here.iterrows():
            frame = here.loc[[row.name]]
            label = row["method"] if pd.isna(row["retention"]) else f"{row['method']} @ {row['retention']:g}"
            ax.errorbar(
                frame["risk"].fillna(0.0), frame["reward"], xerr=_bars(frame, "risk"), yerr=_bars(frame, "reward"), marker="o",
                ms=6, capsize=2, ls="none", color=_colour(row["method"], methods), label=label,
            )  # fmt: skip
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel(f"risk: drop on {', '.join(risk_benchmarks) or 'the risk benchmarks'} (clipped at 0)")
        ax.set_ylabel("reward: mean improvement on the aligned target benchmarks")
        ax.set_title(f"{model} ({finetune})", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle("Reward against risk of each edit (Spectral Surgery Fig. 4), bootstrap intervals", fontsize=9)
    return save_figure(fig, out_stem, formats)


_LAYER = re.compile(r"\.(\d+)\.")


def representative_mlp(names: Sequence[str], count: int = 4) -> list[str]:
    """MLP matrices of ``count`` layers spread evenly over depth (the paper's four MLP layers).

    Within a layer it takes the MLP matrix whose name sorts first (for Llama-style models,
    down_proj)."""
    by_layer: dict[int, str] = {}
    for name in sorted(names):
        match = _LAYER.search(name)
        if match and "mlp" in name:
            by_layer.setdefault(int(match.group(1)), name)
    layers = sorted(by_layer)
    if not layers:
        return []
    picks = np.unique(np.linspace(0, len(layers) - 1, min(count, len(layers))).round().astype(int))
    return [by_layer[layers[i]] for i in picks]


def spectrum(spectra: Sequence[Mapping], out_stem: Path, formats) -> list[Path]:
    """``spectra``: entries {model, dataset, seed, finetune, path} of spectrum.json files."""
    grid = np.linspace(0, 1, 200)
    curves: dict[tuple[str, str], list[np.ndarray]] = {}
    energy: dict[tuple[str, str], list[float]] = {}
    energy_mlp: dict[tuple[str, str], list[float]] = {}
    several = len({entry.get("finetune") for entry in spectra}) > 1
    for entry in spectra:
        content = read_spectrum(entry["path"])
        by_name = {m["name"]: m for m in content["matrices"]}
        label = f"{entry['dataset']} / {entry.get('finetune')}" if several else entry["dataset"]
        key = (entry["model"], label)
        for name in representative_mlp(list(by_name)):
            s = np.asarray(by_name[name]["singular_values"], float)
            if s.max() > 0:
                x = (np.arange(len(s)) + 0.5) / len(s)
                curves.setdefault(key, []).append(np.interp(grid, x, s / s.max()))
                energy_mlp.setdefault(key, []).append(by_name[name]["energy90_fraction"])
        energy.setdefault(key, []).extend(
            m["energy90_fraction"] for m in content["matrices"] if not math.isnan(m["energy90_fraction"])
        )
    models = list(dict.fromkeys(entry["model"] for entry in spectra))
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 7.5), squeeze=False)
    for col, model in enumerate(models):
        top, bottom = axes[0][col], axes[1][col]
        labels = [d for (m, d) in energy if m == model]
        for i, label in enumerate(labels):
            colour = plt.get_cmap("tab10")(i % 10)
            stack = np.array(curves.get((model, label), []))
            if stack.size:
                mean, std = stack.mean(0), stack.std(0)
                top.plot(grid, mean, color=colour, label=label)
                top.fill_between(grid, np.clip(mean - std, 1e-6, None), mean + std, color=colour, alpha=0.2, lw=0)
        top.set_yscale("log")
        top.set_xlabel("component index i / r")
        top.set_ylabel("σ_i / σ_max")
        top.set_title(f"{model}: dW spectrum, representative MLP matrices (mean ± std)", fontsize=9)
        top.legend(fontsize=8)
        positions = np.arange(len(labels))
        all_mean = [100 * np.mean(energy[(model, d)]) for d in labels]
        mlp_mean = [100 * np.mean(energy_mlp.get((model, d), [np.nan])) for d in labels]
        bars = bottom.bar(positions - 0.2, all_mean, width=0.4, label="all decomposed matrices")
        bars_mlp = bottom.bar(positions + 0.2, mlp_mean, width=0.4, label="representative MLP")
        for bar_group in (bars, bars_mlp):
            bottom.bar_label(bar_group, fmt="%.0f%%", fontsize=8)
        bottom.set_xticks(positions, labels, fontsize=8)
        bottom.set_ylim(0, 105)
        bottom.set_ylabel("% of components for 90% of energy")
        bottom.legend(fontsize=8)
    fig.suptitle("Singular-value decay of dW = W_ft − W_base", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out_stem, formats)


def draw_all(
    summary: pd.DataFrame,
    table1: pd.DataFrame,
    spectra: Sequence[Mapping],
    analysis: Mapping,
    out_dir: str | Path,
    names: Sequence[str],
    controls: Mapping[str, Mapping] | None = None,
    repair_summary: pd.DataFrame | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    regimes: pd.DataFrame | None = None,
    guided_vs_random: pd.DataFrame | None = None,
    reward_risk: pd.DataFrame | None = None,
    cell_comparison: pd.DataFrame | None = None,
) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawers = {
        "trajectory": lambda stem: trajectory(summary, table1, analysis, stem, formats, regimes),
        "retention_sweep": lambda stem: retention_sweep(summary, analysis, stem, formats, regimes),
        "method_comparison": lambda stem: method_comparison(summary, analysis, stem, formats, regimes),
        "cell_comparison": lambda stem: cell_comparison_figure(cell_comparison, analysis, stem, formats),
        "spectrum": lambda stem: spectrum(spectra, stem, formats),
        "controls_pareto": lambda stem: controls_pareto(summary, analysis, controls or {}, stem, formats),
        "layer_subsets": lambda stem: layer_subsets(summary, stem, formats),
        "recovery_preservation": lambda stem: recovery_preservation(repair_summary, stem, formats),
        "surgery_guided_vs_random": lambda stem: surgery_guided_vs_random(guided_vs_random, stem, formats),
        "surgery_reward_risk": lambda stem: surgery_reward_risk(
            reward_risk, stem, formats, list(analysis.get("risk_benchmarks") or [])
        ),
    }
    written = []
    for name in names:
        written += drawers[name](out_dir / name)
    return written
