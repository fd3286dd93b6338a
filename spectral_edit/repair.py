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
healed 100, preserved 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

SCORES = ["healed", "preserved", "non_damage", "task_retention", "hm"]


def load_heldout(paths: Iterable[str | Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        record = json.loads(Path(path).read_text())
        cell = record["cell"]
        rows.append(
            {
                "model": cell["model"],
                "dataset": cell.get("dataset"),
                "seed": cell.get("seed"),
                "finetune": cell.get("finetune"),
                "method": cell["method"],
                "retention": cell.get("retention"),
                "benchmark": cell["benchmark"],
                "accuracy": record["metrics"]["accuracy"],
            }
        )
    frame = pd.DataFrame(rows, columns=["model", "dataset", "seed", "finetune", "method", "retention", "benchmark", "accuracy"])
    frame["retention"] = pd.to_numeric(frame["retention"], errors="coerce")
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    return frame


def _clip01(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


def harmonic_mean(values: Iterable[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    if not defined:
        return math.nan
    if any(v <= 0 for v in defined):
        return 0.0
    return len(defined) / sum(1.0 / v for v in defined)


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
    healed, preserved, neutral = [], [], []
    counts = {"damaged": 0, "improved": 0, "neutral": 0}
    for benchmark, a_edit in edit.items():
        a_ft, a_base = finetuned[benchmark], base[benchmark]
        change = a_ft - a_base
        if change < -eps:
            counts["damaged"] += 1
            healed.append(_clip01((a_edit - a_ft) / (a_base - a_ft)))
        elif change > eps:
            counts["improved"] += 1
            preserved.append(_clip01((a_edit - a_base) / (a_ft - a_base)))
        else:
            counts["neutral"] += 1
            neutral.append(float(a_edit >= min(a_base, a_ft) - eps))
    mean = lambda xs: 100.0 * float(np.mean(xs)) if xs else math.nan  # noqa: E731
    scores = {
        "healed": mean(healed),
        "preserved": mean(preserved),
        "non_damage": mean(neutral),
        "task_retention": 100.0 * _clip01(task_edit / task_ft) if task_ft > 0 else math.nan,
    }
    scores["hm"] = harmonic_mean(scores.values())
    return {**scores, **{f"n_{k}": v for k, v in counts.items()}}


def _key(values) -> tuple:
    """A lookup key in which NaN and None agree (pandas gives NaN for a missing retention)."""
    return tuple(None if (v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA) else v for v in values)


def repair_table(heldout: pd.DataFrame, cells: pd.DataFrame, tolerance_pp: float = 1.0) -> pd.DataFrame:
    """Per task cell (edited and fine-tuned): the repair scores over its held-out benchmarks."""
    keys = ["model", "dataset", "seed", "finetune", "method", "retention"]
    columns = [*keys, *SCORES, "n_damaged", "n_improved", "n_neutral"]
    if heldout.empty:
        return pd.DataFrame(columns=columns)
    base = {
        (m, b): a
        for m, b, a, method in zip(heldout["model"], heldout["benchmark"], heldout["accuracy"], heldout["method"])
        if method == "base"
    }
    finetuned: dict[tuple, dict[str, float]] = {}
    for row in heldout[heldout["method"] == "finetuned"].itertuples():
        finetuned.setdefault(_key((row.model, row.dataset, row.seed, row.finetune)), {})[row.benchmark] = row.accuracy
    task = {_key(k): a for k, a in zip(cells[keys].itertuples(index=False, name=None), cells["accuracy"])}
    rows = []
    for key, group in heldout[heldout["method"] != "base"].groupby(keys, dropna=False, sort=False):
        model, dataset, seed, finetune, method, retention = _key(key)
        ft = finetuned.get((model, dataset, seed, finetune), {})
        edit = dict(zip(group["benchmark"], group["accuracy"]))
        if not set(edit) <= set(ft) or any((model, b) not in base for b in edit):
            continue
        task_edit = task.get((model, dataset, seed, finetune, method, retention), math.nan)
        task_ft = task.get((model, dataset, seed, finetune, "finetuned", None), math.nan)
        scores = repair_scores(edit, ft, {b: base[(model, b)] for b in edit}, task_edit, task_ft, tolerance_pp)
        rows.append({**dict(zip(keys, (model, dataset, seed, finetune, method, retention))), **scores})
    return pd.DataFrame(rows, columns=columns)


def summarise_repair(repair: pd.DataFrame) -> pd.DataFrame:
    keys = ["model", "dataset", "finetune", "method", "retention"]
    if repair.empty:
        return pd.DataFrame(columns=keys + ["n_seeds"] + [f"{s}_{k}" for s in SCORES for k in ("mean", "std")])
    grouped = repair.groupby(keys, dropna=False, sort=False)
    out = pd.concat(
        [
            grouped[SCORES].mean().add_suffix("_mean"),
            grouped[SCORES].std(ddof=1).add_suffix("_std"),
            grouped.size().rename("n_seeds"),
        ],
        axis=1,
    ).reset_index()
    return out[keys + ["n_seeds"] + [f"{s}_{k}" for s in SCORES for k in ("mean", "std")]]
