"""Per-sample scores of the cells on benchmarks and held-out datasets, and their intervals.

Every benchmark cell stores lm-eval's per-sample scores (spectral_edit.benchmarks.harness), and
every label-word cell its per-example predictions, so any number built from them gets a
bootstrap interval without rerunning an evaluation, as the task cells' numbers do
(spectral_edit.analysis.intervals): a percentile bootstrap over the samples (``analysis.bootstrap``),

  * stratified: the samples of each stratum are resampled within it, a benchmark's leaf tasks
    (MMLU's 57 subjects) or a label-word split's (label x attribute) groups, and the benchmark's
    value is recombined as lm-eval combines it (the mean of a task; a group's leaf tasks pooled,
    or averaged when its ``weight_by_size`` is false), so the point estimate is lm-eval's number;
  * paired: one resample draws the same samples for every model compared (the edited cell, its
    fine-tuned model and the base), so differences carry the uncertainty of the difference;
  * joint over benchmarks: a statistic of several benchmarks (a repair score, Fig. 4's reward)
    resamples each benchmark's samples on its own in the same resample.
scipy's ``bootstrap`` does the resampling (each stratum a sample, resampled independently).
A number whose per-sample mean is not lm-eval's (a corpus-level metric such as BLEU) gets its
point value from lm-eval and no interval.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spectral_edit.analysis.intervals import mcnemar_counts, percentile_bootstrap


@dataclass(frozen=True)
class Scores:
    """One model's per-sample scores on one benchmark or dataset, stratum after stratum."""

    values: np.ndarray
    ids: tuple[str, ...]  # sample identities, the same order for every model of a benchmark
    sizes: tuple[int, ...]  # samples per stratum
    weight_by_size: bool = True
    reported: float | None = None  # lm-eval's own number, when it is not the per-sample mean

    @property
    def value(self) -> float:
        if self.reported is not None:
            return self.reported
        return float(combine(stratum_means(self.values, self.sizes), self.sizes, self.weight_by_size))

    @property
    def binary(self) -> bool:
        return bool(np.isin(self.values, (0.0, 1.0)).all())

    @property
    def resamplable(self) -> bool:
        return self.reported is None and min(self.sizes, default=0) >= 2


