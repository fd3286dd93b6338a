"""Uncertainty of every measured number, from the per-example scores each cell stores.

Bootstrap (percentile, 95 % by default). The evaluation examples are resampled with
replacement *within each group* (label x spurious attribute), so every resample keeps the
split's group-balanced design; this is ``scipy.stats.bootstrap`` with one sample per group
(it resamples each sample on its own, which is a stratified bootstrap). Each sample holds, per
example, the correctness of every model being compared: the edited cell (one row per seed),
its fine-tuned model (FT, one row per seed) and the base model. One resample draws the same
examples for all of them, so differences (accuracy loss, bias reduction) are paired.

With several seeds the statistic is the mean over seeds of the per-seed measure, as in the
tables, and the bootstrap has two levels: each resample also draws the seeds (S of them, with
replacement; scipy resamples the seed numbers as one more sample), so the interval covers both
which examples the evaluation set happened to contain and which fine-tuning runs the seeds
happened to give. Seeds and examples are crossed, not nested (every seed is scored on the same
split), so one draw of examples serves every drawn seed: with no variation between seeds this
is the one-level interval, and with examples that all score alike it is the interval of a
bootstrap over seeds alone. One seed: the one-level interval. Percentile intervals rather than BCa:
the statistics are discrete and often degenerate (an edit that changes no prediction), where
BCa is undefined. A ratio whose denominator is 0 in some resample has no interval (NaN).

McNemar's exact test compares an edited cell with its FT on the same examples: of the
examples where exactly one of them is right, b favour the edit and c the FT; under the null
both are equally likely, so p = two-sided binomial test of b in b + c at 1/2 (scipy's
``binomtest``; p = 1 when b + c = 0).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Statistics of the edited model; the derived ones compare it with its FT (and the base).
STATISTICS = (
    "accuracy",
    "gap",
    "worst_group_accuracy",
    "bias_reduction",
    "accuracy_loss",
    "normalised_gap",
    "acc_ft_to_base",
    "gap_ft_to_base",
)


@dataclass(frozen=True)
class GroupDesign:
    """Which evaluation examples form which group, and which groups are majority/minority."""

    groups: tuple[str, ...]  # every group present, in a fixed order
    index: tuple[np.ndarray, ...]  # example positions of each group
    majority: np.ndarray  # bool per group
    minority: np.ndarray  # bool per group

    @classmethod
    def from_examples(cls, example_groups: Sequence[str], majority: Sequence[str], minority: Sequence[str]) -> GroupDesign:
        example_groups = np.asarray(example_groups, dtype=object)
        names = tuple(g for g in [*majority, *minority] if np.any(example_groups == g))
        unknown = set(example_groups) - set(names)
        if unknown:
            raise ValueError(f"examples in groups that are neither majority nor minority: {sorted(unknown)}")
        return cls(
            names,
            tuple(np.flatnonzero(example_groups == g) for g in names),
            np.array([g in set(majority) for g in names]),
            np.array([g in set(minority) for g in names]),
        )

    def split(self, correct: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per group, the columns of ``correct`` (rows x examples) that belong to it."""
        return tuple(np.asarray(correct, float)[:, idx] for idx in self.index)


def _ratio(numerator, denominator):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator == 0, np.nan, numerator / np.where(denominator == 0, 1.0, denominator))


def group_summaries(per_group: Sequence[np.ndarray], design: GroupDesign) -> dict[str, np.ndarray]:
    """Accuracy, pooled majority/minority accuracy, gap and worst group of each row.

    ``per_group[j]`` has the examples of group j on its last axis; any leading axes (models,
    resamples) are kept.
    """
    sizes = np.array([part.shape[-1] for part in per_group], float)
    means = np.stack([part.mean(axis=-1) for part in per_group], axis=-1)  # (..., groups)

    def pooled(mask):
        return (means[..., mask] * sizes[mask]).sum(-1) / sizes[mask].sum() if mask.any() else np.full(means.shape[:-1], np.nan)

    accuracy = (means * sizes).sum(-1) / sizes.sum()
    majority, minority = pooled(design.majority), pooled(design.minority)
    return {"accuracy": accuracy, "gap": majority - minority, "worst_group_accuracy": means.min(-1)}


