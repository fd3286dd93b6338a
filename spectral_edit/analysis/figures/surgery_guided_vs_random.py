"""With target benchmarks and the random_index and grad_direction policies: the improvement of
each over the unedited model (Spectral Surgery, Fig. 3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from spectral_edit.analysis.figures import FigureInputs, register, with_benchmarks


def _with_both_policies(config: Mapping, surgery_policies: Mapping[str, str]) -> bool:
    return with_benchmarks(config) and {"random_index", "grad_direction"} <= set(surgery_policies.values())


@register("surgery_guided_vs_random", order=90, when=_with_both_policies)
def draw(inputs: FigureInputs, out_stem: Path, formats: Sequence[str]) -> list[Path]:
    """Spectral Surgery Fig. 3: per (model, task, benchmark) the improvement over the unedited
    model of random_index (x) and of grad_direction (y), with bootstrap intervals; above the
    diagonal the gradient signal beats random perturbation."""
    import numpy as np

    from spectral_edit.analysis.figures.common import error_bars, plt, save_figure

    points = inputs.guided_vs_random
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
            frame["random"], frame["guided"], xerr=error_bars(frame, "random"), yerr=error_bars(frame, "guided"), marker="o",
            ms=6, capsize=2, color=plt.get_cmap("tab10")(i % 10),
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
