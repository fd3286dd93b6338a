"""With held-out benchmarks: % healed on the damaged partition against % preserved on the
improved one, per method (Spectral Unforgetting, Fig. 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from spectral_edit.analysis.figures import FigureInputs, register


def _with_heldout(config: Mapping, surgery_policies: Mapping[str, str]) -> bool:
    return any(config["datasets"][d].get("heldout") for d in config["grid"]["datasets"])


@register("recovery_preservation", order=80, when=_with_heldout)
def draw(inputs: FigureInputs, out_stem: Path, formats: Sequence[str]) -> list[Path]:
    """% healed (damaged partition) against % preserved (improved partition) per method, with
    the bootstrap intervals of both; an empty partition is drawn at 0 healed / 100 preserved."""
    import numpy as np

    from spectral_edit.analysis.figures.common import error_bars, method_colour, plt, save_figure

    repair_summary = inputs.repair_summary
    data = repair_summary.dropna(subset=["healed", "preserved"], how="all")
    pairs = list(dict.fromkeys(zip(repair_summary["model"], repair_summary["dataset"]))) or [("", "")]
    methods = list(dict.fromkeys(data["method"]))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.6 * len(pairs), 5.0), squeeze=False)
    h = np.linspace(40.5, 100, 200)
    for ax, (model, dataset) in zip(axes[0], pairs):
        ax.plot(h, 80 * h / (2 * h - 80), color="black", ls=":", lw=0.8, label="HM(healed, preserved) = 80")
        here = data[(data["model"] == model) & (data["dataset"] == dataset)]
        recipes = list(dict.fromkeys(here["finetune"]))
        for (finetune, method), group in here.groupby(["finetune", "method"], sort=False):
            colour = "black" if method == "finetuned" else method_colour(method, methods)
            group = group.sort_values("retention", ascending=False)
            x, y = group["healed"].fillna(0.0), group["preserved"].fillna(100.0)
            marker = "oDs^v<>"[recipes.index(finetune) % 7]  # one marker per fine-tuning recipe
            style = dict(marker=marker, ms=4) if group["retention"].notna().any() else dict(marker=marker, ms=7, ls="none")
            ax.errorbar(
                x, y, xerr=error_bars(group, "healed"), yerr=error_bars(group, "preserved"), color=colour, capsize=2,
                elinewidth=0.7, label=f"{method} ({finetune})", **style,
            )  # fmt: skip
        ax.set_xlim(-5, 105)
        ax.set_ylim(-5, 105)
        ax.set_xlabel("% healed (damaged benchmarks)")
        ax.set_ylabel("% preserved (improved benchmarks)")
        ax.set_title(f"{dataset} / {model}", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(
        "Recovery × preservation on held-out benchmarks with bootstrap intervals "
        "(an empty partition is drawn at 0 healed / 100 preserved)",
        fontsize=9,
    )
    return save_figure(fig, out_stem, formats)
