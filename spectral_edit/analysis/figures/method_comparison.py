"""Every method side by side: normalised gap vs retention (methods without a retention as
horizontal lines), and accuracy vs gap with the fixed-setting methods and the training-time
controls as points (Shortcuts in the Tail, Fig. 4/7)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from spectral_edit.analysis.figures import FigureInputs, label_word_tasks, register


@register("method_comparison", order=30, when=label_word_tasks)
def draw(inputs: FigureInputs, out_stem: Path, formats: Sequence[str]) -> list[Path]:
    from spectral_edit.analysis.figures.common import (
        boundary_checkpoints,
        checkpoints_without_gap,
        edit_rows,
        edited_panels,
        edited_recipes,
        log_retention_axis,
        mean_error_bars,
        method_colour,
        plt,
        reference_rows,
        save_figure,
        shade_accuracy_zone,
    )
    from spectral_edit.analysis.table1 import NoCostZone

    summary, analysis, regimes = inputs.summary, inputs.analysis, inputs.regimes
    zone = NoCostZone.from_analysis(analysis)
    boundary = boundary_checkpoints(regimes)
    no_gap = checkpoints_without_gap(regimes)
    edited = edit_rows(summary)
    methods = list(dict.fromkeys(edited["method"]))
    edited_finetunes = edited_recipes(summary)
    panels = edited_panels(summary) or [("", "", "")]
    fig, axes = plt.subplots(len(panels), 2, figsize=(12, 4.4 * len(panels)), squeeze=False)
    for row, (model, dataset, finetune) in enumerate(panels):
        left, right = axes[row]
        here = edited[(edited["model"] == model) & (edited["dataset"] == dataset) & (edited["finetune"] == finetune)]
        finetuned, base = reference_rows(summary, model, dataset)
        own_ft = finetuned[finetuned["finetune"] == finetune]
        controls = finetuned[~finetuned["finetune"].isin(edited_finetunes)]
        sweep = here[here["retention"].notna()].sort_values("retention", ascending=False)
        gap_defined = (model, dataset, finetune) not in no_gap
        for method, curve in sweep.groupby("method", sort=False):
            colour = method_colour(method, methods)
            if gap_defined:
                left.errorbar(
                    curve["retention"],
                    curve["normalised_gap_mean"],
                    yerr=mean_error_bars(curve, "normalised_gap"),
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
                xerr=mean_error_bars(curve, "gap"),
                yerr=mean_error_bars(curve, "accuracy"),
                marker="o",
                ms=4,
                color=colour,
                capsize=2,
                elinewidth=0.8,
                label=method,
            )
        for method, point in here[here["retention"].isna()].groupby("method", sort=False):
            colour = method_colour(method, methods)
            if gap_defined:
                left.axhline(point["normalised_gap_mean"].iloc[0], color=colour, ls="-.", lw=1.2, label=f"{method} (fixed)")
            right.errorbar(
                point["gap_mean"],
                point["accuracy_mean"],
                xerr=mean_error_bars(point, "gap"),
                yerr=mean_error_bars(point, "accuracy"),
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
            log_retention_axis(left, sweep["retention"])
        left.set_xlabel("retention r")
        left.set_ylabel("normalised gap  Δ_r / |Δ_ft|")
        regime = ", boundary regime" if (model, dataset, finetune) in boundary else ""
        left.set_title(f"{dataset} / {model} ({finetune}{regime})", fontsize=9)
        left.legend(fontsize=7)
        if len(own_ft):
            acc_ft = float(own_ft["accuracy_mean"].iloc[0])
            if not regime:
                shade_accuracy_zone(right, zone, acc_ft)
            right.errorbar(
                own_ft["gap_mean"],
                own_ft["accuracy_mean"],
                xerr=mean_error_bars(own_ft, "gap"),
                yerr=mean_error_bars(own_ft, "accuracy"),
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
                xerr=mean_error_bars(base, "gap"),
                yerr=mean_error_bars(base, "accuracy"),
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
