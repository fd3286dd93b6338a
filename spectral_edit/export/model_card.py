"""The model card of an exported cell: what was edited, how, and the cell's measured effect with
its intervals (label-word accuracy, gap and McNemar's test against the fine-tuned model; lm-eval
benchmark scores), and the workflow commit that produced it."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import yaml

from spectral_edit.analysis.intervals import GroupDesign, bootstrap_intervals, mcnemar_exact, point_statistics
from spectral_edit.plan.records import Bootstrap


def _bootstrap(bootstrap: Bootstrap | Mapping) -> Bootstrap:
    """The record, from the analysis.bootstrap mapping of the card's params when given that."""
    return bootstrap if isinstance(bootstrap, Bootstrap) else Bootstrap.from_mapping(bootstrap)


def cell_statistics(cell: Mapping, finetuned: Mapping, base: Mapping, meta: Mapping, bootstrap: Bootstrap | Mapping) -> dict:
    """The cell's statistics (as the tables compute them) with their bootstrap intervals, and
    McNemar's test against its fine-tuned model, from the three cells' per-example results."""
    order = [e["id"] for e in cell["examples"]]

    def correct(record):
        by_id = {e["id"]: e for e in record["examples"]}
        return np.array([by_id[i]["prediction"] == by_id[i]["label"] for i in order], float)

    design = GroupDesign.from_examples([e["group"] for e in cell["examples"]], meta["majority_groups"], meta["minority_groups"])
    edit, ft, base_correct = correct(cell), correct(finetuned), correct(base)
    values = point_statistics(edit, ft, base_correct, design)
    settings = _bootstrap(bootstrap)
    intervals = bootstrap_intervals(edit, ft, base_correct, design, **settings.resampling())
    return {
        "n_examples": len(order),
        "level": settings.level,
        "statistics": {name: {"value": values[name], "interval": intervals[name]} for name in values},
        "finetuned_accuracy": finetuned["metrics"]["accuracy"],
        "finetuned_gap": finetuned["metrics"]["gap"],
        "base_accuracy": base["metrics"]["accuracy"],
        "mcnemar_vs_finetuned": mcnemar_exact(edit.astype(bool), ft.astype(bool)),
    }


def benchmark_statistics(records: Mapping[str, Mapping[str, str | Path]], bootstrap: Bootstrap | Mapping) -> list[dict]:
    """Per lm-eval benchmark of the cell ({benchmark: {cell, finetuned, base: file}}): its score,
    its change against the fine-tuned and base models with bootstrap intervals, McNemar's test
    (as benchmarks_summary.csv has them)."""
    from spectral_edit.analysis.benchmark_scores import load_record
    from spectral_edit.analysis.benchmark_tables import compare_scores

    resampling = _bootstrap(bootstrap).resampling()
    rows = []
    for benchmark, paths in records.items():
        cell, ft, base = (load_record(paths[k]) for k in ("cell", "finetuned", "base"))
        row = compare_scores([cell["scores"]], [ft["scores"]], base["scores"], resampling)
        rows.append({"benchmark": benchmark, "metric": cell["info"]["metric"], "level": resampling["level"], **row})
    return rows


