"""Group metrics on hand-computed cases."""

import pytest

from spectral_edit.evaluate.metrics import group_metrics

MAJ = ["neg|m=1", "pos|m=0"]
MIN = ["neg|m=0", "pos|m=1"]


def test_gap_and_worst_group_by_hand():
    # 4 groups x 2 examples. Correct: neg|m=1 2/2, pos|m=0 1/2, neg|m=0 0/2, pos|m=1 1/2.
    groups = ["neg|m=1"] * 2 + ["pos|m=0"] * 2 + ["neg|m=0"] * 2 + ["pos|m=1"] * 2
    labels = [0, 0, 1, 1, 0, 0, 1, 1]
    preds = [0, 0, 1, 0, 1, 1, 1, 0]
    m = group_metrics(labels, preds, groups, MAJ, MIN)
    assert m["accuracy"] == pytest.approx(4 / 8)
    assert m["accuracy_majority"] == pytest.approx(3 / 4)
    assert m["accuracy_minority"] == pytest.approx(1 / 4)
    assert m["gap"] == pytest.approx(0.5)
    assert m["worst_group_accuracy"] == 0.0
    assert m["group_accuracy"] == {"neg|m=1": 1.0, "pos|m=0": 0.5, "neg|m=0": 0.0, "pos|m=1": 0.5}


def test_negative_gap_when_minority_does_better():
    groups = ["neg|m=1", "pos|m=0", "neg|m=0", "pos|m=1"]
    m = group_metrics([0, 1, 0, 1], [1, 0, 0, 1], groups, MAJ, MIN)
    assert m["gap"] == pytest.approx(-1.0)
    assert m["worst_group_accuracy"] == 0.0


def test_pooled_majority_accuracy_weights_examples():
    # Unbalanced: 3 majority examples in one group (all right), 1 in another (wrong).
    groups = ["neg|m=1"] * 3 + ["pos|m=0"] + ["neg|m=0", "pos|m=1"]
    m = group_metrics([0, 0, 0, 1, 0, 1], [0, 0, 0, 0, 0, 1], groups, MAJ, MIN)
    assert m["accuracy_majority"] == pytest.approx(3 / 4)
    assert m["accuracy_minority"] == pytest.approx(1.0)


def test_rejects_unknown_groups_and_missing_side():
    with pytest.raises(ValueError, match="neither majority nor minority"):
        group_metrics([0], [0], ["other"], MAJ, MIN)
    with pytest.raises(ValueError, match="both majority and minority"):
        group_metrics([0, 1], [0, 1], ["neg|m=1", "pos|m=0"], MAJ, MIN)
