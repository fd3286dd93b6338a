"""With target benchmarks: per edit, the mean improvement on the aligned benchmarks against the
drop on the risk benchmarks (Spectral Surgery, Fig. 4)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from spectral_edit.analysis.figures import FigureInputs, register, with_benchmarks


@register("surgery_reward_risk", order=100, when=with_benchmarks)
def draw(inputs: FigureInputs, out_stem: Path, formats: Sequence[str]) -> list[Path]:
    """Spectral Surgery Fig. 4: per model and edit, the reward (mean improvement on the aligned
    target benchmarks) against the risk (the drop on the risk benchmarks, clipped at 0)."""
    import pandas as pd

    from spectral_edit.analysis.figures.common import error_bars, method_colour, plt, save_figure

    points, risk_benchmarks = inputs.reward_risk, list(inputs.analysis.get("risk_benchmarks") or [])
    panels = list(dict.fromkeys(zip(points["model"], points["finetune"]))) or [("", "")]
    methods = list(dict.fromkeys(points["method"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 5.0), squeeze=False)
    for ax, (model, finetune) in zip(axes[0], panels):
        here = points[(points["model"] == model) & (points["finetune"] == finetune)]
        for _, row in here.iterrows():
            frame = here.loc[[row.name]]
            label = row["method"] if pd.isna(row["retention"]) else f"{row['method']} @ {row['retention']:g}"
            ax.errorbar(
                frame["risk"].fillna(0.0), frame["reward"], xerr=error_bars(frame, "risk"), yerr=error_bars(frame, "reward"),
                marker="o", ms=6, capsize=2, ls="none", color=method_colour(row["method"], methods), label=label,
            )  # fmt: skip
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel(f"risk: drop on {', '.join(risk_benchmarks) or 'the risk benchmarks'} (clipped at 0)")
        ax.set_ylabel("reward: mean improvement on the aligned target benchmarks")
        ax.set_title(f"{model} ({finetune})", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle("Reward against risk of each edit (Spectral Surgery Fig. 4), bootstrap intervals", fontsize=9)
    return save_figure(fig, out_stem, formats)