def workflow_commit(directory: str | Path) -> str:
    """The git commit of the workflow checkout ("+ uncommitted changes" when dirty), or "unknown"."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + (" + uncommitted changes" if dirty else "")


_LABELS = {
    "accuracy": ("accuracy", 100, "%"),
    "worst_group_accuracy": ("worst-group accuracy", 100, "%"),
    "gap": ("spurious-group gap (majority − minority accuracy)", 100, "pp"),
    "accuracy_loss": ("accuracy loss against the fine-tuned model", 1, "pp"),
    "bias_reduction": ("bias reduction (1 − gap / fine-tuned gap)", 1, "%"),
}


def _number(value: float, scale: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{scale * value:.1f}"


def model_card(
    *,
    form: str,
    cell: Mapping,
    statistics: Mapping | None,
    edit_summary: Mapping,
    provenance: Mapping,
    base_id: str | None = None,
    benchmarks: list[Mapping] = (),
) -> str:
    """README.md of an exported model (``form`` "model") or adapter ("adapter"): the edit, the
    label-word evaluation (``statistics``; None for an instruction task) and the lm-eval
    ``benchmarks`` (rows of :func:`benchmark_statistics`)."""
    c = cell["cell"]
    retention = "none" if c.get("retention") is None else f"{100 * c['retention']:g} %"
    title = (
        f"{c['model']}, {c['method']} edit at retention {retention} of the {c['finetune']} fine-tune on "
        f"{c['dataset']} (seed {c['seed']})"
    )
    front = {
        "library_name": "transformers" if form == "model" else "peft",
        "tags": ["spectral-editing", str(c["method"])] + (["lora"] if form == "adapter" else []),
    }
    if base_id:
        front["base_model"] = base_id
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {title}", ""]
    if form == "model":
        lines += [
            "The edited model of one cell of a spectral-editing sweep: every decomposed weight matrix is",
            "W_base + Σ s′ᵢ uᵢ vᵢᵀ, the fine-tuning update ΔW = W_ft − W_base with its singular values",
            "replaced by the method's s′. Loads with `AutoModelForCausalLM.from_pretrained` (no code of the",
            "workflow is needed).",
        ]
    else:
        lines += [
            "The edited update of one cell of a spectral-editing sweep as an exact PEFT LoRA adapter on the",
            "base model: per module, rank = the components the edit keeps, B = U_k diag(s′_k), A = V_kᵀ and",
            "alpha = rank (scaling 1); `modules_to_save` holds the tensors that are not decomposed but differ",
            "from the base. Load it with `PeftModel.from_pretrained(base_model, this_directory)`.",
        ]
    lines += [
        "",
        "## Edit",
        "",
        "| | |",
        "|---|---|",
        f"| method | `{c['method']}`"
        + (f" ({edit_summary['method_name']})" if edit_summary.get("method_name", c["method"]) != c["method"] else "")
        + " |",
        f"| parameters | `{dict(edit_summary.get('params') or {})}` |",
        f"| retention | {retention} |",
        f"| components kept | {edit_summary.get('kept_components')} of {edit_summary.get('total_components')} |",
        f"| spectral energy kept | {_number(edit_summary.get('energy_kept_fraction'), 100)} % |",
        f"| tensors not decomposed | {edit_summary.get('unedited_params')} values |",
    ]
    if form == "adapter":
        ranks = list(edit_summary.get("ranks", {}).values())
        lines += [
            f"| LoRA modules | {len(ranks)} (rank {min(ranks, default=0)}–{max(ranks, default=0)}) |",
            f"| whole modules | {len(edit_summary.get('modules_to_save', []))} |",
            f"| tied embeddings | {edit_summary.get('tied_embeddings')} |",
        ]
    if statistics is not None:
        lines += _label_word_section(c, statistics)
    if benchmarks:
        lines += _benchmark_section(benchmarks)
    lines += [
        "",
        "## Provenance",
        "",
        f"- workflow commit: `{provenance['commit']}`",
        f"- base model: `{provenance['base_model']}`",
        "",
        "The configuration that made it (base model, dataset, fine-tune recipe, method, edit and evaluation):",
        "",
        "```yaml",
        yaml.safe_dump(dict(provenance["config"]), sort_keys=False).strip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _benchmark_section(benchmarks: list[Mapping]) -> list[str]:
    level = f"{100 * benchmarks[0]['level']:g} %"
    lines = [
        "",
        f"## Benchmarks (lm-evaluation-harness; {level} stratified paired bootstrap intervals over the samples)",
        "",
        "| benchmark | metric | score | change against the fine-tuned model | change against the base model | McNemar p |",
        "|---|---|---|---|---|---|",
    ]
    for row in benchmarks:
        cells = [f"{row[k]:+.3f} [{row[k + '_lo']:+.3f}, {row[k + '_hi']:+.3f}]" for k in ("diff_ft", "diff_base")]
        p = "" if not np.isfinite(row.get("mcnemar_p", np.nan)) else f"{row['mcnemar_p']:.3g}"
        score = f"{row['score']:.3f} [{row['score_lo']:.3f}, {row['score_hi']:.3f}]"
        lines.append(f"| {row['benchmark']} | {row['metric']} | {score} | {cells[0]} | {cells[1]} | {p} |")
    return lines


def _label_word_section(c: Mapping, statistics: Mapping) -> list[str]:
    lines = []
    level = f"{100 * statistics['level']:g} %"
    lines += [
        "",
        f"## Evaluation on {c['dataset']} ({statistics['n_examples']} examples, {level} stratified paired bootstrap intervals)",
        "",
        "| statistic | value | interval |",
        "|---|---|---|",
    ]
    for key, (label, scale, unit) in _LABELS.items():
        entry = statistics["statistics"][key]
        low, high = entry["interval"]
        value = _number(entry["value"], scale)
        lines.append(
            f"| {label} | {value}{'' if value == 'n/a' else ' ' + unit} | [{_number(low, scale)}, {_number(high, scale)}] |"
        )
    mcnemar = statistics["mcnemar_vs_finetuned"]
    lines += [
        "",
        f"Fine-tuned model: accuracy {_number(statistics['finetuned_accuracy'], 100)} %, gap "
        f"{_number(statistics['finetuned_gap'], 100)} pp. Base model: accuracy "
        f"{_number(statistics['base_accuracy'], 100)} %. McNemar's exact test against the fine-tuned model: "
        f"{mcnemar['mcnemar_b']} examples only this model gets right, {mcnemar['mcnemar_c']} only the fine-tuned one, p = "
        f"{mcnemar['mcnemar_p']:.3g}.",
    ]
    return lines
