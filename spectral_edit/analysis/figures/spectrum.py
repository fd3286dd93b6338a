"""Singular-value decay of dW on representative MLP matrices, and the fraction of components
holding 90% of the energy (Shortcuts in the Tail, Fig. 10). Drawn for every config."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from spectral_edit.analysis.figures import FigureInputs, register


@register("spectrum", order=50)
def draw(inputs: FigureInputs, out_stem: Path, formats: Sequence[str]) -> list[Path]:
    """``inputs.spectra``: entries {model, dataset, seed, finetune, path} of spectrum.json files."""
    import numpy as np

    from spectral_edit.analysis.figures.common import plt, save_figure
    from spectral_edit.edit.svd_cache import read_spectrum

    spectra = inputs.spectra
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


_LAYER = re.compile(r"\.(\d+)\.")


def representative_mlp(names: Sequence[str], count: int = 4) -> list[str]:
    """MLP matrices of ``count`` layers spread evenly over depth (the paper's four MLP layers).

    Within a layer it takes the MLP matrix whose name sorts first (for Llama-style models,
    down_proj)."""
    import numpy as np

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
