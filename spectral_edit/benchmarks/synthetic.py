"""Benchmarks generated offline, written as lm-evaluation-harness tasks (data and task YAML), so
that the offline protocol runs through lm-eval exactly as GSM8K or MMLU do on a cluster.

  synthetic_arithmetic  generate-until: arithmetic word problems (spectral_edit.data.arithmetic),
                        greedy decoding, exact match of the extracted number against the answer.
                        Targets are worked solutions ending "The answer is N." (few-shot examples
                        show them); as in lm-eval's GSM8K, the metric strips everything up to the
                        answer before comparing, and two filters extract the number from the
                        model's text: ``strict-match`` (after "The answer is") and
                        ``flexible-extract`` (the last number). Few-shot examples come from a
                        separate pool of problems (the ``train`` split), never from the test set.
  synthetic_antonyms    multiple choice: "What is the opposite of "hot"?" with four one-word
                        choices, scored by the log-likelihood of each choice (accuracy). The
                        embedded SmolLM2-135M-Instruct scores about 0.9 zero-shot, so damage by
                        fine-tuning can show.
Both files go to ``results/benchmark_tasks/<name>/``; the YAML names the data by its path
relative to the working directory (the workflow's, where the server runs).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path

import yaml

from spectral_edit.atomic import write_text
from spectral_edit.benchmarks.spec import synthetic_task_name
from spectral_edit.data import write_jsonl
from spectral_edit.data.arithmetic import arithmetic_problem, check_operations

FEWSHOT_POOL = 32

ANTONYMS = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("up", "down"), ("light", "dark"),
    ("old", "young"), ("open", "closed"), ("wet", "dry"), ("early", "late"), ("full", "empty"), ("hard", "soft"),
    ("rich", "poor"), ("loud", "quiet"), ("long", "short"), ("strong", "weak"), ("high", "low"), ("thick", "thin"),
    ("clean", "dirty"), ("true", "false"), ("inside", "outside"), ("day", "night"), ("win", "lose"), ("buy", "sell"),
    ("push", "pull"), ("give", "take"), ("first", "last"), ("heavy", "light"), ("safe", "dangerous"), ("sweet", "sour"),
    ("friend", "enemy"), ("begin", "end"), ("left", "right"), ("north", "south"), ("east", "west"), ("above", "below"),
    ("cheap", "expensive"), ("wide", "narrow"), ("deep", "shallow"), ("smooth", "rough"),
]  # fmt: skip


def arithmetic_benchmark(spec: Mapping) -> tuple[list[dict], list[dict]]:
    """(few-shot pool, test problems): one seeded stream, the pool drawn first; no question is
    asked twice or shown as a few-shot example of itself."""
    operations = check_operations(spec, f"benchmarks.{spec['name']}")
    rng = random.Random(int(spec["generator_seed"]))
    seen: set[str] = set()
    drawn: list[dict] = []
    while len(drawn) < FEWSHOT_POOL + int(spec["n"]):
        problem = arithmetic_problem(rng, operations)
        if problem["question"] not in seen:
            seen.add(problem["question"])
            drawn.append(problem)
    return drawn[:FEWSHOT_POOL], drawn[FEWSHOT_POOL:]


def antonym_benchmark(spec: Mapping) -> tuple[list[dict], list[dict]]:
    """Every word of every pair asked once (up to ``n``), with three distractors from other pairs."""
    rng = random.Random(int(spec["generator_seed"]))
    questions = [(a, b) for a, b in ANTONYMS] + [(b, a) for a, b in ANTONYMS]
    rng.shuffle(questions)
    words = sorted({w for pair in ANTONYMS for w in pair})
    docs = []
    for word, opposite in questions[: int(spec["n"])]:
        distractors = rng.sample([w for w in words if w not in (word, opposite)], 3)
        choices = distractors + [opposite]
        rng.shuffle(choices)
        docs.append({"word": word, "choices": choices, "label": choices.index(opposite)})
    return [], docs


def task_config(spec: Mapping, data_dir: str) -> dict:
    """The lm-eval task YAML of a generated benchmark."""
    files = {"test": f"{data_dir}/test.jsonl"}
    common = {"task": synthetic_task_name(spec["name"]), "dataset_path": "json", "test_split": "test"}
    if spec["source"] == "synthetic_arithmetic":
        files["train"] = f"{data_dir}/train.jsonl"
        return {
            **common,
            "dataset_kwargs": {"data_files": files},
            "fewshot_split": "train",
            "output_type": "generate_until",
            "doc_to_text": "{{question}}",
            "doc_to_target": "{{solution}}",
            # One line: the worked answer of the corpus is one line, and the first line of a longer
            # answer holds its computation.
            "generation_kwargs": {"until": ["\n", "<|im_end|>", "</s>"], "max_gen_toks": 48, "do_sample": False},
            "filter_list": [
                {
                    "name": "strict-match",
                    "filter": [{"function": "regex", "regex_pattern": r"The answer is (\-?[0-9]+)"}, {"function": "take_first"}],
                },
                {
                    "name": "flexible-extract",
                    "filter": [
                        {"function": "regex", "regex_pattern": r"(-?[0-9]+)", "group_select": -1},
                        {"function": "take_first"},
                    ],
                },
            ],
            "metric_list": [
                {
                    "metric": "exact_match",
                    "aggregation": "mean",
                    "higher_is_better": True,
                    "ignore_case": True,
                    "regexes_to_ignore": [r"(?s).*The answer is ", r"\.$"],
                }
            ],
            "metadata": {"version": 1.0},
        }
    # Multiple choice: the choice follows the assistant header directly under the chat template,
    # after a space without it.
    return {
        **common,
        "dataset_kwargs": {"data_files": files},
        "output_type": "multiple_choice",
        "doc_to_text": 'What is the opposite of "{{word}}"? Answer with one word.',
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "target_delimiter": "" if spec["apply_chat_template"] else " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def write_benchmark(spec: Mapping, out_dir: str | Path) -> Path:
    """Write the data and the task YAML of a generated benchmark; returns the YAML's path."""
    out_dir = Path(out_dir)
    build = arithmetic_benchmark if spec["source"] == "synthetic_arithmetic" else antonym_benchmark
    pool, test = build(spec)
    write_jsonl(out_dir / "train.jsonl", pool)  # the few-shot pool (empty for multiple choice)
    write_jsonl(out_dir / "test.jsonl", test)
    path = out_dir / "task.yaml"
    write_text(path, yaml.safe_dump(task_config(spec, str(out_dir)), sort_keys=False))
    return path
