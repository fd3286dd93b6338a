"""Typed, frozen records of the config sections the library receives, built once from the
validated config.

The schema (config.schema.yaml) is the only place a default lives: Snakemake's ``validate``
and :func:`spectral_edit.plan.config.load_config` fill them in before any record is built, so
``from_mapping`` reads every key with ``[]`` and a missing one is a bug (a ``KeyError`` naming
it), not a reason to guess. Keys the schema leaves without a default on purpose are optional
fields (``None`` when absent). Rules still pass plain dicts as params (Snakemake compares
them by repr to decide reruns); a workflow script builds its record at the top.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np


def _required(mapping: Mapping, key: str, where: str):
    """``mapping[key]``, with a KeyError that names the full key (``analysis.bootstrap.seed``)."""
    try:
        return mapping[key]
    except KeyError:
        raise KeyError(f"{where}.{key}") from None


def with_schema_defaults(section: str, given: Mapping | None = None) -> dict:
    """A top-level config section with the schema's defaults filled in (validated): for tests
    and notebooks that spell out only what they change."""
    from spectral_edit.plan.config import validate_section  # local import: config pulls in the methods

    return validate_section(section, dict(given or {}))


@dataclass(frozen=True)
class NoCostZone:
    """Accuracy loss (pp) of an edit against its fine-tuned model that counts as no cost:
    below ``below_pp``, and at least ``from_pp`` when that is set (Table 1, the figures)."""

    below_pp: float
    from_pp: float | None

    @classmethod
    def from_mapping(cls, zone: Mapping, where: str = "analysis.no_cost_zone") -> NoCostZone:
        low = _required(zone, "from_pp", where)
        return cls(float(_required(zone, "below_pp", where)), None if low is None else float(low))

    @classmethod
    def from_analysis(cls, analysis: Mapping) -> NoCostZone:
        return cls.from_mapping(_required(analysis, "no_cost_zone", "analysis"))

    def contains(self, loss_pp):
        loss_pp = np.asarray(loss_pp, float)
        inside = loss_pp < self.below_pp
        return inside & (loss_pp >= self.from_pp) if self.from_pp is not None else inside

    def contains_interval(self, low_pp: float, high_pp: float) -> bool:
        """Whether a whole accuracy-loss interval lies in the zone."""
        if not (math.isfinite(low_pp) and math.isfinite(high_pp)):
            return False
        return high_pp < self.below_pp and (self.from_pp is None or low_pp >= self.from_pp)

    def describe(self) -> str:
        if self.from_pp is None:
            return f"accuracy loss < {self.below_pp:g} pp"
        return f"{self.from_pp:g} pp ≤ accuracy loss < {self.below_pp:g} pp"


@dataclass(frozen=True)
class Bootstrap:
    """The intervals' bootstrap over the evaluation examples (analysis.bootstrap)."""

    resamples: int
    seed: int
    level: float

    @classmethod
    def from_mapping(cls, bootstrap: Mapping, where: str = "analysis.bootstrap") -> Bootstrap:
        return cls(
            int(_required(bootstrap, "resamples", where)),
            int(_required(bootstrap, "seed", where)),
            float(_required(bootstrap, "level", where)),
        )

    def resampling(self) -> dict:
        """The keyword arguments of the interval functions (intervals.bootstrap_intervals)."""
        return {"n_resamples": self.resamples, "seed": self.seed, "level": self.level}


