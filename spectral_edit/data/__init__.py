"""Dataset preparation: training split, group-balanced evaluation split, group metadata.

Every prepared example is a row ``{id, label, attribute, <text fields>}``: ``label`` indexes
the dataset's label words, ``attribute`` is the spurious attribute (0/1), and the text fields
(``text``, or ``premise`` and ``hypothesis``, ...) fill the prompt's placeholders. Groups are
(label x attribute). The majority groups are those that agree with the shortcut: for each label,
the attribute value whose share under that label exceeds its share under the other labels in
the training split (the direction of the training correlation; ``majority_rule: frequency``
takes the label's most frequent value instead, which differs when the attribute is a minority
under every label, as identity mentions are on CivilComments); the others are the minority
groups. Evaluation splits are balanced over the groups by down-sampling every group
to the smallest one (at most ``n_eval_per_group``); a group with fewer than
``min_group_size`` examples is an error. All of it is written to ``meta.json``.

Sources: ``synthetic_reviews`` (generated here, see .synthetic), ``local`` (csv, tsv, jsonl,
json or parquet files) and ``hub`` (a Hugging Face dataset id), the last two read by
``datasets.load_dataset`` (see .tables) and shaped by the same config keys.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from spectral_edit.atomic import atomic_path, write_json
from spectral_edit.data.groups import (
    RULES,
    assign_marker,
    balanced_marker,
    observed_attribute,
    overlap_threshold,
    required_columns,
    with_marker,
)
from spectral_edit.data.instructions import build_instruction_dataset, instruction_columns
from spectral_edit.data.synthetic import build_synthetic_reviews, generate_review
from spectral_edit.data.tables import check_training_size, is_url, load_table, peek_local
from spectral_edit.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "RULES",
    "build_synthetic_reviews",
    "check_local_dataset",
    "generate_review",
    "group_name",
    "is_instruction",
    "majority_groups",
    "prepare_dataset",
    "read_meta",
    "read_split",
    "text_fields",
    "write_jsonl",
]


def text_fields(spec: Mapping) -> dict[str, str]:
    """Prompt field -> table column. ``text_columns`` may be a list (same names) or a mapping."""
    if spec["source"] == "synthetic_reviews":
        return {"text": "text"}
    columns = spec["text_columns"]
    return {c: c for c in columns} if isinstance(columns, list) else dict(columns)


def attribute_name(spec: Mapping) -> str:
    rule = (spec.get("group") or {}).get("rule", "none")
    if spec["source"] == "synthetic_reviews" or rule == "marker":
        return "marker"
    return (
        spec.get("attribute_name")
        or {"none": "none", "overlap": "overlap", "regex": "mention", "columns_any": "identity", "column": "attribute"}[rule]
    )


def group_name(label_words: Sequence[str], attribute_name: str, label: int, attribute: int) -> str:
    return f"{label_words[label]}|{attribute_name}={attribute}"


MAJORITY_RULES = ("direction", "frequency")


def majority_groups(
    rows: Sequence[Mapping], label_words: Sequence[str], attribute_name: str, rule: str = "direction"
) -> list[str]:
    """Per label, its majority group in ``rows`` (the training split) by ``rule``.

    ``direction`` (the paper's groups, "attribute co-occurring with the label"): the attribute
    value whose share among the label's examples exceeds its share among the other labels'.
    ``frequency``: the attribute value the label's examples have most often. Either rule
    raises when no value stands out (a tie: the attribute is not correlated with the label).
    """
    if rule not in MAJORITY_RULES:
        raise DataError(f"majority_rule: unknown rule {rule!r} (known: {', '.join(MAJORITY_RULES)})")
    counts = Counter((row["label"], row["attribute"]) for row in rows)
    values = sorted({a for _, a in counts})
    majority = []
    for label in range(len(label_words)):
        mine = {a: counts.get((label, a), 0) for a in values}
        if not sum(mine.values()):
            raise DataError(f"training split has no example of label {label_words[label]!r}")
        if rule == "frequency":
            score = {a: float(n) for a, n in mine.items()}
        else:
            others = {a: sum(n for (y, b), n in counts.items() if y != label and b == a) for a in values}
            if not sum(others.values()):
                raise DataError(f"training split has only label {label_words[label]!r}: no direction to read")
            score = {a: mine[a] / sum(mine.values()) - others[a] / sum(others.values()) for a in values}
        best = max(score.values())
        tied = [a for a, v in score.items() if v == best]
        if len(tied) > 1:
            raise DataError(
                f"label {label_words[label]!r} has no majority {attribute_name} value in training by the "
                f"{rule} rule (counts {mine}): the attribute is not correlated with it"
            )
        majority.append(group_name(label_words, attribute_name, label, tied[0]))
    return majority


def attribute_shares(rows: Sequence[Mapping], label_words: Sequence[str]) -> dict[str, float]:
    """Share of each label's training examples that have the attribute (attribute == 1)."""
    counts = Counter((row["label"], row["attribute"]) for row in rows)
    shares = {}
    for label, word in enumerate(label_words):
        total = sum(n for (y, _), n in counts.items() if y == label)
        shares[word] = counts.get((label, 1), 0) / total if total else float("nan")
    return shares


def label_shares(labels: Sequence[int], label_words: Sequence[str]) -> dict[str, float]:
    """Share of each label word among ``labels`` (label indices)."""
    counts = Counter(int(y) for y in labels)
    total = sum(counts.values())
    return {word: counts.get(y, 0) / total if total else float("nan") for y, word in enumerate(label_words)}


# A training split with one label above this share is named in the fine-tune's log: a fine-tune
# on it may learn to give that answer whatever the text (the label prior).
SKEWED_LABEL_SHARE = 0.7


def write_jsonl(path: str | Path, rows: Sequence[Mapping]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")


def is_instruction(spec: Mapping) -> bool:
    """A dataset of free-form responses (scored on benchmarks), not of label words."""
    return spec.get("kind", "classification") == "instruction"


def read_split(path: str | Path) -> pd.DataFrame:
    """A prepared split: label-word rows {id, label, attribute, <text fields>} or instruction
    rows {id, messages}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prepared split not found: {path}")
    frame = pd.read_json(path, lines=True, dtype=False)
    if frame.empty:
        return pd.DataFrame(columns=["id"])
    required = {"id", "messages"} if "messages" in frame.columns else {"id", "label", "attribute"}
    missing = required - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)} (has {list(frame.columns)})")
    frame["id"] = frame["id"].astype(str)
    return frame


def read_meta(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


# --- tables -> rows -----------------------------------------------------------------------

_TAG = re.compile(r"<[^>]+>")


def clean_text(text: str, steps: Sequence[str]) -> str:
    text = str(text)
    if "strip_html" in steps:
        text = html.unescape(_TAG.sub(" ", text))
    return " ".join(text.split()) if "collapse_whitespace" in steps or "strip_html" in steps else text


def label_indices(raw: pd.Series, spec: Mapping, where: str) -> np.ndarray:
    """Map raw label values to indices of ``label_words``; -1 for values not listed."""
    if "label_threshold" in spec:
        values = pd.to_numeric(raw, errors="coerce")
        if values.isna().any():
            raise DataError(f"{where}: label column {spec['label_column']!r} has non-numeric values for label_threshold")
        return (values >= float(spec["label_threshold"])).to_numpy().astype(int)
    mapping = {_key(v): i for i, v in enumerate(spec["label_values"])}
    return np.array([mapping.get(_key(v), -1) if _key(v) is not None else -1 for v in raw])


def _key(value):
    """How a label value compares: numbers as numbers (a 0/1 column read as 0.0/1.0 because one
    cell is blank still matches label_values [0, 1]), anything else as lower-case text (YAML
    true, CSV 'True' and bool True agree); None for a blank cell."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    if not text or text.lower() == "nan":
        return None
    if not isinstance(value, (bool, np.bool_)):
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            return str(int(number)) if number.is_integer() else repr(number)
    return text.lower()


def blank_labels(raw: pd.Series) -> np.ndarray:
    """Rows whose label cell is empty."""
    return np.array([_key(v) is None for v in raw], dtype=bool)


def _label_problem(raw: pd.Series, labels: np.ndarray, spec: Mapping, where: str) -> str | None:
    """One line on labels that are blank or not in label_values (None when all are fine)."""
    blank = blank_labels(raw)
    if blank.any():
        rows = np.flatnonzero(blank)
        shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        return (
            f"{where}: label column {spec['label_column']!r} is blank in {len(rows)} row(s) (rows {shown}): "
            "fill them, or set drop_other_labels: true to drop such rows"
        )
    unknown = labels < 0
    if unknown.any():
        found = sorted({str(v) for v in raw[unknown]})
        return (
            f"{where}: label column {spec['label_column']!r} has values {found[:8]} not in label_values "
            f"{list(spec['label_values'])} (set drop_other_labels: true to drop them)"
        )
    return None


def shape_table(table: pd.DataFrame, spec: Mapping, name: str, which: str) -> pd.DataFrame:
    """Select the text fields, map labels, clean texts and drop what the config drops."""
    where = f"datasets.{name}.files.{which}" if spec["source"] == "local" else f"datasets.{name} ({which} split)"
    fields = text_fields(spec)
    rule = spec.get("group") or {"rule": "none"}
    needed = list(fields.values()) + [spec["label_column"]] + required_columns(rule)
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(f"{where}: no column {missing[0]!r} (the table has: {', '.join(map(str, table.columns))})")
    labels = label_indices(table[spec["label_column"]], spec, where)
    unknown = labels < 0
    problem = _label_problem(table[spec["label_column"]].reset_index(drop=True), labels, spec, where)
    if problem and not spec["drop_other_labels"]:
        raise DataError(problem)
    frame = pd.DataFrame({field: table[column].fillna("").astype(str).to_numpy() for field, column in fields.items()})
    steps = list(spec.get("cleanup", []) or [])
    if steps:
        for field in fields:
            frame[field] = [clean_text(t, steps) for t in frame[field]]
    for column in required_columns(rule):
        frame[column] = table[column].to_numpy()
    frame["label"] = labels
    keep = ~unknown
    min_words = int(spec.get("min_words", 1))
    first = next(iter(fields))
    long_enough = frame[first].str.split().str.len().fillna(0).to_numpy() >= min_words
    if len(table) and not (keep & long_enough).any():
        # Say which filter left nothing, rather than fail later on an empty table.
        culprit = (
            "drop_other_labels: no label is in label_values"
            if not keep.any()
            else f"min_words: {min_words}: no {first!r} text has that many words"
        )
        raise DataError(f"{where}: no rows left of {len(table)} after {culprit}")
    return frame[keep & long_enough].reset_index(drop=True)


def _sample(frame: pd.DataFrame, n: int | None, rng: np.random.Generator) -> pd.DataFrame:
    if n is None or n >= len(frame):
        return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    return frame.iloc[np.sort(rng.choice(len(frame), size=n, replace=False))].reset_index(drop=True)


def _sample_by_label(frame: pd.DataFrame, n: int | None, labels: int, rng: np.random.Generator) -> pd.DataFrame:
    """As many examples of every label (the rarest label's count, at most n / labels), in random order."""
    per_label = min(int((frame["label"] == y).sum()) for y in range(labels))
    if n is not None:
        per_label = min(per_label, int(n) // labels)
    chosen = [np.flatnonzero(frame["label"].to_numpy() == y) for y in range(labels)]
    picked = np.concatenate([np.sort(rng.choice(rows, size=per_label, replace=False)) for rows in chosen])
    return frame.iloc[rng.permutation(np.sort(picked))].reset_index(drop=True)


def _balanced(
    frame: pd.DataFrame, spec: Mapping, words: Sequence[str], attribute: str, rng, where: str
) -> tuple[pd.DataFrame, dict]:
    """Down-sample every (label x attribute) group to the smallest (at most n_eval_per_group)."""
    groups = {(y, a): frame[(frame["label"] == y) & (frame["attribute"] == a)] for y in range(len(words)) for a in (0, 1)}
    rule = (spec.get("group") or {}).get("rule", "none")
    if rule == "none":
        groups = {key: rows for key, rows in groups.items() if key[1] == 0}
    available = {group_name(words, attribute, y, a): len(rows) for (y, a), rows in groups.items()}
    smallest = min(available.values())
    minimum = int(spec["min_group_size"])
    if smallest < minimum:
        culprit = min(available, key=available.get)
        raise DataError(
            f"{where}: evaluation group {culprit!r} has {smallest} examples, fewer than min_group_size={minimum} "
            f"(available: {available})"
        )
    per_group = min(smallest, int(spec.get("n_eval_per_group") or smallest))
    chosen = [rows.iloc[np.sort(rng.choice(len(rows), size=per_group, replace=False))] for rows in groups.values()]
    return pd.concat(chosen, ignore_index=True), {"available": available, "per_group": per_group}


def build_table_dataset(spec: Mapping, name: str, load=load_table) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Training and balanced evaluation frames of a hub or local dataset, and facts for meta.
    ``load(spec, which, name)`` reads a raw table (planning passes a cheap pandas reader)."""
    rng = np.random.default_rng(int(spec["split_seed"]))
    train_raw = load(spec, "train", name)
    if train_raw is None:
        raise DataError(f"datasets.{name}: no training table configured (files.train or hub.train_split)")
    train_pool = shape_table(train_raw, spec, name, "train")
    eval_raw = load(spec, "eval", name)
    if eval_raw is None:
        fraction = float(spec.get("eval_fraction", 0.2))
        order = rng.permutation(len(train_pool))
        cut = int(round(fraction * len(train_pool)))
        eval_pool, train_pool = train_pool.iloc[order[:cut]], train_pool.iloc[order[cut:]]
    else:
        eval_pool = shape_table(eval_raw, spec, name, "eval")
    check_training_size(spec, len(train_pool), name)
    words = list(spec["label_words"])
    attribute = attribute_name(spec)
    rule = dict(spec.get("group") or {"rule": "none"})
    facts: dict = {"rule": rule}
    absent = [word for y, word in enumerate(words) if not (train_pool["label"] == y).any()]
    if spec.get("balance_labels") and not absent:
        train = _sample_by_label(train_pool, spec.get("n_train"), len(words), rng)
    else:
        train = _sample(train_pool, spec.get("n_train"), rng)
    absent = [word for y, word in enumerate(words) if not (train["label"] == y).any()]
    if absent:
        # One label only: the fine-tune would learn to give one answer, whatever the text.
        raise DataError(
            f"datasets.{name}: the training split ({len(train)} rows) has no example labelled {absent[0]!r}; "
            f"every label word needs training examples"
        )
    if rule["rule"] == "marker":
        field = rule.get("field") or next(iter(text_fields(spec)))
        target = words.index(rule["label"]) if isinstance(rule.get("label"), str) else int(rule.get("label", 0))
        train = train.sort_values("label", kind="stable").reset_index(drop=True)
        train["attribute"] = assign_marker(train["label"], target, float(rule.get("correlation", 1.0)))
        train[field] = with_marker(train[field], train["attribute"], rule["marker"])
        train = train.iloc[rng.permutation(len(train))].reset_index(drop=True)
        per_label = min(
            int(spec.get("n_eval_per_group") or 10**9) * 2, *(int((eval_pool["label"] == y).sum()) for y in range(len(words)))
        )
        per_label -= per_label % 2
        minimum = int(spec["min_group_size"])
        if per_label // 2 < minimum:
            raise DataError(
                f"datasets.{name}: the evaluation split has {per_label // 2} examples per (label, marker) group, "
                f"fewer than min_group_size={minimum}"
            )
        chosen = [eval_pool[eval_pool["label"] == y].iloc[:per_label] for y in range(len(words))]
        evaluation = pd.concat(chosen, ignore_index=True)
        evaluation["attribute"] = balanced_marker(evaluation["label"])
        evaluation[field] = with_marker(evaluation[field], evaluation["attribute"], rule["marker"])
        facts["per_group"] = per_label // 2
    else:
        if rule["rule"] == "overlap":
            facts["overlap_threshold"] = threshold = overlap_threshold(train, rule)
        else:
            threshold = None
        train["attribute"] = observed_attribute(train, rule, threshold)
        eval_pool = eval_pool.assign(attribute=observed_attribute(eval_pool, rule, threshold))
        evaluation, balance = _balanced(eval_pool, spec, words, attribute, rng, f"datasets.{name}")
        facts.update(balance)
    keep = ["label", "attribute", *text_fields(spec)]
    return train[keep], evaluation[keep], facts


def _rows(frame: pd.DataFrame, prefix: str) -> list[dict]:
    rows = frame.to_dict(orient="records")
    for i, row in enumerate(rows):
        row["label"], row["attribute"] = int(row["label"]), int(row["attribute"])
        row["id"] = f"{prefix}-{i:05d}"
    return rows


def prepare_instruction_dataset(spec: Mapping, out_dir: str | Path, name: str) -> dict:
    """train.jsonl and eval.jsonl of chats ({id, messages}) and meta.json of an instruction dataset."""
    train, held_out, facts = build_instruction_dataset(spec, name)
    meta = {
        "dataset": name,
        "kind": "instruction",
        "source": spec["source"],
        "n_train": len(train),
        "n_eval": len(held_out),
        "preparation": facts,
        "spec": dict(spec),
    }
    _write_prepared(out_dir, train, held_out, meta)
    log.info("prepared %s: %d training and %d held-out chats", name, len(train), len(held_out))
    return meta


def _write_prepared(out_dir: str | Path, train: Sequence[Mapping], evaluation: Sequence[Mapping], meta: Mapping) -> None:
    """train.jsonl, eval.jsonl and meta.json, each written atomically (meta.json last)."""
    out_dir = Path(out_dir)
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "eval.jsonl", evaluation)
    write_json(out_dir / "meta.json", meta)


def prepare_dataset(spec: Mapping, out_dir: str | Path, name: str = "dataset") -> dict:
    """Build and write train.jsonl, eval.jsonl and meta.json for one dataset config."""
    if is_instruction(spec):
        return prepare_instruction_dataset(spec, out_dir, name)
    source = spec["source"]
    facts: dict = {}
    if source == "synthetic_reviews":
        train, evaluation = build_synthetic_reviews(spec)
    elif source in ("local", "hub"):
        train_frame, eval_frame, facts = build_table_dataset(spec, name)
        train, evaluation = _rows(train_frame, "train"), _rows(eval_frame, "eval")
    else:
        raise DataError(f"datasets.{name}.source: unknown source {source!r}")
    attribute = attribute_name(spec)
    words = list(spec["label_words"])
    rule = (spec.get("group") or {}).get("rule", "none")
    attributes = (0,) if rule == "none" and source != "synthetic_reviews" else (0, 1)
    every_group = [group_name(words, attribute, y, a) for y in range(len(words)) for a in attributes]
    majority_rule = spec.get("majority_rule", "direction")
    majority = every_group if attributes == (0,) else majority_groups(train, words, attribute, majority_rule)

    def counts(rows):
        tally = Counter(group_name(words, attribute, r["label"], r["attribute"]) for r in rows)
        return {group: tally.get(group, 0) for group in every_group}

    meta = {
        "dataset": name,
        "source": source,
        "label_words": words,
        "text_fields": list(text_fields(spec)),
        "attribute": attribute,
        "majority_groups": majority,
        "minority_groups": [g for g in every_group if g not in majority],
        # Which rule decided the majority groups, and what it read: the attribute's share per label.
        "majority_rule": majority_rule if attributes != (0,) else None,
        "train_attribute_share": attribute_shares(train, words) if attributes != (0,) else None,
        "train_group_counts": counts(train),
        "train_label_shares": label_shares([r["label"] for r in train], words),
        "eval_group_counts": counts(evaluation),
        "preparation": facts,
        "spec": dict(spec),
    }
    _write_prepared(out_dir, train, evaluation, meta)
    log.info("prepared %s: %d train, %d eval rows; majority groups %s", name, len(train), len(evaluation), majority)
    return meta


def check_local_dataset(spec: Mapping, name: str) -> None:
    """Before any job: local files exist and have the configured columns and label values."""
    if spec["source"] != "local":
        return
    if is_instruction(spec):
        for which in ("train", "eval"):
            peek_local(spec, which, instruction_columns(spec), name)
        return
    fields = text_fields(spec)
    rule = spec.get("group") or {"rule": "none"}
    columns = list(dict.fromkeys([*fields.values(), spec["label_column"], *required_columns(rule)]))
    frames = {which: peek_local(spec, which, columns, name) for which in ("train", "eval")}
    if any(is_url(spec, which) for which in frames):
        return  # read by the dataset job (offline here, perhaps)
    # The dataset job's own preparation, on the files read with pandas: one label only, an empty
    # evaluation group, a filter that leaves nothing stop here with the job's message.
    build_table_dataset(spec, name, load=lambda spec, which, name: frames[which])