def stratum_means(values: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Mean of each stratum along the last axis: (..., n) -> (..., strata)."""
    bounds = np.cumsum([0, *sizes])
    return np.stack([values[..., a:b].mean(axis=-1) for a, b in zip(bounds[:-1], bounds[1:])], axis=-1)


def combine(means: np.ndarray, sizes: Sequence[int], weight_by_size: bool) -> np.ndarray:
    """A benchmark's value from its strata's means (lm-eval's group aggregation)."""
    weights = np.asarray(sizes, float) if weight_by_size else np.ones(len(sizes))
    return (means * weights).sum(axis=-1) / weights.sum()


def from_benchmark_record(record: Mapping) -> Scores:
    """The scores of a benchmark cell's metric ("metric,filter"), leaf task after leaf task."""
    benchmark = record["benchmark"]
    metric, filter_name = benchmark["metric"].split(",", 1)
    values, ids, sizes = [], [], []
    for leaf in benchmark["leaf_tasks"]:
        rows = [s for s in benchmark["samples"][leaf] if s["filter"] == filter_name and metric in s]
        values += [float(s[metric]) for s in rows]
        ids += [f"{leaf}/{s['doc_id']}" for s in rows]
        sizes.append(len(rows))
    scores = Scores(np.asarray(values, float), tuple(ids), tuple(sizes), bool(benchmark.get("weight_by_size", True)))
    if not math.isclose(scores.value, float(benchmark["score"]), rel_tol=0, abs_tol=1e-9):
        # Not a mean of per-sample values (a corpus-level metric): lm-eval's number, no interval.
        return Scores(scores.values, scores.ids, scores.sizes, scores.weight_by_size, float(benchmark["score"]))
    return scores


def from_label_word_record(record: Mapping) -> Scores:
    """A label-word cell's 0/1 correctness, stratified by (label x attribute) group."""
    examples = sorted(record["examples"], key=lambda e: (e["group"], str(e["id"])))
    groups = [e["group"] for e in examples]
    sizes = tuple(groups.count(g) for g in dict.fromkeys(groups))
    values = np.array([float(int(e["prediction"]) == int(e["label"])) for e in examples])
    return Scores(values, tuple(f"{e['group']}/{e['id']}" for e in examples), sizes)


def load_record(path: str | Path) -> dict:
    """A benchmark or label-word cell file as {cell, scores, info}: its identity, its per-sample
    scores, and its metric, score, lm-eval version and task hashes."""
    record = json.loads(Path(path).read_text())
    if "benchmark" in record:
        benchmark = record["benchmark"]
        info = {
            "metric": benchmark["metric"],
            "score": float(benchmark["score"]),
            "lm_eval": benchmark["lm_eval"]["version"],
            "task_hash": " ".join(benchmark["lm_eval"]["task_hashes"].values()),
        }
        return {"cell": record["cell"], "scores": from_benchmark_record(record), "info": info}
    info = {"metric": "accuracy", "score": float(record["metrics"]["accuracy"]), "lm_eval": None, "task_hash": None}
    return {"cell": record["cell"], "scores": from_label_word_record(record), "info": info}


def aligned(scores: Sequence[Scores]) -> np.ndarray:
    """The models' scores as rows of one matrix; they must be on the same samples."""
    first = scores[0]
    for other in scores[1:]:
        if other.ids != first.ids:
            missing = sorted(set(first.ids) ^ set(other.ids))[:1]
            raise ValueError(f"cells were scored on different samples (e.g. {missing or 'the same ids in another order'})")
    return np.vstack([s.values for s in scores])


@dataclass(frozen=True)
class Compared:
    """The models compared on one benchmark: rows of aligned per-sample scores."""

    matrix: np.ndarray  # (models, samples)
    sizes: tuple[int, ...]
    weight_by_size: bool

    @classmethod
    def of(cls, scores: Sequence[Scores]) -> Compared:
        return cls(aligned(scores), scores[0].sizes, scores[0].weight_by_size)


def bootstrap(
    compared: Sequence[Compared],
    statistic: Callable[..., np.ndarray],
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    n_seeds: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point values and percentile intervals of ``statistic``.

    ``statistic`` maps the benchmarks' values, one array (models, ...) per entry of ``compared``
    (any trailing axes are resamples, as scipy passes them), to k statistics stacked on axis 0.
    With ``n_seeds`` > 1 the seeds are resampled too (the second level, as in
    spectral_edit.analysis.intervals): ``statistic(values, drawn)`` then gets the seed positions each
    resample drew ((resamples, S); None for the data as they are) and averages its per-seed
    values over them with :func:`~spectral_edit.analysis.intervals.seed_mean`.
    Returns (point, low, high), each of length k; NaN intervals when a benchmark cannot be
    resampled.
    """
    # scipy broadcasts the samples' leading axes together, so every stratum gets as many rows
    # (models) as the widest benchmark, the extra rows repeating its last one and cut off again.
    rows = max(entry.matrix.shape[0] for entry in compared)
    parts, owner = [], []
    for i, entry in enumerate(compared):
        bounds = np.cumsum([0, *entry.sizes])
        padded = np.vstack([entry.matrix, np.repeat(entry.matrix[-1:], rows - entry.matrix.shape[0], axis=0)])
        for a, b in zip(bounds[:-1], bounds[1:]):
            parts.append(padded[:, a:b])
            owner.append(i)

    def values_of(strata: Sequence[np.ndarray]) -> list[np.ndarray]:
        out = []
        for i, entry in enumerate(compared):
            means = np.stack([strata[j].mean(axis=-1) for j in range(len(strata)) if owner[j] == i], axis=-1)
            out.append(combine(means, entry.sizes, entry.weight_by_size)[: entry.matrix.shape[0]])
        return out

    seeded = n_seeds > 1
    point = np.asarray(statistic(values_of(parts), None) if seeded else statistic(values_of(parts)), float)
    if any(part.shape[-1] < 2 for part in parts):
        return point, np.full_like(point, np.nan), np.full_like(point, np.nan)
    if seeded:
        parts.append(np.arange(n_seeds))  # resampled after the strata, as one more sample

    def resampled(*strata, axis=-1):
        if not seeded:
            return statistic(values_of(strata))
        *strata, drawn = strata
        while drawn.ndim > 2:  # scipy broadcast it to the strata's leading axes
            drawn = drawn[0]
        return statistic(values_of(strata), drawn)

    size = sum(part.size for part in parts)
    low, high = percentile_bootstrap(parts, resampled, n_resamples, seed, level, batch=max(1, 4_000_000 // max(size, 1)))
    return point, low, high


def mcnemar(edit: np.ndarray, finetuned: np.ndarray) -> dict:
    """Exact McNemar test of 0/1 per-sample scores (discordant counts summed over seeds' rows)."""
    edit, finetuned = np.atleast_2d(edit).astype(bool), np.atleast_2d(finetuned).astype(bool)
    return mcnemar_counts(int((edit & ~finetuned).sum()), int((~edit & finetuned).sum()))