@dataclass(frozen=True)
class Analysis:
    """The analysis section: what the tables, Table 1 and the figures are computed with."""

    no_cost_zone: NoCostZone
    bootstrap: Bootstrap
    regimes: Mapping[str, str]  # dataset -> auto, natural or boundary; a dataset not named is auto
    sweet_spot_method: str
    reference_finetune: str
    risk_benchmarks: tuple[str, ...]
    heldout_tolerance_pp: float

    @classmethod
    def from_mapping(cls, analysis: Mapping, where: str = "analysis") -> Analysis:
        return cls(
            no_cost_zone=NoCostZone.from_mapping(_required(analysis, "no_cost_zone", where), f"{where}.no_cost_zone"),
            bootstrap=Bootstrap.from_mapping(_required(analysis, "bootstrap", where), f"{where}.bootstrap"),
            regimes=MappingProxyType(dict(_required(analysis, "regimes", where))),
            sweet_spot_method=str(_required(analysis, "sweet_spot_method", where)),
            reference_finetune=str(_required(analysis, "reference_finetune", where)),
            risk_benchmarks=tuple(_required(analysis, "risk_benchmarks", where)),
            heldout_tolerance_pp=float(_required(analysis, "heldout_tolerance_pp", where)),
        )

    @classmethod
    def from_config(cls, config: Mapping) -> Analysis:
        return cls.from_mapping(_required(config, "analysis", "config"))


@dataclass(frozen=True)
class Runtime:
    """Device and dtype of the jobs, as configured (``auto`` resolved by runtime.resolve)."""

    device: str
    dtype: str

    @classmethod
    def from_mapping(cls, runtime: Mapping, where: str = "runtime") -> Runtime:
        return cls(str(_required(runtime, "device", where)), str(_required(runtime, "dtype", where)))

    @classmethod
    def from_config(cls, config: Mapping) -> Runtime:
        return cls.from_mapping(_required(config, "runtime", "config"))


@dataclass(frozen=True)
class FinetuneHyper:
    """A recipe's hyperparameters: the finetune section with its overrides applied."""

    steps: int
    batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    lr_scheduler: str
    # No schema default on purpose (configs without it keep their fine-tunes' params); None
    # is read as 0 by the scheduler that uses it.
    min_lr_ratio: float | None
    warmup_steps: int
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    max_grad_norm: float
    max_length: int

    @classmethod
    def from_mapping(cls, hyper: Mapping, where: str = "finetune") -> FinetuneHyper:
        low = hyper.get("min_lr_ratio")  # optional: see the field
        return cls(
            steps=int(_required(hyper, "steps", where)),
            batch_size=int(_required(hyper, "batch_size", where)),
            gradient_accumulation_steps=int(_required(hyper, "gradient_accumulation_steps", where)),
            learning_rate=float(_required(hyper, "learning_rate", where)),
            lr_scheduler=str(_required(hyper, "lr_scheduler", where)),
            min_lr_ratio=None if low is None else float(low),
            warmup_steps=int(_required(hyper, "warmup_steps", where)),
            weight_decay=float(_required(hyper, "weight_decay", where)),
            adam_beta1=float(_required(hyper, "adam_beta1", where)),
            adam_beta2=float(_required(hyper, "adam_beta2", where)),
            max_grad_norm=float(_required(hyper, "max_grad_norm", where)),
            max_length=int(_required(hyper, "max_length", where)),
        )


@dataclass(frozen=True)
class FinetuneRecipe:
    """A resolved fine-tuning recipe (plan.config.resolve_finetune / recipe_for_dataset): its
    kind, the adapter's keys (lora, speclora; None for full SFT) and its hyperparameters."""

    kind: str
    rank: int | None
    alpha: float | None
    dropout: float | None
    target_modules: tuple[str, ...] | None
    top_k: int | None  # speclora only
    hyper: FinetuneHyper

    @classmethod
    def from_mapping(cls, recipe: Mapping, where: str = "finetunes") -> FinetuneRecipe:
        """From a resolved recipe with its ``hyper`` (resolve_finetune fills alpha, dropout and
        target_modules of an adapter recipe)."""
        kind = str(_required(recipe, "kind", where))
        adapter = kind != "full"
        return cls(
            kind=kind,
            rank=int(_required(recipe, "rank", where)) if adapter else None,
            alpha=float(_required(recipe, "alpha", where)) if adapter else None,
            dropout=float(_required(recipe, "dropout", where)) if adapter else None,
            target_modules=tuple(_required(recipe, "target_modules", where)) if adapter else None,
            top_k=int(_required(recipe, "top_k", where)) if kind == "speclora" else None,
            hyper=FinetuneHyper.from_mapping(_required(recipe, "hyper", where), f"{where}.hyper"),
        )