def paired_statistics(per_group: Sequence[np.ndarray], design: GroupDesign, n_seeds: int) -> np.ndarray:
    """Every statistic in STATISTICS (stacked on axis 0), from rows [edit x S, FT x S, base]:
    per seed the edit is compared with that seed's FT; the result is the mean over seeds."""
    return per_seed_statistics(per_group, design, n_seeds).mean(axis=1)


def per_seed_statistics(per_group: Sequence[np.ndarray], design: GroupDesign, n_seeds: int) -> np.ndarray:
    """Every statistic in STATISTICS for each seed: shape (statistics, seeds, ...), from rows
    [edit x S, FT x S, base] (any trailing axes of the groups' arrays are kept)."""
    summary = group_summaries(per_group, design)
    edit, ft, base = (slice(0, n_seeds), slice(n_seeds, 2 * n_seeds), slice(2 * n_seeds, 2 * n_seeds + 1))
    acc_e, acc_f, acc_b = (summary["accuracy"][rows] for rows in (edit, ft, base))
    gap_e, gap_f, gap_b = (summary["gap"][rows] for rows in (edit, ft, base))
    values = {
        "accuracy": acc_e,
        "gap": gap_e,
        "worst_group_accuracy": summary["worst_group_accuracy"][edit],
        "bias_reduction": 100 * _ratio(gap_f - gap_e, np.abs(gap_f)),
        "accuracy_loss": 100 * (acc_f - acc_e),
        "normalised_gap": _ratio(gap_e, np.abs(gap_f)),
        "acc_ft_to_base": _ratio(acc_e - acc_f, acc_b - acc_f),
        "gap_ft_to_base": _ratio(gap_e - gap_f, gap_b - gap_f),
    }
    return np.stack([values[name] for name in STATISTICS], axis=0)


def seed_mean(per_seed: np.ndarray, drawn: np.ndarray | None) -> np.ndarray:
    """The mean over seeds (axis 0) of per-seed values: of every seed (``drawn`` None, the data
    as they are), or, per resample b (the last axis), of the seeds resample b drew
    (``drawn[b]``, S seed positions, with repeats)."""
    if drawn is None:
        return per_seed.mean(axis=0)
    drawn = np.asarray(drawn)
    index = drawn.T.reshape((drawn.shape[1],) + (1,) * (per_seed.ndim - 2) + (drawn.shape[0],))
    return np.take_along_axis(per_seed, index, axis=0).mean(axis=0)


