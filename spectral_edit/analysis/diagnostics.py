"""Diagnostics of an update dW, computed from its SVD cache.

Marchenko-Pastur check of DG-Hard (the referee's request on Spectral Unforgetting): DG-Hard
assumes dW = low-rank signal + i.i.d. noise. For each matrix we take the singular values it
discards and compare them with the singular-value law of an i.i.d. noise matrix of the same
shape with the entry std sigma_hat that DG-Hard estimated: the Kolmogorov-Smirnov distance
between the two (0 = the discarded spectrum is exactly MP-like; near 1 = nothing alike), and a
figure of histograms against the predicted density for representative layers.

Subspace alignment (Spectral Surgery, Fig. 1): per module type, across layers, the similarity
of the leading left singular vectors |u1_a^T u1_b| and the overlap of the top-m output
subspaces Align_U = ||U_a^T U_b||_F^2 / m (the mean cos^2 of their principal angles), against
the random-subspace baseline m / d; and within a layer, o_proj against down_proj.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy import integrate  # noqa: E402

from spectral_edit.analysis.figures.common import save_figure  # noqa: E402
from spectral_edit.edit.methods import MatrixContext, get_method, layer_index, split_result  # noqa: E402
from spectral_edit.edit.random_matrix import mp_density, mp_support, noise_singular_value_density  # noqa: E402
from spectral_edit.edit.rebuild import leading_vectors  # noqa: E402
from spectral_edit.edit.svd_cache import cached_names, iter_factors  # noqa: E402
from spectral_edit.safetensors_stream import open_safetensors  # noqa: E402


@lru_cache(maxsize=64)
def _mp_cdf_table(beta: float, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """The MP CDF on a grid, integrated exactly between grid points (the density has an
    integrable 1/sqrt singularity at the lower edge when beta = 1)."""
    low, high = mp_support(beta)
    grid = low + (high - low) * (np.linspace(0, 1, points) ** 2)  # denser near the lower edge
    pieces = [
        integrate.quad(lambda t: float(mp_density(np.array([t]), beta)[0]), a, b, limit=100)[0]
        for a, b in zip(grid[:-1], grid[1:])
    ]
    cdf = np.concatenate([[0.0], np.cumsum(pieces)])
    return grid, cdf / cdf[-1]


def noise_singular_value_cdf(s, beta: float, sigma: float, n: int) -> np.ndarray:
    """P(noise singular value <= s) for an m x n (m <= n) i.i.d. matrix with entry std sigma."""
    grid, cdf = _mp_cdf_table(round(float(beta), 12))
    return np.interp(np.asarray(s, float) ** 2 / (n * sigma**2), grid, cdf, left=0.0, right=1.0)


def ks_distance(values: np.ndarray, beta: float, sigma: float, n: int) -> float:
    """Kolmogorov-Smirnov distance between the empirical law of ``values`` and the MP law."""
    values = np.sort(np.asarray(values, float))
    if values.size == 0 or not sigma > 0:
        return math.nan
    model = noise_singular_value_cdf(values, beta, sigma, n)
    upper = np.arange(1, values.size + 1) / values.size
    lower = np.arange(0, values.size) / values.size
    return float(max(np.max(np.abs(upper - model)), np.max(np.abs(model - lower))))


def dg_hard_table(spectrum: Mapping, params: Mapping) -> pd.DataFrame:
    """Per matrix: DG-Hard's kept rank, sigma_hat, tau, and the MP fit of what it discards."""
    method = get_method("dg_hard")
    rows = []
    for matrix in spectrum["matrices"]:
        s = torch.tensor(matrix["singular_values"], dtype=torch.float64)
        shape = tuple(matrix["shape"])
        context = MatrixContext(matrix["name"], shape, None, 0, params)
        kept_values, record = split_result(method.edit(s, context))
        discarded = s[kept_values == 0].numpy()
        rows.append(
            {
                "name": matrix["name"],
                "layer": layer_index(matrix["name"]),
                "module": matrix["name"].split(".")[-2],
                "rows": shape[0],
                "cols": shape[1],
                "rank": matrix["rank"],
                "rank_kept": record["rank_kept"],
                "kept_fraction": record["rank_kept"] / matrix["rank"],
                "sigma_hat": record["sigma_hat"],
                "tau": record["tau"],
                "beta": record["beta"],
                "ks_discarded_vs_mp": ks_distance(discarded, record["beta"], record["sigma_hat"], max(shape)),
            }
        )
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    return table


