"""With controls: the top-k trajectory and the LoRA / SpecLoRA points in the accuracy-gap plane,
the no-cost zone, the best in-zone point per method ringed (Shortcuts in the Tail, Fig. 5/8)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from spectral_edit.analysis.figures import FigureInputs, label_word_tasks, register


def _with_controls(config: Mapping, surgery_policies: Mapping[str, str]) -> bool:
    return label_word_tasks(config) and bool(config["grid"].get("controls"))


@register("controls_pareto", order=60, when=_with_controls)
def draw(inputs: FigureInputs, out_stem: Path, formats: Sequence[str]) -> list[Path]:
    """Top-k on the reference fine-tune against the training-time controls (LoRA sweep)."""
    import pandas as pd

    from spectral_edit.analysis.figures.common import mean_error_bars, plt, reference_rows, save_figure, shade_accuracy_zone
    from spectral_edit.analysis.table1 import NoCostZone

    summary, analysis, controls = inputs.summary, inputs.analysis, inputs.controls or {}
    zone = NoCostZone.from_analysis(analysis)
    reference = analysis["reference_finetune"]
    method = analysis["sweet_spot_method"]
    pairs = list(dict.fromkeys(zip(summary["model"], summary["dataset"])))
    pairs = [p for p in pairs if p[0] is not None] or [("", "")]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.8 * len(pairs), 4.8), squeeze=False)
    for ax, (model, dataset) in zip(axes[0], pairs):
        finetuned, base = reference_rows(summary, model, dataset)
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
            xerr=mean_error_bars(sweep, "gap"),
            yerr=mean_error_bars(sweep, "accuracy"),
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
        shade_accuracy_zone(ax, zone, acc_ft)
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
