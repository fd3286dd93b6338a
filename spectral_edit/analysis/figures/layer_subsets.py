"""With the layer-subset methods: |gap| when only one subset of matrices is truncated, against
the fine-tuned and base levels (Shortcuts in the Tail, Fig. 9)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from spectral_edit.analysis.figures import FigureInputs, label_word_tasks, register

SUBSET_METHODS = ("top_k_attention", "top_k_mlp", "top_k_first_half", "top_k_second_half")


def _with_subset_methods(config: Mapping, surgery_policies: Mapping[str, str]) -> bool:
    """A grid method that resolves to one of the subset methods (a method variant may name one)."""
    from spectral_edit.plan.config import resolve_method  # here: importing the registry imports no config (torch, methods)

    methods = config["grid"]["methods"]
    return label_word_tasks(config) and any(resolve_method(config, m)[0].name in SUBSET_METHODS for m in methods)


@register("layer_subsets", order=70, when=_with_subset_methods)
def draw(inputs: FigureInputs, out_stem: Path, formats: Sequence[str]) -> list[Path]:
    """|gap| with truncation on one subset of matrices, against FT and base."""
    import numpy as np

    from spectral_edit.analysis.figures.common import edited_panels, mean_error_bars, plt, reference_rows, save_figure

    summary = inputs.summary
    panels = [
        p for p in edited_panels(summary) if len(summary[(summary["finetune"] == p[2]) & summary["method"].isin(SUBSET_METHODS)])
    ]
    panels = panels or [("", "", "")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (model, dataset, finetune) in zip(axes[0], panels):
        here = summary[(summary["model"] == model) & (summary["dataset"] == dataset) & (summary["finetune"] == finetune)]
        finetuned, base = reference_rows(summary, model, dataset)
        own = finetuned[finetuned["finetune"] == finetune]
        labels, values, errors = [], [], []
        for method in SUBSET_METHODS:
            row = here[here["method"] == method]
            if len(row):
                labels.append(method.replace("top_k_", "").replace("_", " "))
                values.append(abs(float(row["gap_mean"].iloc[0])))
                low, high = mean_error_bars(row, "gap")[:, 0]  # interval of the gap; of |gap| when it keeps its sign
                errors.append((low, high) if row["gap_mean"].iloc[0] >= 0 else (high, low))
        bars = ax.bar(range(len(values)), values, yerr=np.array(errors).T if errors else None, color="#1f77b4", capsize=3)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
        if len(own):
            ax.axhline(abs(float(own["gap_mean"].iloc[0])), color="black", ls="--", lw=1, label="fine-tuned |Δ|")
        if len(base):
            ax.axhline(abs(float(base["gap_mean"].iloc[0])), color="black", ls=":", lw=1, label="base |Δ|")
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylabel("|gap Δ|")
        ax.set_title(f"{dataset} / {model} ({finetune})", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Per-layer subset compression (truncation only on the subset)", fontsize=11)
    return save_figure(fig, out_stem, formats)