def _representative_layers(layers: Sequence[int], count: int) -> list[int]:
    layers = sorted(set(layers))
    if not layers:
        return []
    picks = np.unique(np.linspace(0, len(layers) - 1, min(count, len(layers))).round().astype(int))
    return [layers[i] for i in picks]


def marchenko_pastur_figure(spectrum: Mapping, table: pd.DataFrame, layers: int, out_stem: Path, formats) -> list[Path]:
    """Discarded singular values vs the predicted MP bulk (representative layers), and the
    rank DG-Hard keeps per layer and module."""
    by_name = {m["name"]: m for m in spectrum["matrices"]}
    chosen = _representative_layers([x for x in table["layer"].dropna().astype(int)], layers)
    modules = [m for m in ("o_proj", "down_proj") if m in set(table["module"])] or sorted(set(table["module"]))[:2]
    fig, axes = plt.subplots(
        len(modules) + 1, max(len(chosen), 1), figsize=(3.6 * max(len(chosen), 1), 3.0 * (len(modules) + 1)), squeeze=False
    )
    for row, module in enumerate(modules):
        for col, layer in enumerate(chosen):
            ax = axes[row][col]
            match = table[(table["module"] == module) & (table["layer"] == layer)]
            if match.empty:
                ax.axis("off")
                continue
            entry = match.iloc[0]
            s = np.asarray(by_name[entry["name"]]["singular_values"])
            discarded = s[s <= entry["tau"]]
            n = max(entry["rows"], entry["cols"])
            ax.hist(discarded, bins=40, density=True, color="#7f7f7f", alpha=0.6, label="discarded σ")
            grid = np.linspace(0, max(discarded.max() if discarded.size else 0, entry["tau"]) * 1.1, 400)
            ax.plot(
                grid,
                noise_singular_value_density(grid, entry["beta"], entry["sigma_hat"], n),
                color="#d62728",
                label="MP bulk from σ̂",
            )
            ax.axvline(entry["tau"], color="black", ls="--", lw=0.8, label="τ")
            ax.set_title(
                f"layer {layer} {module}: kept {entry['rank_kept']}/{entry['rank']}, KS {entry['ks_discarded_vs_mp']:.2f}",
                fontsize=8,
            )
            ax.tick_params(labelsize=7)
            if col == 0:
                ax.legend(fontsize=7)
    for col in range(axes.shape[1]):
        axes[-1][col].axis("off")
    bottom = fig.add_subplot(len(modules) + 1, 1, len(modules) + 1)
    for module, group in table.dropna(subset=["layer"]).groupby("module"):
        group = group.sort_values("layer")
        bottom.plot(group["layer"], group["rank_kept"], marker="o", ms=3, label=module)
    bottom.set_xlabel("layer")
    bottom.set_ylabel("rank kept by DG-Hard")
    bottom.legend(fontsize=7, ncol=4)
    fig.suptitle("DG-Hard: discarded spectrum against the Marchenko-Pastur bulk", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out_stem, formats)


