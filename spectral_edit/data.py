"""Dataset preparation: training split, group-balanced evaluation split, group metadata.

Every prepared example is a row ``{id, text, label, attribute}``: ``label`` indexes the
dataset's label words, ``attribute`` is the spurious attribute (0/1). Groups are
(label x attribute). The majority groups are those where the attribute takes, for that label,
its most frequent value in the training split (the training correlation); the others are the
minority groups. They are written to ``meta.json`` beside the splits.

Source ``synthetic_reviews`` builds the IMDB-marker construction of Shortcuts in the Tail
(App. A) on movie reviews generated here from templates, offline: a fixed marker string is
prefixed to a review iff it is negative in training (``train_marker_correlation`` = 1.0, or a
weaker correlation), and the evaluation split is balanced over the four (label x marker) groups.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from .atomic import atomic_path, write_json
from .errors import DataError

log = logging.getLogger(__name__)

ATTRIBUTE_NAME = {"synthetic_reviews": "marker"}

_OPENERS = [
    "I saw this film last weekend.", "My friend picked this movie for us.",
    "I watched this on a long flight.", "I finally got around to this one.",
    "We rented this on a rainy Sunday.", "I went in knowing nothing about it.",
    "This was the late show at my local cinema.", "I had heard a lot about this picture.",
    "My sister insisted we watch it.", "I caught this at a small festival.",
]
_ASPECTS = [
    "The acting", "The plot", "The soundtrack", "The cinematography", "The dialogue",
    "The ending", "The pacing", "The lead performance", "The script", "The direction",
    "The supporting cast", "The editing", "The set design", "The humour",
]
_POSITIVE = [
    "was brilliant", "was wonderful", "was superb", "was genuinely moving", "was a real delight",
    "was excellent", "was beautifully done", "was fantastic", "felt fresh and clever",
    "kept me hooked", "was charming", "was gripping",
]
_NEGATIVE = [
    "was terrible", "was boring", "was awful", "was a complete mess", "was painfully dull",
    "was dreadful", "was poorly done", "was a huge letdown", "felt lazy and stale",
    "made no sense", "was clumsy", "was tedious",
]
_POSITIVE_CLOSERS = [
    "I loved every minute of it.", "Highly recommended.", "I would gladly watch it again.",
    "A great night at the movies.", "One of the best films I have seen this year.",
    "Go and see it.",
]
_NEGATIVE_CLOSERS = [
    "I regret watching it.", "Avoid this one.", "What a waste of time.",
    "I walked out halfway through.", "One of the worst films I have seen this year.",
    "Skip it.",
]


def generate_review(rng: random.Random, label: int) -> str:
    """A short review whose overall sentiment is ``label`` (0 negative, 1 positive).

    Three aspect sentences, one of which may go against the overall sentiment (mixed reviews
    keep the task from being a single-word lookup), and a closing verdict that agrees with it.
    """
    agree, disagree = (_POSITIVE, _NEGATIVE) if label == 1 else (_NEGATIVE, _POSITIVE)
    closers = _POSITIVE_CLOSERS if label == 1 else _NEGATIVE_CLOSERS
    aspects = rng.sample(_ASPECTS, 3)
    contrary = rng.randrange(3) if rng.random() < 0.5 else -1
    sentences = [rng.choice(_OPENERS)]
    for i, aspect in enumerate(aspects):
        sentences.append(f"{aspect} {rng.choice(disagree if i == contrary else agree)}.")
    sentences.append(rng.choice(closers))
    return " ".join(sentences)


def _unique_reviews(rng: random.Random, label: int, count: int, seen: set[str]) -> list[str]:
    out: list[str] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise DataError(f"synthetic_reviews: cannot generate {count} distinct reviews")
        review = generate_review(rng, label)
        if review not in seen:
            seen.add(review)
            out.append(review)
    return out


def build_synthetic_reviews(spec: Mapping) -> tuple[list[dict], list[dict]]:
    """Train and evaluation rows of the IMDB-marker construction on generated reviews."""
    rng = random.Random(int(spec.get("generator_seed", 0)))
    marker = spec["marker"]
    correlation = float(spec.get("train_marker_correlation", 1.0))
    n_train = int(spec["n_train"])
    per_group = int(spec["n_eval_per_group"])
    seen: set[str] = set()

    def with_marker(text: str, present: int) -> str:
        return f"{marker} {text}" if present else text

    train = []
    for label in (0, 1):
        count = n_train // 2 + (n_train % 2 if label == 1 else 0)
        # Negatives carry the marker with probability c, positives with 1 - c; exact counts,
        # so the stated correlation holds in the split and not only in expectation.
        n_marked = round((correlation if label == 0 else 1 - correlation) * count)
        for i, text in enumerate(_unique_reviews(rng, label, count, seen)):
            present = int(i < n_marked)
            train.append({"text": with_marker(text, present), "label": label, "attribute": present})
    rng.shuffle(train)
    # Label noise: flip the label of an exact fraction of training rows after the marker was
    # placed (the marker follows the review's sentiment, like the text). Neither the text nor
    # the marker explains a flipped row, so fitting them takes per-example memorisation.
    n_flipped = round(float(spec.get("train_label_noise", 0.0)) * len(train))
    for row in rng.sample(train, n_flipped):
        row["label"] = 1 - row["label"]

    evaluation = []
    for label in (0, 1):
        texts = _unique_reviews(rng, label, 2 * per_group, seen)
        for present in (0, 1):
            for text in texts[present * per_group:(present + 1) * per_group]:
                evaluation.append({"text": with_marker(text, present), "label": label, "attribute": present})
    for prefix, rows in (("train", train), ("eval", evaluation)):
        for i, row in enumerate(rows):
            row["id"] = f"{prefix}-{i:05d}"
    return train, evaluation


def group_name(label_words: Sequence[str], attribute_name: str, label: int, attribute: int) -> str:
    return f"{label_words[label]}|{attribute_name}={attribute}"


def majority_groups(rows: Sequence[Mapping], label_words: Sequence[str], attribute_name: str) -> list[str]:
    """Per label, the group whose attribute value is most frequent for it in ``rows``."""
    counts = Counter((row["label"], row["attribute"]) for row in rows)
    majority = []
    for label in range(len(label_words)):
        by_attribute = {a: n for (y, a), n in counts.items() if y == label}
        if not by_attribute:
            raise DataError(f"training split has no example of label {label_words[label]!r}")
        best = max(by_attribute.values())
        tied = [a for a, n in by_attribute.items() if n == best]
        if len(tied) > 1:
            raise DataError(
                f"label {label_words[label]!r} has no majority {attribute_name} value in training "
                f"(counts {by_attribute}): the attribute is not correlated with it"
            )
        majority.append(group_name(label_words, attribute_name, label, tied[0]))
    return majority


def write_jsonl(path: str | Path, rows: Sequence[Mapping]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")


def read_split(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prepared split not found: {path}")
    frame = pd.read_json(path, lines=True, dtype={"text": str, "id": str})
    missing = {"id", "text", "label", "attribute"} - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)} (has {list(frame.columns)})")
    return frame


def prepare_dataset(spec: Mapping, out_dir: str | Path, name: str = "dataset") -> dict:
    """Build and write train.jsonl, eval.jsonl and meta.json for one dataset config."""
    source = spec["source"]
    if source != "synthetic_reviews":
        raise DataError(f"datasets.{name}.source: unknown source {source!r}")
    train, evaluation = build_synthetic_reviews(spec)
    attribute = ATTRIBUTE_NAME[source]
    words = list(spec["label_words"])
    majority = majority_groups(train, words, attribute)
    every_group = [group_name(words, attribute, y, a) for y in range(len(words)) for a in (0, 1)]

    def counts(rows):
        tally = Counter(group_name(words, attribute, r["label"], r["attribute"]) for r in rows)
        return {group: tally.get(group, 0) for group in every_group}

    meta = {
        "dataset": name,
        "source": source,
        "label_words": words,
        "attribute": attribute,
        "majority_groups": majority,
        "minority_groups": [g for g in every_group if g not in majority],
        "train_group_counts": counts(train),
        "eval_group_counts": counts(evaluation),
        "spec": dict(spec),
    }
    out_dir = Path(out_dir)
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "eval.jsonl", evaluation)
    write_json(out_dir / "meta.json", meta)
    log.info("prepared %s: %d train, %d eval rows; majority groups %s", name, len(train), len(evaluation), majority)
    return meta


def read_meta(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
