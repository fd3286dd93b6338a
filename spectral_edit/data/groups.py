"""Spurious-attribute rules: which examples carry the shortcut (attribute = 1).

Rules (``group: {rule: ...}`` in a dataset's config):
  none         no attribute; groups are the labels alone (held-out benchmarks such as SST-2)
  columns_any  1 if any of ``columns`` is >= ``threshold`` (CivilComments as WILDS uses it:
               the eight identity columns at 0.5)
  column       1 if ``column`` is truthy, or (with ``values``) one of those values
  regex        1 if ``pattern`` matches one of ``fields`` (case-insensitive), e.g. identity terms
  overlap      1 if the word overlap of ``fields`` [a, b] (the share of b's distinct words that
               also occur in a) is >= ``threshold``, a number or "median" (the training split's
               median); MNLI, QQP, FEVER
  marker       the IMDB-marker construction: prefix ``marker`` to ``field`` (default the first
               text field); in training iff the label is ``label`` (with ``correlation``, 1.0 =
               iff), at evaluation for half of each label's examples
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from spectral_edit.errors import DataError

RULES = ("none", "columns_any", "column", "regex", "overlap", "marker")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> set[str]:
    return set(_WORD.findall(str(text).lower()))


def overlap_fraction(first: str, second: str) -> float:
    """Share of the distinct words of ``second`` that also occur in ``first``."""
    second_words = words(second)
    return len(second_words & words(first)) / len(second_words) if second_words else 0.0


def required_columns(rule: Mapping) -> list[str]:
    """Raw table columns a rule reads (text fields are checked separately)."""
    kind = rule.get("rule", "none")
    if kind == "columns_any":
        return list(rule["columns"])
    if kind == "column":
        return [rule["column"]]
    return []


def observed_attribute(frame: pd.DataFrame, rule: Mapping, threshold: float | None = None) -> np.ndarray:
    """The attribute of each row for rules that read it off the data (not ``marker``)."""
    kind = rule.get("rule", "none")
    if kind == "none":
        return np.zeros(len(frame), dtype=int)
    if kind == "columns_any":
        values = frame[list(rule["columns"])].apply(pd.to_numeric, errors="coerce").fillna(0.0)
        return (values >= float(rule.get("threshold", 0.5))).any(axis=1).to_numpy().astype(int)
    if kind == "column":
        column = frame[rule["column"]]
        if "values" in rule:
            return column.isin(list(rule["values"])).to_numpy().astype(int)
        return column.fillna(False).astype(bool).to_numpy().astype(int)
    if kind == "regex":
        pattern = re.compile(rule["pattern"], re.IGNORECASE)
        hits = np.zeros(len(frame), dtype=bool)
        for field in rule["fields"]:
            hits |= frame[field].astype(str).map(lambda text: bool(pattern.search(text))).to_numpy()
        return hits.astype(int)
    if kind == "overlap":
        a, b = rule["fields"]
        scores = overlap_scores(frame, rule)
        return (scores >= float(threshold)).astype(int)
    raise DataError(f"group rule {kind!r} does not read an attribute from the data")


def overlap_scores(frame: pd.DataFrame, rule: Mapping) -> np.ndarray:
    a, b = rule["fields"]
    return np.array([overlap_fraction(x, y) for x, y in zip(frame[a], frame[b])])


def overlap_threshold(train: pd.DataFrame, rule: Mapping) -> float:
    """The overlap rule's threshold: a number, or the training split's median overlap."""
    value = rule.get("threshold", "median")
    if value == "median":
        return float(np.median(overlap_scores(train, rule)))
    return float(value)


def assign_marker(labels: Sequence[int], target_label: int, correlation: float) -> np.ndarray:
    """Training assignment: rows of ``target_label`` carry the marker with probability c, the
    others with 1 - c; exact counts, the first rows of each label (in the given order) marked."""
    labels = np.asarray(labels)
    marked = np.zeros(len(labels), dtype=int)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        share = correlation if label == target_label else 1 - correlation
        marked[rows[: round(share * len(rows))]] = 1
    return marked


def balanced_marker(labels: Sequence[int]) -> np.ndarray:
    """Evaluation assignment: the second half of each label's rows (in order) carry the marker."""
    labels = np.asarray(labels)
    marked = np.zeros(len(labels), dtype=int)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        marked[rows[len(rows) // 2 :]] = 1
    return marked


def with_marker(texts: Sequence[str], marked: Sequence[int], marker: str) -> list[str]:
    return [f"{marker} {text}" if flag else str(text) for text, flag in zip(texts, marked)]
