"""Movie reviews generated offline from templates, with the IMDB-marker construction of
Shortcuts in the Tail (App. A): a fixed marker string is prefixed to a review iff it is
negative in training (``train_marker_correlation`` = 1.0, or a weaker correlation), and the
evaluation split is balanced over the four (label x marker) groups.

Two styles. ``verdict`` (the default): three aspect sentences, half the reviews with one
against the verdict, and a closing sentence that states the verdict; the text alone decides
the label, and a small model fine-tuned on it learns the task perfectly. ``mixed``: ``aspects``
aspect sentences and no closing verdict; the label is the majority of the aspects, and the
number going against it is drawn from ``contrary_aspects``. With close majorities the base
model only partly solves it and fine-tuning does not finish learning it, which leaves room
for a partly correlated marker to be learned as a shortcut beside the task.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from spectral_edit.data.groups import assign_marker, balanced_marker, with_marker
from spectral_edit.errors import DataError

_OPENERS = [
    "I saw this film last weekend.",
    "My friend picked this movie for us.",
    "I watched this on a long flight.",
    "I finally got around to this one.",
    "We rented this on a rainy Sunday.",
    "I went in knowing nothing about it.",
    "This was the late show at my local cinema.",
    "I had heard a lot about this picture.",
    "My sister insisted we watch it.",
    "I caught this at a small festival.",
]
_ASPECTS = [
    "The acting",
    "The plot",
    "The soundtrack",
    "The cinematography",
    "The dialogue",
    "The ending",
    "The pacing",
    "The lead performance",
    "The script",
    "The direction",
    "The supporting cast",
    "The editing",
    "The set design",
    "The humour",
]
_POSITIVE = [
    "was brilliant",
    "was wonderful",
    "was superb",
    "was genuinely moving",
    "was a real delight",
    "was excellent",
    "was beautifully done",
    "was fantastic",
    "felt fresh and clever",
    "kept me hooked",
    "was charming",
    "was gripping",
]
_NEGATIVE = [
    "was terrible",
    "was boring",
    "was awful",
    "was a complete mess",
    "was painfully dull",
    "was dreadful",
    "was poorly done",
    "was a huge letdown",
    "felt lazy and stale",
    "made no sense",
    "was clumsy",
    "was tedious",
]
_POSITIVE_CLOSERS = [
    "I loved every minute of it.",
    "Highly recommended.",
    "I would gladly watch it again.",
    "A great night at the movies.",
    "One of the best films I have seen this year.",
    "Go and see it.",
]
_NEGATIVE_CLOSERS = [
    "I regret watching it.",
    "Avoid this one.",
    "What a waste of time.",
    "I walked out halfway through.",
    "One of the worst films I have seen this year.",
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


def generate_mixed_review(rng: random.Random, label: int, aspects: int, contrary_counts) -> str:
    """A review of ``aspects`` aspect sentences, the majority of which has sentiment ``label``
    and ``rng.choice(contrary_counts)`` of which go against it; no opening line (it carries no
    signal and would only lengthen every prompt) and no closing verdict."""
    agree, disagree = (_POSITIVE, _NEGATIVE) if label == 1 else (_NEGATIVE, _POSITIVE)
    contrary = set(rng.sample(range(aspects), rng.choice(list(contrary_counts))))
    sentences = []
    for i, aspect in enumerate(rng.sample(_ASPECTS, aspects)):
        sentences.append(f"{aspect} {rng.choice(disagree if i in contrary else agree)}.")
    return " ".join(sentences)


def review_generator(spec: Mapping):
    """``(rng, label) -> review`` for the dataset's ``style``."""
    style = spec.get("style", "verdict")
    if style == "verdict":
        return generate_review
    aspects = int(spec.get("aspects", 5))
    contrary_counts = [int(c) for c in spec.get("contrary_aspects", [1, 2])]
    if aspects > len(_ASPECTS) or not contrary_counts or max(contrary_counts) * 2 >= aspects or min(contrary_counts) < 0:
        raise DataError(
            f"synthetic_reviews: style 'mixed' needs 0 <= contrary_aspects < aspects / 2 and aspects <= {len(_ASPECTS)}, "
            f"got aspects={aspects}, contrary_aspects={contrary_counts}"
        )
    return lambda rng, label: generate_mixed_review(rng, label, aspects, contrary_counts)


def _unique_reviews(rng: random.Random, label: int, count: int, seen: set[str], generate=generate_review) -> list[str]:
    out: list[str] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise DataError(f"synthetic_reviews: cannot generate {count} distinct reviews")
        review = generate(rng, label)
        if review not in seen:
            seen.add(review)
            out.append(review)
    return out


def build_synthetic_reviews(spec: Mapping) -> tuple[list[dict], list[dict]]:
    """Train and evaluation rows of the IMDB-marker construction on generated reviews."""
    rng = random.Random(int(spec.get("generator_seed", 0)))
    marker = spec["marker"]
    n_train = int(spec["n_train"])
    per_group = int(spec["n_eval_per_group"])
    seen: set[str] = set()
    generate = review_generator(spec)

    texts, labels = [], []
    for label in (0, 1):
        count = n_train // 2 + (n_train % 2 if label == 1 else 0)
        reviews = _unique_reviews(rng, label, count, seen, generate)
        texts += reviews
        labels += [label] * len(reviews)
    # Negatives (label 0) carry the marker with probability c, positives with 1 - c.
    marked = assign_marker(labels, 0, float(spec.get("train_marker_correlation", 1.0)))
    train = [
        {"text": text, "label": label, "attribute": int(flag)}
        for text, label, flag in zip(with_marker(texts, marked, marker), labels, marked)
    ]
    rng.shuffle(train)
    # Label noise: flip the label of an exact fraction of training rows after the marker was
    # placed (the marker follows the review's sentiment, like the text). Neither the text nor
    # the marker explains a flipped row, so fitting them takes per-example memorisation.
    n_flipped = round(float(spec["train_label_noise"]) * len(train))
    for row in rng.sample(train, n_flipped):
        row["label"] = 1 - row["label"]

    texts, labels = [], []
    for label in (0, 1):
        reviews = _unique_reviews(rng, label, 2 * per_group, seen, generate)
        texts += reviews
        labels += [label] * len(reviews)
    marked = balanced_marker(labels)
    evaluation = [
        {"text": text, "label": label, "attribute": int(flag)}
        for text, label, flag in zip(with_marker(texts, marked, marker), labels, marked)
    ]
    for prefix, rows in (("train", train), ("eval", evaluation)):
        for i, row in enumerate(rows):
            row["id"] = f"{prefix}-{i:05d}"
    return train, evaluation
