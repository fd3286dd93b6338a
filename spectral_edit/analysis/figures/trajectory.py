"""Accuracy loss vs bias reduction, parametric in retention, for every method with a retention;
the no-cost zone shaded, sweet spots ringed (Shortcuts in the Tail, Fig. 2); datasets in the
boundary regime in panels of their own (App. A)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from spectral_edit.analysis.figures import FigureInputs, label_word_tasks, register


@register("trajectory", order=10, when=label_word_tasks)
def draw(inputs: FigureInputs, out_stem: Path, formats: Sequence[str]) -> list[Path]:
    import numpy as np

    from spectral_edit.analysis.figures.common import (
        boundary_checkpoints,
        checkpoints_without_gap,
        mean_error_bars,
        method_colour,
        plt,
        retention_rows,
        save_figure,
        shade_loss_zone,
    )
    from spectral_edit.analysis.table1 import NoCostZone

    summary, table1, analysis, regimes = inputs.summary, inputs.table1, inputs.analysis, inputs.regimes
    zone = NoCostZone.from_analysis(analysis)
    data = retention_rows(summary)
    data = data[data["finetune"] == data["reference"]]  # edits of a recipe
    no_gap = checkpoints_without_gap(regimes)
    data = data[[k not in no_gap for k in zip(data["model"], data["dataset"], data["finetune"])]]
    boundary = boundary_checkpoints(regimes)
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
            colour = method_colour(method, methods)
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
                xerr=mean_error_bars(curve, "accuracy_loss"),
                yerr=mean_error_bars(curve, "bias_reduction"),
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
            shade_loss_zone(ax, zone)
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