def bootstrap_intervals(
    edit: np.ndarray,
    finetuned: np.ndarray,
    base: np.ndarray,
    design: GroupDesign,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """95 % (``level``) stratified paired bootstrap intervals of STATISTICS.

    ``edit`` and ``finetuned`` are (seeds x examples) 0/1 correctness in the same example
    order, row s of both from seed s; ``base`` is (examples,). Returns {statistic: (low, high)}.
    """
    edit, finetuned = np.atleast_2d(edit), np.atleast_2d(finetuned)
    if edit.shape != finetuned.shape or edit.shape[1] != len(base):
        raise ValueError(f"correctness arrays do not match: edit {edit.shape}, FT {finetuned.shape}, base {len(base)}")
    n_seeds = edit.shape[0]
    samples = design.split(np.vstack([edit, finetuned, np.asarray(base)[None, :]]))
    if n_seeds == 1:

        def statistic(*per_group, axis=-1):
            return paired_statistics(per_group, design, n_seeds)

    else:
        # The seeds are one more sample: scipy draws S of them per resample, after the examples.
        samples = (*samples, np.arange(n_seeds))

        def statistic(*parts, axis=-1):
            *per_group, seeds = parts
            while seeds.ndim > per_group[0].ndim - 1:  # scipy broadcast it to the groups' leading axes
                seeds = seeds[0]
            values = per_seed_statistics(per_group, design, n_seeds)  # (statistics, S, resamples...)
            # Resample b takes the seeds it drew, each scored on resample b's examples.
            return seed_mean(np.moveaxis(values, 1, 0), None if seeds.ndim == 1 else seeds)

    low, high = percentile_bootstrap(samples, statistic, n_resamples, seed, level, batch=max(1, 2_000_000 // edit.size))
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(STATISTICS, low, high)}


def percentile_bootstrap(
    samples: Sequence[np.ndarray], statistic, n_resamples: int, seed: int, level: float, batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """scipy's percentile bootstrap of a vectorized ``statistic`` (k values on axis 0) over
    ``samples`` resampled independently (each one stratum, observations on the last axis);
    ``batch`` resamples are drawn at a time (memory, and the stream of draws). Returns (low, high)."""
    # A ratio with a zero denominator in some resample gives a NaN interval, which scipy reports
    # as degenerate data; NaN is the answer we want there ("undefined").
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            samples,
            statistic,
            n_resamples=n_resamples,
            axis=-1,
            vectorized=True,
            paired=False,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(seed),
            batch=batch,
        )
    low, high = result.confidence_interval
    return np.asarray(low, float), np.asarray(high, float)


def point_statistics(edit: np.ndarray, finetuned: np.ndarray, base: np.ndarray, design: GroupDesign) -> dict[str, float]:
    """The statistics themselves on the evaluation set as it is (what the intervals are around)."""
    edit, finetuned = np.atleast_2d(edit), np.atleast_2d(finetuned)
    values = paired_statistics(design.split(np.vstack([edit, finetuned, np.asarray(base)[None, :]])), design, edit.shape[0])
    return {name: float(v) for name, v in zip(STATISTICS, values)}


def mcnemar_exact(edit_correct: Sequence[bool], finetuned_correct: Sequence[bool]) -> dict[str, float]:
    """Exact McNemar test of two models on the same examples.

    Returns b (examples only the edit gets right), c (only the FT), and the two-sided p.
    """
    edit_correct, finetuned_correct = np.asarray(edit_correct, bool), np.asarray(finetuned_correct, bool)
    return mcnemar_counts(int(np.sum(edit_correct & ~finetuned_correct)), int(np.sum(~edit_correct & finetuned_correct)))


def mcnemar_counts(b: int, c: int) -> dict[str, float]:
    """McNemar's exact test from the discordant counts b (edit right only) and c (FT right only)."""
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"mcnemar_b": b, "mcnemar_c": c, "mcnemar_p": p}


def resolvable_difference_pp(n_examples: int, level: float = 0.95) -> float:
    """The smallest paired accuracy difference (pp) the exact McNemar test can declare at
    ``level`` on ``n_examples``: d examples that all favour one model give p = 2 * 0.5**d, so
    the least d with p < 1 - level, as a share of the set."""
    alpha = 1 - level
    d = 1
    while 2 * 0.5**d >= alpha:
        d += 1
    return 100 * d / n_examples if n_examples else math.nan


def align(examples: Sequence[Mapping], order: Sequence[str]) -> np.ndarray:
    """0/1 correctness of a cell's stored examples in the order of ``order`` (example ids)."""
    by_id = {str(e["id"]): int(e["prediction"]) == int(e["label"]) for e in examples}
    missing = [i for i in order if i not in by_id]
    if missing or len(by_id) != len(order):
        raise ValueError(
            f"cells were evaluated on different examples (e.g. {missing[:1] or sorted(set(by_id) - set(order))[:1]})"
        )
    return np.array([by_id[i] for i in order], float)
