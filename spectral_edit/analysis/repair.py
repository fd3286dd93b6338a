"""The partition-conditional repair metric on held-out benchmarks (after Spectral Unforgetting,
arXiv 2605.20296, Sec. 4.3, whose capture gives no formula; these are our definitions).

For one fine-tuned checkpoint (model, task, seed, recipe) and each held-out benchmark b, with
accuracies a_base(b), a_ft(b) and a_edit(b) of the base, fine-tuned and edited models and a
tolerance eps (``analysis.heldout_tolerance_pp``, 1 pp):

  partition   fine-tuning damaged b if a_ft(b) - a_base(b) < -eps, improved it if > +eps,
              and left it neutral otherwise;
  healed      on the damaged benchmarks, the mean of clip((a_edit - a_ft) / (a_base - a_ft), 0, 1):
              the share of the damage the edit undid (100% = back at the base level or above);
  preserved   on the improved benchmarks, the mean of clip((a_edit - a_base) / (a_ft - a_base), 0, 1):
              the share of fine-tuning's gain the edit kept;
  non_damage  on the neutral benchmarks, the share with a_edit(b) >= min(a_base(b), a_ft(b)) - eps;
  task_retention  on the task itself, clip(acc_edit / acc_ft, 0, 1) on its evaluation split;
  hm          the harmonic mean of those of the four that are defined (a partition without
              benchmarks leaves its score undefined), 0 if any of them is 0.
All scores are in percent. The fine-tuned model scores healed 0, preserved 100; the base model
healed 100, preserved 0. An instruction task's retention is the mean over its own benchmarks
(datasets.<task>.benchmarks) of clip(score_edit / score_ft, 0, 1).

Held-out benchmarks are label-word datasets (their accuracy) or lm-eval benchmarks (their
metric). Every score has a bootstrap interval over the samples of all the benchmarks involved
(each resampled on its own, paired across the edited, fine-tuned and base models:
spectral_edit.analysis.benchmark_scores), with the partition held at the one the full samples give:
the scores are conditional on it, as their name says.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from spectral_edit.analysis.benchmark_scores import Compared, Scores, bootstrap
from spectral_edit.analysis.intervals import seed_mean

SCORES = ["healed", "preserved", "non_damage", "task_retention", "hm"]


def heldout_frame(records: Sequence[Mapping]) -> pd.DataFrame:
    """Every model's score on each held-out benchmark (label-word accuracy or lm-eval metric)."""
    columns = ["model", "dataset", "seed", "finetune", "method", "retention", "benchmark", "metric", "score"]
    rows = [
        {**{k: r["cell"].get(k) for k in columns[:7]}, "metric": r["info"]["metric"], "score": r["info"]["score"]}
        for r in records
    ]
    frame = pd.DataFrame(rows, columns=columns)
    frame["retention"] = pd.to_numeric(frame["retention"], errors="coerce")
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    return frame


PARTITIONS = ("damaged", "improved", "neutral")


def partition_of(change: float, eps: float) -> str:
    """How fine-tuning moved a benchmark: a_ft - a_base against the tolerance."""
    return "damaged" if change < -eps else "improved" if change > eps else "neutral"


