"""Registry of the papers' figures, one module per figure.

Each module in this package (but ``common``, the plotting helpers) registers one figure with
``@register``: its name (the file stem under results/figures/ and of its caption
rules/captions/<name>.rst), its place in the list, which configs produce it, and its draw
function. Every module is imported on first use, so adding a figure is adding one file (and its
caption). Planning imports this package to know the figures: importing it and every figure
module must not import matplotlib or pandas, so draw functions import them (and ``common``)
when they run.

Every figure is written as PNG and PDF. Error bars and bands are the bootstrap intervals of the
tables (spectral_edit/analysis/intervals.py); the shaded no-cost zone is Table 1's
(spectral_edit/analysis/table1.NoCostZone)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spectral_edit.layout import FIGURE_FORMATS

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class FigureInputs:
    """Everything a figure is drawn from: the aggregated tables, the spectra and the config's
    analysis and controls. ``spectra``: entries {model, dataset, seed, finetune, path} of
    spectrum.json files; ``controls``: {recipe name: resolved recipe} of the grid's controls."""

    summary: pd.DataFrame
    table1: pd.DataFrame
    spectra: Sequence[Mapping] = ()
    analysis: Mapping[str, Any] = field(default_factory=dict)
    controls: Mapping[str, Mapping] = field(default_factory=dict)
    repair_summary: pd.DataFrame | None = None
    regimes: pd.DataFrame | None = None
    guided_vs_random: pd.DataFrame | None = None
    reward_risk: pd.DataFrame | None = None
    cell_comparison: pd.DataFrame | None = None


# when(config, surgery_policies): whether a config produces the figure; surgery_policies maps the
# grid's methods to their Spectral Surgery policy.
ProducedWhen = Callable[[Mapping, Mapping[str, str]], bool]
Draw = Callable[[FigureInputs, Path, Sequence[str]], list[Path]]


@dataclass(frozen=True)
class Figure:
    """A registered figure. ``order`` places it in figure_names (and so in the report)."""

    name: str
    order: int
    when: ProducedWhen
    draw: Draw


def label_word_tasks(config: Mapping, surgery_policies: Mapping[str, str] | None = None) -> bool:
    """Whether the grid has a label-word (not instruction) dataset: the figures of the
    shortcut-gap measures need one."""
    grid, datasets = config["grid"], config["datasets"]
    return any(datasets[d]["kind"] != "instruction" for d in grid["datasets"])


def with_benchmarks(config: Mapping, surgery_policies: Mapping[str, str] | None = None) -> bool:
    """Whether a dataset of the grid names lm-eval benchmarks (Spectral Surgery's figures)."""
    return any(config["datasets"][d].get("benchmarks") for d in config["grid"]["datasets"])


def always(config: Mapping, surgery_policies: Mapping[str, str] | None = None) -> bool:
    return True


_REGISTRY: dict[str, Figure] = {}
_loaded = False
_HELPER_MODULES = {"common"}  # imported only when drawing: it imports matplotlib


def register(name: str, *, order: int, when: ProducedWhen = always):
    """Decorator that registers a draw function ``draw(inputs, out_stem, formats) -> paths``
    as the figure ``name``, drawn for the configs where ``when`` is true."""

    def decorate(draw: Draw) -> Draw:
        if name in _REGISTRY:
            raise RuntimeError(f"figure {name!r} registered twice")
        clash = [f.name for f in _REGISTRY.values() if f.order == order]
        if clash:
            raise RuntimeError(f"figures {clash[0]!r} and {name!r} both have order {order}")
        _REGISTRY[name] = Figure(name, order, when, draw)
        return draw

    return decorate


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for module in pkgutil.iter_modules(__path__):
            if module.name not in _HELPER_MODULES:
                importlib.import_module(f"{__name__}.{module.name}")
        _loaded = True


def available_figures() -> dict[str, Figure]:
    """Every registered figure, in figure order."""
    _load_all()
    return {f.name: f for f in sorted(_REGISTRY.values(), key=lambda f: f.order)}


def figure_names(config: Mapping, surgery_policies: Mapping[str, str] | None = None) -> list[str]:
    """The figures a config produces, in figure order: those of its label-word tasks (the core
    four, and those of the controls and methods it names), the spectra, and those of its
    benchmarks. ``surgery_policies`` maps grid methods to their Spectral Surgery policy."""
    policies = dict(surgery_policies or {})
    return [name for name, figure in available_figures().items() if figure.when(config, policies)]


def draw_figures(
    inputs: FigureInputs, out_dir: str | Path, names: Sequence[str], formats: Sequence[str] = FIGURE_FORMATS
) -> list[Path]:
    """Draws the figures ``names`` into out_dir/<name>.<format>; returns the files written."""
    figures = available_figures()
    unknown = [name for name in names if name not in figures]
    if unknown:
        raise KeyError(f"unknown figure {unknown[0]!r} (known: {', '.join(figures)})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        written += figures[name].draw(inputs, out_dir / name, formats)
    return written
