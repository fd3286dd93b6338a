"""Tables of the benchmark cells: every score with its interval, Spectral Surgery's Table 2 and
the numbers of its Figs. 3 and 4.

Per (model, task, recipe) and benchmark, every cell is compared with that seed's fine-tuned
model (FT, the paper's "unedited adapter") and with the base model on the same samples:
    score        the benchmark's number (lm-eval's metric, e.g. exact_match,flexible-extract)
    diff_ft      score - score of FT              (the paper's improvement over the baseline)
    diff_base    score - score of the base model
each with a stratified paired bootstrap interval (spectral_edit.analysis.benchmark_scores) and, where
the per-sample scores are 0/1, McNemar's exact test against FT. With several seeds a row of the
summary is the mean over seeds (the samples resampled alike for every seed).

Spectral Surgery (arXiv 2603.03995):
  Table 2   rows (model, task, the task's own benchmarks), columns FT and every edit;
  Fig. 3    per (model, task, benchmark) the improvement of the random_index policy (x) against
            that of grad_direction (y);
  Fig. 4    per model and edit, the reward (mean improvement over the target benchmarks that are
            not risk benchmarks) against the risk (the drop on the risk benchmarks,
            ``analysis.risk_benchmarks``, target or held out, clipped at 0, averaged over them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from spectral_edit.analysis.benchmark_scores import Compared, Scores, bootstrap, mcnemar
from spectral_edit.analysis.intervals import seed_mean

KEYS = ["model", "dataset", "seed", "finetune", "method", "retention"]
STATS = ("score", "diff_ft", "diff_base")
REFERENCES = ("base", "finetuned")


def _index(records: Sequence[Mapping]) -> dict[tuple, Mapping]:
    """Records by (model, dataset, seed, finetune, method, retention, benchmark); a base record
    has no dataset, seed or recipe."""
    index = {}
    for record in records:
        cell = record["cell"]
        key = tuple(cell.get(k) for k in KEYS) + (cell["benchmark"],)
        index[key] = record
    return index


def checkpoints_of(records: Sequence[Mapping]) -> list[tuple[str, str, str]]:
    """The (model, dataset, recipe) of every fine-tuned record, in order."""
    found = [
        (r["cell"]["model"], r["cell"]["dataset"], r["cell"]["finetune"]) for r in records if r["cell"]["method"] == "finetuned"
    ]
    return list(dict.fromkeys(found))


def _variants(records: Sequence[Mapping], model: str, dataset: str, finetune: str, benchmark: str) -> dict:
    """(method, retention) -> {seed: record} of one checkpoint's cells on a benchmark."""
    out: dict = {}
    for record in records:
        cell = record["cell"]
        if (cell["model"], cell["dataset"], cell["finetune"], cell["benchmark"]) == (model, dataset, finetune, benchmark):
            out.setdefault((cell["method"], cell["retention"]), {})[cell["seed"]] = record
    return out


def _row_statistics(values: list[np.ndarray], n_seeds: int, drawn=None) -> np.ndarray:
    """score, diff_ft and diff_base of rows [edit x S, FT x S, base] (means over the seeds, or
    over the seeds a resample ``drawn``)."""
    v = values[0]
    edit, ft, base = v[:n_seeds], v[n_seeds : 2 * n_seeds], v[2 * n_seeds]
    score = seed_mean(edit, drawn)
    return np.stack([score, seed_mean(edit - ft, drawn), score - base])


def compare_scores(edit: list[Scores], ft: list[Scores], base: Scores, bootstrap_args: Mapping) -> dict:
    """score, diff_ft and diff_base with intervals, McNemar against FT, of one model's seeds."""
    compared = Compared.of([*edit, *ft, base])
    n_seeds = len(edit)
    resamplable = all(s.resamplable for s in (*edit, *ft, base))
    if resamplable:
        point, low, high = bootstrap(
            [compared], lambda v, drawn=None: _row_statistics(v, n_seeds, drawn), n_seeds=n_seeds, **bootstrap_args
        )
    else:
        point = np.array([np.mean([s.value for s in edit]), np.mean([e.value - f.value for e, f in zip(edit, ft)]), 0.0], float)
        point[2] = point[0] - base.value
        low = high = np.full(3, np.nan)
    row = {}
    for i, name in enumerate(STATS):
        row[name], row[f"{name}_lo"], row[f"{name}_hi"] = float(point[i]), float(low[i]), float(high[i])
    if all(s.binary for s in (*edit, *ft)):
        row.update(mcnemar(compared.matrix[:n_seeds], compared.matrix[n_seeds : 2 * n_seeds]))
    else:
        row.update(mcnemar_b=math.nan, mcnemar_c=math.nan, mcnemar_p=math.nan)
    row["n_samples"] = compared.matrix.shape[1]
    return row