def harmonic_mean(values: Iterable[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    if not defined:
        return math.nan
    if any(v <= 0 for v in defined):
        return 0.0
    return len(defined) / sum(1.0 / v for v in defined)


def partition_scores(
    edit: Sequence[np.ndarray],
    finetuned: Sequence[np.ndarray],
    base: Sequence[np.ndarray],
    partitions: Sequence[str],
    task_ratios: Sequence[np.ndarray],
    eps: float,
) -> np.ndarray:
    """healed, preserved, non_damage, task_retention, hm (stacked on axis 0) from per-benchmark
    values (scalars or arrays of resamples) and a fixed partition of the benchmarks."""
    shape = np.shape(edit[0]) if len(edit) else np.shape(task_ratios[0]) if len(task_ratios) else ()
    nan = np.full(shape, np.nan)

    def mean_of(parts):
        return 100.0 * np.mean(parts, axis=0) if parts else nan

    healed = [np.clip((e - f) / (b - f), 0, 1) for e, f, b, p in zip(edit, finetuned, base, partitions) if p == "damaged"]
    preserved = [np.clip((e - b) / (f - b), 0, 1) for e, f, b, p in zip(edit, finetuned, base, partitions) if p == "improved"]
    neutral = [
        (e >= np.minimum(b, f) - eps).astype(float) for e, f, b, p in zip(edit, finetuned, base, partitions) if p == "neutral"
    ]
    retention = [np.clip(r, 0, 1) for r in task_ratios]
    scores = [mean_of(healed), mean_of(preserved), mean_of(neutral), mean_of(retention)]
    stacked = np.stack([np.broadcast_to(np.asarray(v, float), shape) for v in scores])
    # Harmonic mean of the defined scores (an empty partition is undefined), 0 if any is 0.
    defined = ~np.isnan(stacked)
    count = defined.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(defined, 1.0 / stacked, 0.0).sum(axis=0)
        hm = np.where(count == 0, np.nan, count / inverse)
    hm = np.where((defined & (stacked <= 0)).any(axis=0), 0.0, hm)
    return np.concatenate([stacked, hm[None]], axis=0)


def repair_scores(
    edit: dict[str, float],
    finetuned: dict[str, float],
    base: dict[str, float],
    task_edit: float,
    task_ft: float,
    tolerance_pp: float = 1.0,
) -> dict:
    """Scores of one edited model from per-benchmark accuracies (dicts benchmark -> accuracy)."""
    eps = tolerance_pp / 100.0
    names = list(edit)
    partitions = [partition_of(finetuned[b] - base[b], eps) for b in names]
    ratios = [np.float64(task_edit / task_ft)] if task_ft > 0 else [np.float64(np.nan)]
    values = partition_scores(
        [np.float64(edit[b]) for b in names], [np.float64(finetuned[b]) for b in names], [np.float64(base[b]) for b in names],
        partitions, ratios, eps,
    )  # fmt: skip
    scores = dict(zip(SCORES, (float(v) for v in values)))
    return {**scores, **{f"n_{p}": partitions.count(p) for p in PARTITIONS}}


def repair_tables(
    task: Mapping[tuple, list[Scores]],
    heldout: Sequence[Mapping],
    tolerance_pp: float = 1.0,
    bootstrap_args: Mapping | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-seed repair scores, their seed means) of every edited and fine-tuned cell, with intervals.

    ``task`` maps (model, dataset, seed, finetune, method, retention) to the scores that measure
    the task itself (its label-word cell, or its own benchmarks); ``heldout`` holds the loaded
    held-out cells ({cell, scores}; base cells carry no dataset).
    """
    eps = tolerance_pp / 100.0
    bootstrap_args = dict(bootstrap_args or {})
    base = {(r["cell"]["model"], r["cell"]["benchmark"]): r["scores"] for r in heldout if r["cell"]["method"] == "base"}
    by_cell: dict[tuple, dict] = {}
    for record in heldout:
        cell = record["cell"]
        if cell["method"] != "base":
            key = (cell["model"], cell["dataset"], cell["finetune"], cell["method"], cell.get("retention"))
            by_cell.setdefault(key, {}).setdefault(cell["seed"], {})[cell["benchmark"]] = record["scores"]
    per_seed, summary = [], []
    for (model, dataset, finetune, method, retention), seeds in by_cell.items():
        fts = by_cell.get((model, dataset, finetune, "finetuned", None), {})
        common = sorted(s for s in seeds if s in fts)
        names = sorted(set.intersection(*(set(seeds[s]) & set(fts[s]) for s in common))) if common else []
        names = [b for b in names if (model, b) in base]
        task_of = {s: task.get((model, dataset, s, finetune, method, retention)) for s in common}
        task_ft = {s: task.get((model, dataset, s, finetune, "finetuned", None)) for s in common}
        if not names or not common:
            continue
        n = len(common)
        sets = [[*(seeds[s][b] for s in common), *(fts[s][b] for s in common), base[(model, b)]] for b in names]
        n_task = min(len(task_of[s] or []) for s in common) if all(task_ft[s] for s in common) else 0
        sets += [[*(task_of[s][t] for s in common), *(task_ft[s][t] for s in common)] for t in range(n_task)]
        compared = [Compared.of(scores) for scores in sets]
        point_values = [np.array([x.value for x in scores]) for scores in sets]
        # The partition of each seed, fixed at the full samples' values.
        partitions = {
            s: [partition_of(v[n + i] - v[2 * n], eps) for v in point_values[: len(names)]] for i, s in enumerate(common)
        }

        def statistic(values, drawn=None, names=names, n=n, n_task=n_task, partitions=partitions, common=common):
            per_seed_scores = []
            for i, s in enumerate(common):
                held = values[: len(names)]
                ratios = [v[i] / v[n + i] for v in values[len(names) : len(names) + n_task]]
                per_seed_scores.append(
                    partition_scores(
                        [v[i] for v in held], [v[n + i] for v in held], [v[2 * n] for v in held], partitions[s], ratios, eps
                    )
                )
            stacked = np.stack(per_seed_scores)  # (seeds, scores, ...)
            # Each seed's own scores over the samples; their mean over the seeds drawn as well.
            return np.concatenate([stacked.reshape((-1,) + stacked.shape[2:]), seed_mean(stacked, drawn)], axis=0)

        if all(x.resamplable for scores in sets for x in scores):
            point, low, high = bootstrap(compared, statistic, n_seeds=n, **bootstrap_args)
        else:
            point = np.asarray(statistic(point_values), float)
            low = high = np.full_like(point, np.nan)
        k = len(SCORES)
        head = {"model": model, "dataset": dataset, "finetune": finetune, "method": method, "retention": retention}
        for i, s in enumerate(common):
            row = {**head, "seed": s}
            row.update({f"n_{p}": partitions[s].count(p) for p in PARTITIONS})
            for j, name in enumerate(SCORES):
                row[name], row[f"{name}_lo"], row[f"{name}_hi"] = point[i * k + j], low[i * k + j], high[i * k + j]
            per_seed.append(row)
        row = {**head, "n_seeds": n, "benchmarks": " ".join(names)}
        row.update({f"n_{p}": float(np.mean([partitions[s].count(p) for s in common])) for p in PARTITIONS})
        for j, name in enumerate(SCORES):
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = point[n * k + j], low[n * k + j], high[n * k + j]
        summary.append(row)
    interval_columns = [f"{name}{x}" for name in SCORES for x in ("", "_lo", "_hi")]
    keys = ["model", "dataset", "finetune", "method", "retention"]
    counts = [f"n_{p}" for p in PARTITIONS]
    return (
        _ordered(pd.DataFrame(per_seed, columns=[*keys[:2], "seed", *keys[2:], *interval_columns, *counts])),
        _ordered(pd.DataFrame(summary, columns=[*keys, "n_seeds", *interval_columns, *counts, "benchmarks"])),
    )


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    frame["retention"] = pd.to_numeric(frame["retention"], errors="coerce")
    order = frame["method"].map({"finetuned": 0}).fillna(1)
    return (
        frame.assign(_order=order)
        .sort_values(
            ["model", "dataset", "finetune", "_order", "method", "retention"], ascending=[True] * 5 + [False], kind="stable"
        )
        .drop(columns="_order")
        .reset_index(drop=True)
    )
