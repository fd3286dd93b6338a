"""Accuracy and gap vs retention, rescaled fine-tuned -> base (Shortcuts in the Tail, Fig. 3/6)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from spectral_edit.analysis.figures import FigureInputs, label_word_tasks, register


@register("retention_sweep", order=20, when=label_word_tasks)
def draw(inputs: FigureInputs, out_stem: Path, formats: Sequence[str]) -> list[Path]:
    from spectral_edit.analysis.figures.common import (
        boundary_checkpoints,
        log_retention_axis,
        mean_error_bars,
        plt,
        retention_rows,
        save_figure,
    )

    summary, analysis, regimes = inputs.summary, inputs.analysis, inputs.regimes
    method = analysis["sweet_spot_method"]
    data = retention_rows(summary)
    data = data[data["method"] == method]
    boundary = boundary_checkpoints(regimes)
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
                low, high = mean - mean_error_bars(curve, column)[0], mean + mean_error_bars(curve, column)[1]
                ax.plot(r, mean, marker="o", ms=4, color=colour, label=label)
                ax.fill_between(r, low, high, color=colour, alpha=0.2, lw=0)
            ax.axhline(0, color="black", lw=0.8, ls="--")
            ax.axhline(1, color="black", lw=0.8, ls=":")
            log_retention_axis(ax, r)
            regime = " — boundary regime" if (model, dataset, finetune) in boundary else ""
            ax.set_title(f"{dataset} / {model} ({finetune}){regime}", fontsize=9)
            ax.set_xlabel("retention r")
            ax.set_ylabel("rescaled: 0 = FT, 1 = base")
            ax.legend(fontsize=8)
    fig.suptitle(f"{method} retention sweep, accuracy and gap rescaled FT → base (bands: bootstrap intervals)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out_stem, formats)