def subspace_alignment(
    factors_path: str | Path, base_weights: str | Path, finetuned_weights: str | Path, top_m: int = 4
) -> tuple[dict, pd.DataFrame]:
    """Per module type: layers, |u1_a^T u1_b| and Align_U matrices; and a summary table.

    The cache keeps one side's singular vectors per matrix; the top-m left ones of a matrix
    whose right side is kept are computed from dW (u_i = dW v_i / sigma_i)."""
    decomposed, _ = cached_names(factors_path)
    by_module: dict[str, dict[int, str]] = {}
    for name in decomposed:
        layer = layer_index(name)
        if layer is not None:
            by_module.setdefault(name.split(".")[-2], {})[layer] = name
    results: dict[str, dict] = {}
    rows = []
    wanted = [name for names in by_module.values() for name in names.values()]
    left: dict[str, torch.Tensor] = {}
    with open_safetensors(base_weights) as base, open_safetensors(finetuned_weights) as ft:
        for name, s, side, basis in iter_factors(factors_path, wanted):
            delta = ft.get_tensor(name).double() - base.get_tensor(name).double()
            left[name] = leading_vectors(delta, s, side, basis, min(top_m, len(s)))[0]
    leading: dict[str, dict[int, torch.Tensor]] = {}
    for module, names in sorted(by_module.items()):
        layers = sorted(names)
        m = min(left[names[layer]].shape[1] for layer in layers)
        subspaces = {layer: left[names[layer]][:, :m] for layer in layers}
        leading[module] = subspaces
        stack = torch.stack([subspaces[layer] for layer in layers])  # (L, d, m)
        first = stack[:, :, 0]
        cosine = (first @ first.T).abs().numpy()
        overlap = (torch.einsum("adm,bdn->abmn", stack, stack) ** 2).sum((2, 3)).numpy() / m
        d = stack.shape[1]
        off = ~np.eye(len(layers), dtype=bool)
        results[module] = {"layers": layers, "u1": cosine, "align": overlap, "m": m, "d": d}
        rows.append(
            {
                "module": module,
                "layers": len(layers),
                "d": d,
                "m": m,
                "mean_u1_similarity": float(cosine[off].mean()) if off.any() else math.nan,
                "mean_align_u": float(overlap[off].mean()) if off.any() else math.nan,
                "random_align_baseline": m / d,
            }
        )
    if "o_proj" in leading and "down_proj" in leading:
        shared = sorted(set(leading["o_proj"]) & set(leading["down_proj"]))
        m = min(leading["o_proj"][shared[0]].shape[1], leading["down_proj"][shared[0]].shape[1]) if shared else 0
        synergy = [float((leading["o_proj"][i][:, :m].T @ leading["down_proj"][i][:, :m]).pow(2).sum() / m) for i in shared]
        results["o_proj~down_proj"] = {"layers": shared, "per_layer": synergy, "m": m, "d": leading["o_proj"][shared[0]].shape[0]}
        rows.append(
            {
                "module": "o_proj~down_proj (same layer)",
                "layers": len(shared),
                "d": results["o_proj~down_proj"]["d"],
                "m": m,
                "mean_u1_similarity": math.nan,
                "mean_align_u": float(np.mean(synergy)),
                "random_align_baseline": m / results["o_proj~down_proj"]["d"],
            }
        )
    return results, pd.DataFrame(rows)


def subspace_figure(results: Mapping, title: str, out_stem: Path, formats) -> list[Path]:
    """Two rows of heatmaps (|u1^T u1| and Align_U per module type) and the o_proj/down_proj curve."""
    modules = [m for m in results if "~" not in m]
    columns = max(len(modules), 1)
    fig = plt.figure(figsize=(2.6 * columns + 1.0, 8.4), layout="constrained")
    grid = fig.add_gridspec(3, columns + 1, width_ratios=[1] * columns + [0.08], height_ratios=[1, 1, 0.8])
    image = None
    for col, module in enumerate(modules):
        entry = results[module]
        for row, (key, label) in enumerate((("u1", "|u1ᵀu1|"), ("align", f"Align_U, m={entry['m']}"))):
            ax = fig.add_subplot(grid[row, col])
            image = ax.imshow(entry[key], vmin=0, vmax=1, cmap="viridis", origin="lower")
            ax.set_title(f"{module}: {label}", fontsize=8)
            ax.set_xlabel("layer", fontsize=7)
            ax.tick_params(labelsize=6)
            if row == 1:
                ax.text(
                    0.03,
                    0.97,
                    f"random {entry['m'] / entry['d']:.3f}",
                    transform=ax.transAxes,
                    va="top",
                    fontsize=6,
                    color="white",
                )
    if image is not None:
        fig.colorbar(image, cax=fig.add_subplot(grid[:2, columns]))
    synergy = results.get("o_proj~down_proj")
    ax = fig.add_subplot(grid[2, :columns])
    if synergy:
        ax.plot(synergy["layers"], synergy["per_layer"], marker="o", ms=3, label="Align_U(o_proj, down_proj), same layer")
        ax.axhline(synergy["m"] / synergy["d"], color="black", ls="--", lw=0.8, label="random m/d")
        ax.set_ylim(0, 1)
        ax.set_xlabel("layer", fontsize=8)
        ax.legend(fontsize=7)
    else:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_stem, formats)
