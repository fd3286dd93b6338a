"""One point per (dataset, seed) cell and method: its best in-zone point in that cell, accuracy
loss against bias reduction (the comparison of issue 22)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from spectral_edit.analysis.figures import FigureInputs, label_word_tasks, register


@register("cell_comparison", order=40, when=label_word_tasks)
def draw(inputs: FigureInputs, out_stem: Path, formats: Sequence[str]) -> list[Path]:
    """One point per (model, dataset, seed) cell and method: the method's best in-zone point in
    that cell (stats.best_in_zone_per_cell), accuracy loss against bias reduction, with the
    cell's intervals over the examples."""
    import pandas as pd

    from spectral_edit.analysis.figures.common import ZONE_COLOUR, method_colour, plt, save_figure
    from spectral_edit.analysis.table1 import NoCostZone

    best, analysis = inputs.cell_comparison, inputs.analysis
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
            color=method_colour(method, methods),
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
