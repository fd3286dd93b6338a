"""Group metrics of a classifier on a group-balanced evaluation split.

accuracy               fraction correct over all examples;
group_accuracy[g]      fraction correct within group g = (label, attribute);
accuracy_majority      fraction correct over the examples of all majority groups (pooled);
accuracy_minority      the same over the minority groups;
gap                    accuracy_majority - accuracy_minority (the paper's spurious-group gap;
                       about 0 for a model that ignores the attribute; NaN without an attribute);
worst_group_accuracy   the smallest group accuracy.
On a group-balanced split the pooled accuracies equal the means of the group accuracies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def group_metrics(
    labels: Sequence[int],
    predictions: Sequence[int],
    groups: Sequence[str],
    majority_groups: Sequence[str],
    minority_groups: Sequence[str],
) -> dict:
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    groups = np.asarray(groups, dtype=object)
    if not (len(labels) == len(predictions) == len(groups)) or len(labels) == 0:
        raise ValueError("labels, predictions and groups must be non-empty and of equal length")
    correct = labels == predictions
    present = [g for g in list(majority_groups) + list(minority_groups) if np.any(groups == g)]
    unknown = set(groups) - set(majority_groups) - set(minority_groups)
    if unknown:
        raise ValueError(f"examples in groups that are neither majority nor minority: {sorted(unknown)}")
    group_accuracy = {g: float(correct[groups == g].mean()) for g in present}
    in_majority = np.isin(groups, list(majority_groups))
    in_minority = np.isin(groups, list(minority_groups))
    if not in_majority.any() or (len(minority_groups) and not in_minority.any()):
        raise ValueError("the evaluation split needs examples in both majority and minority groups")
    # A dataset without a spurious attribute (a held-out benchmark) has no minority groups:
    # its gap is undefined.
    accuracy_majority = float(correct[in_majority].mean())
    accuracy_minority = float(correct[in_minority].mean()) if in_minority.any() else float("nan")
    return {
        "n": int(len(labels)),
        "accuracy": float(correct.mean()),
        "accuracy_majority": accuracy_majority,
        "accuracy_minority": accuracy_minority,
        "gap": accuracy_majority - accuracy_minority,
        "worst_group_accuracy": min(group_accuracy.values()),
        "group_accuracy": group_accuracy,
        "group_size": {g: int((groups == g).sum()) for g in present},
    }


# A fine-tuned model that gives one answer for at least this share of a label-balanced
# evaluation split has learned the label prior, not the task (nor only the shortcut).
LABEL_PRIOR_SHARE = 0.95


def top_answer(predictions: Sequence[int]) -> tuple[int, float]:
    """The most common prediction (a label index; the smaller on a tie) and its share."""
    counts = np.bincount(np.asarray(predictions, int))
    return int(counts.argmax()), float(counts.max() / counts.sum())


def label_prior_note(word: str, share: float, train_shares: dict | None, dataset: str, seeds: int | None = None) -> str:
    """What a fine-tune that learned only the label prior did, and what to change."""
    trained = f" (training labels: {', '.join(f'{w} {100 * s:.0f} %' for w, s in train_shares.items())})" if train_shares else ""
    counted = "" if seeds is None else f" ({seeds} seed(s))"
    return (
        f"the fine-tuned model{counted} answers {word!r} for {100 * share:.0f} % of the evaluation examples: it learned the "
        f"label prior, not the task{trained}; balance the labels (datasets.{dataset}.balance_labels: true) or train longer"
    )
