"""Plotting helpers the figures share: saving, colours, intervals as error bars, the no-cost
zone's shading and the row selections of the summary table. Imported only when a figure is drawn
(it imports matplotlib); planning imports the registry alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from spectral_edit.analysis.table1 import NoCostZone  # noqa: E402
from spectral_edit.atomic import atomic_path  # noqa: E402

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


def method_colour(method: str, methods: Sequence[str]) -> str:
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    others = [m for m in methods if m not in METHOD_COLOURS]
    return plt.get_cmap("tab10")((3 + others.index(method)) % 10 if method in others else 9)


def mean_error_bars(frame: pd.DataFrame, name: str) -> np.ndarray:
    """Asymmetric error bars (2 x n) from the interval columns ``{name}_lo``/``_hi`` around
    ``{name}_mean``; a missing interval draws no bar."""
    mean = frame[f"{name}_mean"].to_numpy(float)
    if f"{name}_lo" not in frame:
        return np.zeros((2, len(frame)))
    low, high = frame[f"{name}_lo"].to_numpy(float), frame[f"{name}_hi"].to_numpy(float)
    return np.nan_to_num(np.clip(np.vstack([mean - low, high - mean]), 0, None))


def error_bars(frame: pd.DataFrame, name: str) -> np.ndarray:
    """Error bars (2 x n) from ``{name}_lo``/``_hi`` around ``{name}``; none where missing."""
    value = frame[name].to_numpy(float)
    low, high = frame[f"{name}_lo"].to_numpy(float), frame[f"{name}_hi"].to_numpy(float)
    return np.nan_to_num(np.clip(np.vstack([value - low, high - value]), 0, None))


def shade_loss_zone(ax, zone: NoCostZone) -> None:
    """The no-cost zone on an accuracy-loss x axis (pp), after the data set the limits."""
    left, right = ax.get_xlim()
    start = left if zone.from_pp is None else zone.from_pp
    ax.axvspan(start, zone.below_pp, color=ZONE_COLOUR, alpha=0.15, label=f"no-cost zone ({zone.describe()})")
    ax.set_xlim(min(left, start), max(right, zone.below_pp + 0.5))


def shade_accuracy_zone(ax, zone: NoCostZone, acc_ft: float) -> None:
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


def boundary_checkpoints(regimes: pd.DataFrame | None) -> set[tuple[str, str, str]]:
    if regimes is None or regimes.empty:
        return set()
    rows = regimes[regimes["regime"] == "boundary"]
    return set(zip(rows["model"], rows["dataset"], rows["finetune"]))


def checkpoints_without_gap(regimes: pd.DataFrame | None) -> set[tuple[str, str, str]]:
    """Checkpoints whose fine-tuned gap is not resolved from 0 (their bias reductions and
    normalised gaps are ratios of noise: Table 1 says n/a), or that learned only the label
    prior (no task to keep): the figures leave them out."""
    if regimes is None or regimes.empty:
        return set()
    prior = regimes["regime"] == "label prior" if "regime" in regimes else False
    rows = regimes[~regimes["gap_ft_defined"].astype(bool) | prior]
    return set(zip(rows["model"], rows["dataset"], rows["finetune"]))


def edit_rows(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[~summary["method"].isin(["base", "finetuned"])]


def retention_rows(summary: pd.DataFrame) -> pd.DataFrame:
    return edit_rows(summary)[lambda f: f["retention"].notna()].sort_values("retention", ascending=False)


def edited_recipes(summary: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(edit_rows(summary)["finetune"].dropna()))


def edited_panels(summary: pd.DataFrame) -> list[tuple[str, str, str]]:
    edited = edit_rows(summary)
    return list(dict.fromkeys(zip(edited["model"], edited["dataset"], edited["finetune"])))


def reference_rows(summary, model, dataset):
    refs = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
    return refs[refs["method"] == "finetuned"], refs[refs["method"] == "base"]


def log_retention_axis(ax, retentions) -> None:
    ticks = sorted(set(np.round(np.asarray(retentions, float), 4)))
    ax.set_xscale("log")
    if ticks:
        ax.set_xlim(max(ticks) * 1.3, min(ticks) / 1.3)  # decreasing retention to the right
        ax.set_xticks(ticks, [f"{100 * t:g}%" for t in ticks], fontsize=7)
    ax.minorticks_off()