def benchmark_tables(
    records: Sequence[Mapping], roles: Mapping[tuple[str, str], str], bootstrap_args: Mapping
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-seed rows, seed-mean summary) of every benchmark cell.

    ``records``: loaded benchmark cells ({cell, scores, info}); ``roles``: (task, benchmark) ->
    "target" (the task's own benchmark) or "heldout".
    """
    index = _index(records)
    per_seed, summary = [], []
    for model, dataset, finetune in checkpoints_of(records):
        for (task, benchmark), role in roles.items():
            if task != dataset:
                continue
            base = index.get((model, None, None, None, "base", None, benchmark))
            variants = _variants(records, model, dataset, finetune, benchmark)
            fts = variants.get(("finetuned", None), {})
            if base is None or not fts:
                continue
            seeds = sorted(fts)
            kinds = {("base", None): {s: base for s in seeds}, **variants}
            for (method, retention), by_seed in kinds.items():
                common = [s for s in seeds if s in by_seed]
                if not common:
                    continue
                info = by_seed[common[0]]["info"]
                head = {"model": model, "dataset": dataset, "finetune": finetune, "method": method, "retention": retention}
                tail = {"benchmark": benchmark, "role": role, "metric": info["metric"]}
                for seed in common:
                    row = compare_scores([by_seed[seed]["scores"]], [fts[seed]["scores"]], base["scores"], bootstrap_args)
                    seed_info = by_seed[seed]["info"]
                    per_seed.append(
                        {
                            **head,
                            "seed": None if method == "base" else seed,
                            **tail,
                            **row,
                            **{k: seed_info[k] for k in ("lm_eval", "task_hash")},
                        }
                    )
                    if method == "base":
                        break  # one row of the base model per task
                row = compare_scores(
                    [by_seed[s]["scores"] for s in common], [fts[s]["scores"] for s in common], base["scores"], bootstrap_args
                )
                summary.append({**head, **tail, **row, "n_seeds": len(common)})
    columns = [*KEYS, "benchmark", "role", "metric", *[f"{s}{x}" for s in STATS for x in ("", "_lo", "_hi")]]
    columns += ["mcnemar_b", "mcnemar_c", "mcnemar_p", "n_samples"]
    return (
        _frame(per_seed, columns + ["lm_eval", "task_hash"]),
        _frame(summary, [c for c in columns if c != "seed"] + ["n_seeds"]),
    )


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    frame["retention"] = pd.to_numeric(frame["retention"], errors="coerce")
    order = frame["method"].map({"base": 0, "finetuned": 1}).fillna(2)
    return (
        frame.assign(_order=order)
        .sort_values(
            ["model", "dataset", "finetune", "benchmark", "_order", "method", "retention"],
            ascending=[True] * 6 + [False],
            kind="stable",
        )
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def _cell(row, name: str, digits: int = 3, signed: bool = False) -> str:
    value = row[name]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    sign = "+" if signed else ""
    low, high = row.get(f"{name}_lo", math.nan), row.get(f"{name}_hi", math.nan)
    if isinstance(low, float) and (math.isnan(low) or math.isnan(high)):
        return f"{value:{sign}.{digits}f}"
    return f"{value:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def surgery_table2(summary: pd.DataFrame) -> pd.DataFrame:
    """Spectral Surgery's Table 2: per (model, task, target benchmark) the FT score and every
    edit's score and improvement over FT (seed means with intervals), one column per method."""
    targets = summary[(summary["role"] == "target") & (summary["method"] != "base")]
    rows = []
    for (model, dataset, finetune, benchmark), group in targets.groupby(
        ["model", "dataset", "finetune", "benchmark"], sort=False
    ):
        row = {"model": model, "task": dataset, "finetune": finetune, "benchmark": benchmark, "metric": group["metric"].iloc[0]}
        for _, entry in group.iterrows():
            name = entry["method"] if pd.isna(entry["retention"]) else f"{entry['method']}@{entry['retention']:g}"
            row[name] = _cell(entry, "score")
            if entry["method"] != "finetuned":
                row[f"{name} vs FT"] = _cell(entry, "diff_ft", signed=True)
                row[f"{name} McNemar p"] = "" if pd.isna(entry["mcnemar_p"]) else f"{entry['mcnemar_p']:.3g}"
        rows.append(row)
    return pd.DataFrame(rows)


def surgery_table2_markdown(summary: pd.DataFrame, level: float = 0.95) -> str:
    targets = summary[(summary["role"] == "target") & (summary["method"] != "base")]
    if targets.empty:
        return "No task names benchmarks of its own (datasets.<task>.benchmarks), so there is no Table 2.\n"
    methods = list(dict.fromkeys(
        m if pd.isna(r) else f"{m}@{r:g}" for m, r in zip(targets["method"], targets["retention"]) if m != "finetuned"
    ))  # fmt: skip
    header = ["model", "task", "benchmark (metric)", "FT (unedited)", *methods]
    lines = [
        "Spectral Surgery, Table 2: each task's own benchmarks, the unedited fine-tuned model (FT) and "
        f"every edit as score, then its change against FT; {100 * level:g} % stratified paired bootstrap "
        "intervals over the benchmark's samples, seed means.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for (model, dataset, finetune, benchmark), group in targets.groupby(
        ["model", "dataset", "finetune", "benchmark"], sort=False
    ):
        by_method = {
            (m if pd.isna(r) else f"{m}@{r:g}"): row
            for m, r, (_, row) in zip(group["method"], group["retention"], group.iterrows())
        }
        ft = by_method.get("finetuned")
        cells = [_cell(ft, "score") if ft is not None else "n/a"]
        for method in methods:
            row = by_method.get(method)
            cells.append("n/a" if row is None else f"{row['score']:.3f} ({_cell(row, 'diff_ft', signed=True)})")
        metric = group["metric"].iloc[0]
        lines.append(f"| {model} | {dataset} ({finetune}) | {benchmark} ({metric}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def guided_vs_random(summary: pd.DataFrame, policies: Mapping[str, str]) -> pd.DataFrame:
    """Fig. 3's points: per (model, task, target benchmark) the improvement over FT of the first
    grid method with policy random_index (x) and of the first with grad_direction (y)."""
    random_method = next((m for m, p in policies.items() if p == "random_index"), None)
    guided_method = next((m for m, p in policies.items() if p == "grad_direction"), None)
    columns = ["model", "dataset", "finetune", "benchmark", "random_method", "guided_method"]
    columns += [f"{side}{x}" for side in ("random", "guided") for x in ("", "_lo", "_hi")]
    if random_method is None or guided_method is None:
        return pd.DataFrame(columns=columns)
    targets = summary[summary["role"] == "target"]
    rows = []
    for key, group in targets.groupby(["model", "dataset", "finetune", "benchmark"], sort=False):
        by_method = {m: r for m, (_, r) in zip(group["method"], group.iterrows())}
        if random_method in by_method and guided_method in by_method:
            row = dict(zip(columns[:4], key), random_method=random_method, guided_method=guided_method)
            for side, method in (("random", random_method), ("guided", guided_method)):
                entry = by_method[method]
                row[side], row[f"{side}_lo"], row[f"{side}_hi"] = entry["diff_ft"], entry["diff_ft_lo"], entry["diff_ft_hi"]
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def reward_risk(
    records: Sequence[Mapping], summary: pd.DataFrame, risk_benchmarks: Sequence[str], bootstrap_args: Mapping
) -> pd.DataFrame:
    """Fig. 4's points: per model and edit (method, retention), the reward (mean improvement
    over FT on the target benchmarks that are not risk benchmarks) and the risk (the mean over
    the risk benchmarks the tasks are scored on, as their own or held out, of max(0, FT - edit)),
    seed means, with intervals from one bootstrap over all benchmarks involved (each resampled
    on its own)."""
    risky_names = set(risk_benchmarks)
    counted = (summary["role"] == "target") | summary["benchmark"].isin(risky_names)
    targets = summary[counted & ~summary["method"].isin(REFERENCES)]
    columns = ["model", "finetune", "method", "retention", "reward", "reward_lo", "reward_hi", "risk", "risk_lo", "risk_hi"]
    columns += ["n_reward", "n_risk"]
    rows = []
    for (model, finetune, method, retention), group in targets.groupby(
        ["model", "finetune", "method", "retention"], dropna=False, sort=False
    ):
        retention = None if pd.isna(retention) else float(retention)
        pairs = list(zip(group["dataset"], group["benchmark"]))
        compared, roles, seeds_of = [], [], []
        for dataset, benchmark in pairs:
            variants = _variants(records, model, dataset, finetune, benchmark)
            fts, edits = variants.get(("finetuned", None), {}), variants.get((method, retention), {})
            seeds = sorted(set(fts) & set(edits))
            if not seeds or not all(r["scores"].resamplable for r in [*(fts[s] for s in seeds), *(edits[s] for s in seeds)]):
                continue
            compared.append(Compared.of([*(edits[s]["scores"] for s in seeds), *(fts[s]["scores"] for s in seeds)]))
            roles.append(benchmark in risky_names)
            seeds_of.append(len(seeds))
        if not compared or all(roles):
            continue

        # The seeds are resampled when every pair has the same number of them (the same draw of
        # seed positions serves each pair); otherwise the interval is over the samples only.
        n_seeds = seeds_of[0] if len(set(seeds_of)) == 1 else 1

        def statistic(values, drawn=None, roles=roles, seeds_of=seeds_of):
            gains = [seed_mean(v[:n] - v[n : 2 * n], drawn) for v, n in zip(values, seeds_of)]
            reward = np.mean([g for g, risky in zip(gains, roles) if not risky], axis=0)
            risky = [np.maximum(-g, 0.0) for g, r in zip(gains, roles) if r]
            risk = np.mean(risky, axis=0) if risky else np.full_like(reward, np.nan)
            return np.stack([reward, risk])

        point, low, high = bootstrap(compared, statistic, n_seeds=n_seeds, **bootstrap_args)
        rows.append(
            {
                "model": model, "finetune": finetune, "method": method, "retention": retention,
                "reward": point[0], "reward_lo": low[0], "reward_hi": high[0],
                "risk": point[1], "risk_lo": low[1], "risk_hi": high[1],
                "n_reward": roles.count(False), "n_risk": roles.count(True),
            }
        )  # fmt: skip
    return pd.DataFrame(rows, columns=columns)
