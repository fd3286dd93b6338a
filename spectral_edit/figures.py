"""The papers' figures, drawn from the aggregated tables and the SVD spectra.

trajectory          accuracy loss vs bias reduction, parametric in retention, no-cost zone
                    shaded, sweet spot ringed (Shortcuts in the Tail, Fig. 2)
retention_sweep     accuracy and gap vs retention, rescaled FT -> base (Fig. 3/6)
method_comparison   every method side by side: normalised gap vs retention, and accuracy vs
                    gap parametric in retention (Fig. 4/7)
spectrum            singular-value decay of dW on representative MLP matrices, and the
                    fraction of components holding 90% of the energy (Fig. 10)
Every figure is written as PNG and PDF.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .atomic import atomic_path  # noqa: E402
from .svd_cache import read_spectrum  # noqa: E402

ZONE_COLOUR = "#2ca02c"
METHOD_COLOURS = {"top_k": "#1f77b4", "bottom_k": "#d62728", "random_k": "#7f7f7f"}


def _save(fig, out_stem: Path, formats: Sequence[str]) -> list[Path]:
    written = []
    for ext in formats:
        path = out_stem.with_suffix(f".{ext}")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight", dpi=150)
        written.append(path)
    plt.close(fig)
    return written


def _colour(method: str, index: int) -> str:
    return METHOD_COLOURS.get(method, plt.get_cmap("tab10")(index % 10))


def _edited(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary["retention"].notna()].sort_values("retention", ascending=False)


def _std(frame: pd.DataFrame, column: str) -> np.ndarray:
    return frame[column].fillna(0.0).to_numpy() if column in frame else np.zeros(len(frame))


def trajectory(summary: pd.DataFrame, table1: pd.DataFrame, analysis: Mapping, out_stem: Path, formats) -> list[Path]:
    method = analysis.get("sweet_spot_method", "top_k")
    no_cost = float(analysis.get("no_cost_pp", 2.0))
    data = _edited(summary)
    data = data[data["method"] == method]
    models = list(dict.fromkeys(summary["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.4), squeeze=False)
    for ax, model in zip(axes[0], models):
        ax.axvspan(0, no_cost, color=ZONE_COLOUR, alpha=0.15, label=f"no-cost zone (< {no_cost:g} pp)")
        ax.axhline(0, color="black", lw=0.6)
        ax.axvline(0, color="black", lw=0.6)
        for i, (dataset, curve) in enumerate(data[data["model"] == model].groupby("dataset", sort=False)):
            colour = plt.get_cmap("tab10")(i % 10)
            x, y = curve["accuracy_loss_mean"].to_numpy(), curve["bias_reduction_mean"].to_numpy()
            ax.errorbar(x, y, xerr=_std(curve, "accuracy_loss_std"), yerr=_std(curve, "bias_reduction_std"),
                        color=colour, marker="o", ms=4, lw=1.4, capsize=2, label=dataset)
            for xi, yi, r in zip(x, y, curve["retention"]):
                ax.annotate(f"{100 * r:g}%", (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7, color=colour)
            spot = table1[(table1["model"] == model) & (table1["dataset"] == dataset) & (table1["method"] == method)]
            if len(spot) and not math.isnan(spot.iloc[0]["r_star"]):
                ring = curve[np.isclose(curve["retention"], spot.iloc[0]["r_star"])]
                ax.scatter(ring["accuracy_loss_mean"], ring["bias_reduction_mean"], s=260, facecolors="none",
                           edgecolors=colour, linewidths=2, zorder=5)
        ax.set_title(f"{model}: {method}, parametric in retention")
        ax.set_xlabel("accuracy loss (pp)")
        ax.set_ylabel("bias reduction (%)")
        ax.legend(fontsize=8, loc="best")
    fig.suptitle("Bias vs accuracy trajectory (rings: sweet spot r*)", fontsize=11)
    return _save(fig, out_stem, formats)


def retention_sweep(summary: pd.DataFrame, analysis: Mapping, out_stem: Path, formats) -> list[Path]:
    method = analysis.get("sweet_spot_method", "top_k")
    data = _edited(summary)
    data = data[data["method"] == method]
    models = list(dict.fromkeys(summary["model"]))
    datasets = list(dict.fromkeys(summary["dataset"]))
    fig, axes = plt.subplots(len(datasets), len(models), figsize=(5 * len(models), 3.6 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        for col, model in enumerate(models):
            ax = axes[row][col]
            curve = data[(data["model"] == model) & (data["dataset"] == dataset)]
            r = curve["retention"].to_numpy()
            for column, colour, label in (("acc_ft_to_base", "#1f77b4", "accuracy"), ("gap_ft_to_base", "#d62728", "gap")):
                mean = curve[f"{column}_mean"].to_numpy()
                std = _std(curve, f"{column}_std")
                ax.plot(r, mean, marker="o", ms=4, color=colour, label=label)
                ax.fill_between(r, mean - std, mean + std, color=colour, alpha=0.2, lw=0)
            ax.axhline(0, color="black", lw=0.8, ls="--")
            ax.axhline(1, color="black", lw=0.8, ls=":")
            ax.set_xscale("log")
            ax.invert_xaxis()
            ticks = sorted(set(np.round(r, 4)))
            ax.set_xticks(ticks, [f"{100 * t:g}%" for t in ticks], fontsize=7)
            ax.minorticks_off()
            ax.set_title(f"{dataset} / {model}", fontsize=9)
            ax.set_xlabel("retention r")
            ax.set_ylabel("rescaled: 0 = FT, 1 = base")
            ax.legend(fontsize=8)
    fig.suptitle(f"{method} retention sweep, accuracy and gap rescaled FT → base", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_stem, formats)


def method_comparison(summary: pd.DataFrame, analysis: Mapping, out_stem: Path, formats) -> list[Path]:
    no_cost = float(analysis.get("no_cost_pp", 2.0))
    data = _edited(summary)
    pairs = list(dict.fromkeys(zip(summary["model"], summary["dataset"])))
    methods = list(dict.fromkeys(data["method"]))
    fig, axes = plt.subplots(len(pairs), 2, figsize=(11, 4 * len(pairs)), squeeze=False)
    for row, (model, dataset) in enumerate(pairs):
        left, right = axes[row]
        refs = summary[(summary["model"] == model) & (summary["dataset"] == dataset)]
        ft = refs[refs["method"] == "finetuned"]
        base = refs[refs["method"] == "base"]
        for i, method in enumerate(methods):
            curve = data[(data["model"] == model) & (data["dataset"] == dataset) & (data["method"] == method)]
            colour = _colour(method, i)
            r = curve["retention"].to_numpy()
            left.errorbar(r, curve["normalised_gap_mean"], yerr=_std(curve, "normalised_gap_std"), marker="o", ms=4,
                          color=colour, capsize=2, label=method)
            right.errorbar(curve["gap_mean"], curve["accuracy_mean"], xerr=_std(curve, "gap_std"),
                           yerr=_std(curve, "accuracy_std"), marker="o", ms=4, color=colour, capsize=2, label=method)
        left.axhline(1, color="black", ls="--", lw=0.8, label="fine-tuned")
        left.axhline(0, color="black", lw=0.6)
        left.set_xscale("log")
        left.invert_xaxis()
        ticks = sorted(set(np.round(data["retention"].to_numpy(), 4)))
        left.set_xticks(ticks, [f"{100 * t:g}%" for t in ticks], fontsize=7)
        left.minorticks_off()
        left.set_xlabel("retention r")
        left.set_ylabel("normalised gap  Δ_r / |Δ_ft|")
        left.set_title(f"{dataset} / {model}", fontsize=9)
        left.legend(fontsize=8)
        if len(ft):
            acc_ft = float(ft["accuracy_mean"].iloc[0])
            right.axhspan(acc_ft - no_cost / 100, max(acc_ft, right.get_ylim()[1]), color=ZONE_COLOUR, alpha=0.12,
                          label=f"no-cost zone (< {no_cost:g} pp)")
            right.scatter(ft["gap_mean"], ft["accuracy_mean"], marker="*", s=180, color="black", zorder=6, label="fine-tuned")
        if len(base):
            right.scatter(base["gap_mean"], base["accuracy_mean"], marker="s", s=70, color="#9467bd", zorder=6, label="base")
        right.set_xlabel("gap  Δ = acc_maj − acc_min")
        right.set_ylabel("accuracy")
        right.set_title(f"{dataset} / {model}: accuracy vs gap, parametric in r", fontsize=9)
        right.legend(fontsize=8)
    fig.suptitle("Top-k vs controls", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_stem, formats)


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
    """``spectra``: entries {model, dataset, seed, path} of spectrum.json files."""
    grid = np.linspace(0, 1, 200)
    curves: dict[tuple[str, str], list[np.ndarray]] = {}
    energy: dict[tuple[str, str], list[float]] = {}
    energy_mlp: dict[tuple[str, str], list[float]] = {}
    for entry in spectra:
        content = read_spectrum(entry["path"])
        by_name = {m["name"]: m for m in content["matrices"]}
        key = (entry["model"], entry["dataset"])
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
        datasets = [d for (m, d) in energy if m == model]
        for i, dataset in enumerate(datasets):
            colour = plt.get_cmap("tab10")(i % 10)
            stack = np.array(curves.get((model, dataset), []))
            if stack.size:
                mean, std = stack.mean(0), stack.std(0)
                top.plot(grid, mean, color=colour, label=dataset)
                top.fill_between(grid, np.clip(mean - std, 1e-6, None), mean + std, color=colour, alpha=0.2, lw=0)
        top.set_yscale("log")
        top.set_xlabel("component index i / r")
        top.set_ylabel("σ_i / σ_max")
        top.set_title(f"{model}: dW spectrum, representative MLP matrices (mean ± std)", fontsize=9)
        top.legend(fontsize=8)
        positions = np.arange(len(datasets))
        all_mean = [100 * np.mean(energy[(model, d)]) for d in datasets]
        mlp_mean = [100 * np.mean(energy_mlp.get((model, d), [np.nan])) for d in datasets]
        bars = bottom.bar(positions - 0.2, all_mean, width=0.4, label="all decomposed matrices")
        bars_mlp = bottom.bar(positions + 0.2, mlp_mean, width=0.4, label="representative MLP")
        for bar_group in (bars, bars_mlp):
            bottom.bar_label(bar_group, fmt="%.0f%%", fontsize=8)
        bottom.set_xticks(positions, datasets, fontsize=8)
        bottom.set_ylim(0, 105)
        bottom.set_ylabel("% of components for 90% of energy")
        bottom.legend(fontsize=8)
    fig.suptitle("Singular-value decay of dW = W_ft − W_base", fontsize=11)
    fig.tight_layout()
    return _save(fig, out_stem, formats)


def draw_all(summary: pd.DataFrame, table1: pd.DataFrame, spectra: Sequence[Mapping], analysis: Mapping,
             out_dir: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    written += trajectory(summary, table1, analysis, out_dir / "trajectory", formats)
    written += retention_sweep(summary, analysis, out_dir / "retention_sweep", formats)
    written += method_comparison(summary, analysis, out_dir / "method_comparison", formats)
    written += spectrum(spectra, out_dir / "spectrum", formats)
    return written
