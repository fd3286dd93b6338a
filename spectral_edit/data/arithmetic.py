"""Arithmetic word problems generated offline: an instruction corpus with worked answers, and
the problems of a generated benchmark (spectral_edit.benchmarks.synthetic) scored by exact match.

A problem is one of a few templates ("Ana has 12 coins and gets 7 more. How many coins does Ana
have now?") with numbers drawn from a seeded generator. Its worked answer states the computation
and ends with "The answer is N.", the format GSM8K's answers end with ("#### N") made plain, so
a model fine-tuned on the corpus learns both the arithmetic and where to put the result. The
embedded SmolLM2-135M-Instruct solves about 40 % of one-step problems zero-shot (measured on the
benchmark with lm-eval: README), so fine-tuning has room to help and an edit room to cost.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from spectral_edit.errors import ConfigError

NAMES = [
    "Ana",
    "Ben",
    "Carla",
    "Dev",
    "Ella",
    "Finn",
    "Gita",
    "Hugo",
    "Iris",
    "Jon",
    "Kemi",
    "Luis",
    "Maya",
    "Nico",
    "Omar",
    "Pia",
]
ITEMS = ["apples", "books", "coins", "pens", "cards", "shells", "stamps", "marbles", "stickers", "candles", "cups", "plates"]
OPERATIONS = ("add", "subtract", "two_step", "multiply")


def arithmetic_problem(rng: random.Random, operations: Sequence[str] = OPERATIONS) -> dict:
    """One problem: ``question``, ``solution`` (worked, ending "The answer is N.") and ``answer``."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    operation = rng.choice(list(operations))
    if operation == "add":
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        answer = a + b
        question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        work = f"{name} has {a} + {b} = {answer} {item} now."
    elif operation == "subtract":
        a = rng.randint(5, 30)
        b = rng.randint(1, a - 1)
        answer = a - b
        question = f"{name} has {a} {item} and gives {b} of them away. How many {item} does {name} have left?"
        work = f"{name} has {a} - {b} = {answer} {item} left."
    elif operation == "two_step":
        a, b = rng.randint(2, 15), rng.randint(2, 15)
        c = rng.randint(1, a + b - 1)
        answer = a + b - c
        question = f"{name} has {a} {item}, buys {b} more and then gives {c} away. How many {item} does {name} have now?"
        work = f"After buying, {name} has {a} + {b} = {a + b} {item}. After giving {c} away, {name} has {a + b} - {c} = {answer}."
    elif operation == "multiply":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        answer = a * b
        question = f"{name} buys {a} boxes with {b} {item} in each box. How many {item} does {name} buy?"
        work = f"{name} buys {a} * {b} = {answer} {item}."
    else:
        raise ConfigError(f"unknown arithmetic operation {operation!r} (known: {', '.join(OPERATIONS)})")
    return {"question": question, "solution": f"{work} The answer is {answer}.", "answer": str(answer)}


def arithmetic_problems(n: int, seed: int, operations: Sequence[str] = OPERATIONS) -> list[dict]:
    rng = random.Random(seed)
    return [arithmetic_problem(rng, operations) for _ in range(n)]


def check_operations(spec: Mapping, where: str) -> list[str]:
    operations = list(spec.get("operations") or OPERATIONS)
    unknown = [op for op in operations if op not in OPERATIONS]
    if unknown:
        raise ConfigError(f"{where}.operations: unknown operation {unknown[0]!r} (known: {', '.join(OPERATIONS)})")
    return operations


def build_arithmetic_corpus(spec: Mapping) -> tuple[list[dict], list[dict]]:
    """Training and held-out chats of a ``synthetic_arithmetic`` instruction dataset."""
    operations = check_operations(spec, "datasets")
    n_train, n_eval = int(spec["n_train"]), int(spec.get("n_eval", 0))
    problems = arithmetic_problems(n_train + n_eval, int(spec.get("generator_seed", 0)), operations)
    rows = [
        {
            "id": f"{'train' if i < n_train else 'eval'}-{i if i < n_train else i - n_train:05d}",
            "messages": [{"role": "user", "content": p["question"]}, {"role": "assistant", "content": p["solution"]}],
        }
        for i, p in enumerate(problems)
    ]
    return rows[:n_train], rows[n_train:]
