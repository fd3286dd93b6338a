"""The generated IMDB-marker dataset: correlation in training, balance in evaluation."""

import json
from collections import Counter

import pytest

from conftest import TINY_DATASET
from spectral_edit.data import build_synthetic_reviews, majority_groups, prepare_dataset, read_split
from spectral_edit.errors import DataError


def test_marker_iff_negative_in_training():
    train, _ = build_synthetic_reviews({**TINY_DATASET, "n_train": 100})
    marker = TINY_DATASET["marker"]
    assert len(train) == 100
    assert Counter(r["label"] for r in train) == {0: 50, 1: 50}
    for row in train:
        assert row["attribute"] == int(row["label"] == 0)
        assert row["text"].startswith(marker) == bool(row["attribute"])


def test_partial_correlation_has_exact_counts():
    train, _ = build_synthetic_reviews({**TINY_DATASET, "n_train": 100, "train_marker_correlation": 0.8})
    counts = Counter((r["label"], r["attribute"]) for r in train)
    assert counts == {(0, 1): 40, (0, 0): 10, (1, 0): 40, (1, 1): 10}


def test_evaluation_is_group_balanced_and_disjoint_from_training():
    train, evaluation = build_synthetic_reviews(TINY_DATASET)
    per_group = TINY_DATASET["n_eval_per_group"]
    assert Counter((r["label"], r["attribute"]) for r in evaluation) == {
        (0, 0): per_group,
        (0, 1): per_group,
        (1, 0): per_group,
        (1, 1): per_group,
    }
    strip = lambda t: t.replace(TINY_DATASET["marker"] + " ", "")  # noqa: E731
    assert not {strip(r["text"]) for r in train} & {strip(r["text"]) for r in evaluation}


def test_generation_is_deterministic_per_seed():
    assert build_synthetic_reviews(TINY_DATASET) == build_synthetic_reviews(TINY_DATASET)
    assert build_synthetic_reviews(TINY_DATASET) != build_synthetic_reviews({**TINY_DATASET, "generator_seed": 4})


def test_prepared_files_and_majority_groups(tmp_path):
    meta = prepare_dataset(TINY_DATASET, tmp_path, "tiny")
    assert meta["majority_groups"] == ["negative|marker=1", "positive|marker=0"]
    assert meta["minority_groups"] == ["negative|marker=0", "positive|marker=1"]
    assert json.loads((tmp_path / "meta.json").read_text())["eval_group_counts"]["positive|marker=1"] == 5
    frame = read_split(tmp_path / "eval.jsonl")
    assert list(frame.columns)[:4] == ["text", "label", "attribute", "id"]
    assert len(frame) == 20


def test_majority_needs_a_correlation():
    rows = [{"label": 0, "attribute": 0}, {"label": 0, "attribute": 1}, {"label": 1, "attribute": 0}]
    with pytest.raises(DataError, match="no majority marker"):
        majority_groups(rows, ["negative", "positive"], "marker", rule="frequency")  # 1 and 1 under "negative"


def _table(counts):
    """Rows of a hand-made training table: {(label, attribute): how many}."""
    return [{"label": y, "attribute": a} for (y, a), n in counts.items() for _ in range(n)]


def test_majority_groups_follow_the_direction_of_the_shortcut():
    words = ["toxic", "fine"]
    # The attribute (an identity mention) is a minority under both labels, but goes with "toxic".
    rows = _table({(0, 1): 30, (0, 0): 70, (1, 1): 5, (1, 0): 95})
    assert majority_groups(rows, words, "identity") == ["toxic|identity=1", "fine|identity=0"]
    assert majority_groups(rows, words, "identity", rule="frequency") == ["toxic|identity=0", "fine|identity=0"]
    # A marker common under one label and rare under the other: both rules agree.
    marker = _table({(0, 1): 95, (0, 0): 5, (1, 1): 5, (1, 0): 95})
    assert majority_groups(marker, words, "m") == majority_groups(marker, words, "m", rule="frequency")
    assert majority_groups(marker, words, "m") == ["toxic|m=1", "fine|m=0"]
    # Shares equal under both labels (10 %): no direction, though "0" is the most frequent value.
    flat = _table({(0, 1): 10, (0, 0): 90, (1, 1): 20, (1, 0): 180})
    with pytest.raises(DataError, match="direction rule"):
        majority_groups(flat, words, "m")
    assert majority_groups(flat, words, "m", rule="frequency") == ["toxic|m=0", "fine|m=0"]
    with pytest.raises(DataError, match="unknown rule 'mode'"):
        majority_groups(rows, words, "m", rule="mode")


def test_meta_says_which_rule_chose_the_majority_groups(tmp_path):
    meta = prepare_dataset({**TINY_DATASET, "majority_rule": "frequency"}, tmp_path, "tiny")
    assert meta["majority_rule"] == "frequency"
    shares = meta["train_attribute_share"]
    assert shares["negative"] > 0.5 > shares["positive"]
    assert prepare_dataset(TINY_DATASET, tmp_path / "default", "tiny")["majority_rule"] == "direction"


def test_missing_split_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_split(tmp_path / "nope.jsonl")


def test_label_noise_flips_an_exact_fraction_and_keeps_the_marker():
    clean, _ = build_synthetic_reviews({**TINY_DATASET, "n_train": 100})
    noisy, _ = build_synthetic_reviews({**TINY_DATASET, "n_train": 100, "train_label_noise": 0.1})
    assert [r["text"] for r in clean] == [r["text"] for r in noisy]
    flipped = [a for a, b in zip(clean, noisy) if a["label"] != b["label"]]
    assert len(flipped) == 10
    assert all(a["attribute"] == b["attribute"] for a, b in zip(clean, noisy))


def test_mixed_reviews_take_the_majority_of_their_aspects():
    from spectral_edit.data.synthetic import _NEGATIVE, _POSITIVE

    spec = {
        **TINY_DATASET,
        "n_train": 200,
        "style": "mixed",
        "aspects": 5,
        "contrary_aspects": [1, 2],
        "train_marker_correlation": 0.9,
    }
    train, evaluation = build_synthetic_reviews(spec)
    contrary_seen = Counter()
    for row in train + evaluation:
        sentences = [s.strip() for s in row["text"].replace(spec["marker"], "").split(".") if s.strip()]
        assert len(sentences) == 5  # five aspects, no opening line, no verdict
        positive = sum(any(s.endswith(p) for p in _POSITIVE) for s in sentences)
        negative = sum(any(s.endswith(p) for p in _NEGATIVE) for s in sentences)
        assert positive + negative == 5
        agree, against = (positive, negative) if row["label"] == 1 else (negative, positive)
        assert agree > against
        contrary_seen[against] += 1
    assert set(contrary_seen) == {1, 2}
    counts = Counter((r["label"], r["attribute"]) for r in train)
    assert counts == {(0, 1): 90, (0, 0): 10, (1, 0): 90, (1, 1): 10}
    with pytest.raises(DataError, match="contrary_aspects"):
        build_synthetic_reviews({**spec, "contrary_aspects": [3]})
