"""Instruction fine-tuning data, lm-eval benchmark records and their intervals, and the
planning checks of the benchmarks section."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest

from conftest import TINY_HYPER
from spectral_edit.analysis.benchmark_scores import Compared, bootstrap, from_benchmark_record
from spectral_edit.benchmarks.spec import check_benchmarks, definition_digest, resolve_benchmark, task_index
from spectral_edit.benchmarks.synthetic import antonym_benchmark, arithmetic_benchmark
from spectral_edit.data import prepare_dataset, read_split
from spectral_edit.data.arithmetic import arithmetic_problems
from spectral_edit.data.prompts import InstructionFormatter, training_features
from spectral_edit.errors import ConfigError, DataError
from spectral_edit.models import load_tokenizer
from spectral_edit.plan.records import with_schema_defaults

CHAT = [
    {"role": "user", "content": "What is 2 plus 3?"},
    {"role": "assistant", "content": "2 + 3 = 5. The answer is 5."},
    {"role": "user", "content": "And 4 plus 4?"},
    {"role": "assistant", "content": "The answer is 8."},
]


def _answer_text(tokenizer, feature) -> str:
    return tokenizer.decode([t for t, label in zip(feature["input_ids"], feature["labels"]) if label != -100])


def test_instruction_loss_is_on_exactly_the_response_tokens(tiny_base_dir):
    tokenizer = load_tokenizer(tiny_base_dir)
    feature, cut = InstructionFormatter(tokenizer).training_features(CHAT, 4096)
    assert cut == 0
    # The tokens are the chat template's rendering of the whole chat, nothing added or lost ...
    assert tokenizer.decode(feature["input_ids"]) == tokenizer.apply_chat_template(CHAT, tokenize=False)
    # ... and the loss reads every assistant turn with its end-of-turn marker, and nothing else.
    expected = "".join(f"{m['content']}<|im_end|>\n" for m in CHAT if m["role"] == "assistant")
    assert _answer_text(tokenizer, feature) == expected
    masked = tokenizer.decode([t for t, label in zip(feature["input_ids"], feature["labels"]) if label == -100])
    assert "The answer is" not in masked and masked.endswith("<|im_start|>assistant\n")
    assert len(feature["labels"]) == len(feature["input_ids"]) == len(feature["attention_mask"])


def test_max_length_cuts_answers_at_the_end_and_counts_what_it_cut(tiny_base_dir):
    tokenizer = load_tokenizer(tiny_base_dir)
    formatter = InstructionFormatter(tokenizer)
    whole, _ = formatter.training_features(CHAT[:2], 4096)
    answer_tokens = sum(label != -100 for label in whole["labels"])
    cut_to = len(whole["input_ids"]) - 5
    feature, cut = formatter.training_features(CHAT[:2], cut_to)
    assert cut == 5 and len(feature["input_ids"]) == cut_to and feature["input_ids"] == whole["input_ids"][:cut_to]
    prompt_tokens = len(whole["input_ids"]) - answer_tokens
    assert formatter.training_features(CHAT[:2], prompt_tokens) == (None, answer_tokens)  # no answer token left
    frame = pd.DataFrame({"id": ["a", "b"], "messages": [CHAT[:2], CHAT[:2]]})
    features, report = training_features(tokenizer, {"kind": "instruction"}, frame, cut_to)
    assert len(features) == 2 and report == {"examples": 2, "truncated": 2, "dropped": 0, "answer_tokens_cut": 10}
    with pytest.raises(DataError, match="max_length"):
        training_features(tokenizer, {"kind": "instruction"}, frame, prompt_tokens)


def test_generated_corpus_is_chats_with_worked_answers(tmp_path):
    meta = prepare_dataset({"kind": "instruction", "source": "synthetic_arithmetic", "n_train": 20, "n_eval": 4}, tmp_path, "a")
    train = read_split(tmp_path / "train.jsonl")
    assert meta["kind"] == "instruction" and len(train) == 20 and len(read_split(tmp_path / "eval.jsonl")) == 4
    for problem in arithmetic_problems(50, seed=3):
        # The worked answer computes what the question asks, and ends with the answer.
        numbers = [int(n) for n in problem["solution"].replace(".", " ").split() if n.lstrip("-").isdigit()]
        assert problem["solution"].endswith(f"The answer is {problem['answer']}.") and numbers[-1] == int(problem["answer"])
    assert [m["role"] for m in train["messages"][0]] == ["user", "assistant"]


def test_instruction_tables_by_template_and_by_messages(tmp_path):
    rows = [{"instruction": "Add", "input": "2 and 3", "output": "5"}, {"instruction": "Greet", "input": "", "output": "Hi"}]
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = {
        "kind": "instruction",
        "source": "local",
        "files": {"train": str(path)},
        "prompt_template": "{{ instruction }}{% if input %}\n\nInput:\n{{ input }}{% endif %}",
        "response_column": "output",
        "system_prompt": "Be brief.",
    }
    spec = with_schema_defaults("datasets", {"alpaca": spec})["alpaca"]
    prepare_dataset(spec, tmp_path / "out", "alpaca")
    chats = list(read_split(tmp_path / "out/train.jsonl")["messages"])
    assert chats[0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Add\n\nInput:\n2 and 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert chats[1][1]["content"] == "Greet"
    bad = {**spec, "prompt_template": "{{ instruction }} {{ missing }}"}
    with pytest.raises(DataError, match="missing"):
        prepare_dataset(bad, tmp_path / "bad", "alpaca")


def _record(values_by_leaf: dict, weight_by_size: bool, score: float, metric="acc,none") -> dict:
    name, filter_name = metric.split(",")
    samples = {
        leaf: [{"doc_id": i, "filter": filter_name, name: v, "target": 0, "filtered": None} for i, v in enumerate(values)]
        for leaf, values in values_by_leaf.items()
    }
    benchmark = {"metric": metric, "score": score, "leaf_tasks": list(values_by_leaf), "weight_by_size": weight_by_size}
    return {"cell": {}, "benchmark": {**benchmark, "samples": samples}}


def test_scores_reproduce_lm_evals_group_numbers():
    leaves = {"easy": [1, 1, 1, 0], "hard": [0, 0, 1, 0, 0, 0, 0, 0]}
    pooled = from_benchmark_record(_record(leaves, True, 4 / 12))
    assert pooled.value == pytest.approx(4 / 12) and pooled.sizes == (4, 8) and pooled.reported is None
    averaged = from_benchmark_record(_record(leaves, False, (3 / 4 + 1 / 8) / 2))
    assert averaged.value == pytest.approx((3 / 4 + 1 / 8) / 2) and averaged.resamplable
    # A metric that is not a mean of per-sample values (BLEU over the corpus): lm-eval's number, no interval.
    corpus = from_benchmark_record(_record(leaves, True, 0.77, metric="bleu,none"))
    assert corpus.value == 0.77 and not corpus.resamplable


def test_benchmark_bootstrap_is_paired_and_stratified():
    rng = np.random.default_rng(0)
    a = (rng.random(300) < 0.6).astype(float)
    flipped = a.copy()
    flipped[:30] = 1 - flipped[:30]
    sizes = (100, 200)

    def diff(values):
        return np.stack([values[0][1] - values[0][0]])

    same, low, high = bootstrap([Compared(np.vstack([a, a]), sizes, True)], diff, 500)
    assert same[0] == 0 and low[0] == 0 and high[0] == 0  # the same model: no uncertainty in the difference
    point, low, high = bootstrap([Compared(np.vstack([a, flipped]), sizes, True)], diff, 2000)
    assert point[0] == pytest.approx(flipped.mean() - a.mean()) and low[0] < point[0] < high[0]
    # Paired: the interval of the difference is narrower than that of two independent accuracies.
    independent = 1.96 * math.sqrt(2 * 0.25 / 300)
    assert (high[0] - low[0]) / 2 < independent


def test_benchmark_seed_means_resample_the_seeds_too():
    from spectral_edit.analysis.benchmark_scores import Scores
    from spectral_edit.analysis.benchmark_tables import compare_scores

    ids = tuple(f"s{i}" for i in range(40))

    def scores(values):
        return Scores(np.asarray(values, float), ids, (20, 20))

    # Two seeds: one edit gets every sample right, the other none; every FT gets half (one
    # stratum right, one wrong). Within a seed the samples of a stratum score alike, so only the
    # seeds vary: the seed mean's interval is that of the mean of (1, 0) resampled, [0, 1].
    half = [1.0] * 20 + [0.0] * 20
    edit, ft = [scores([1.0] * 40), scores([0.0] * 40)], [scores(half), scores(half)]
    row = compare_scores(edit, ft, scores(half), {"n_resamples": 2000, "seed": 0})
    assert row["score"] == pytest.approx(0.5) and (row["score_lo"], row["score_hi"]) == pytest.approx((0.0, 1.0))
    assert (row["diff_ft_lo"], row["diff_ft_hi"]) == pytest.approx((-0.5, 0.5))
    one = compare_scores(edit[:1], ft[:1], scores(half), {"n_resamples": 500, "seed": 0})
    assert (one["score_lo"], one["score_hi"]) == (1.0, 1.0)  # one seed: the samples' interval alone


def test_synthetic_benchmarks_are_seeded_and_disjoint_from_their_few_shot_pool():
    spec = {"name": "arith", "n": 30, "generator_seed": 5}
    pool, test = arithmetic_benchmark(spec)
    assert (pool, test) == arithmetic_benchmark(spec) and len(test) == 30
    questions = [p["question"] for p in pool + test]
    assert len(set(questions)) == len(questions)  # no problem twice, none its own few-shot example
    _, docs = antonym_benchmark({"name": "ant", "n": 12, "generator_seed": 1})
    assert len({d["word"] for d in docs}) == 12 and all(d["choices"][d["label"]] not in (d["word"],) for d in docs)


@pytest.fixture(scope="module")
def index_cache(tmp_path_factory):
    """One working directory for the module: lm-eval's registry index is built once (about 9 s)."""
    path = tmp_path_factory.mktemp("index")
    cwd = os.getcwd()
    os.chdir(path)
    yield path
    os.chdir(cwd)


def _config(definitions: dict, **dataset) -> dict:
    return {
        "grid": {"datasets": ["t"]},
        "datasets": {"t": {"kind": "instruction", "source": "synthetic_arithmetic", "n_train": 8, **dataset}},
        "benchmarks": with_schema_defaults("benchmarks", definitions),
    }


def test_benchmark_names_are_checked_against_lm_eval_at_planning(index_cache):
    digests = check_benchmarks(_config({"gsm8k": {}, "mmlu": {"num_fewshot": 5}}, benchmarks=["gsm8k"], heldout=["mmlu"]))
    assert set(digests) == {"gsm8k", "mmlu"} and len(set(digests.values())) == 2
    with pytest.raises(ConfigError, match=r"benchmarks\.gsm9k\.task: 'gsm9k' is not a task or group of lm-eval"):
        check_benchmarks(_config({"gsm9k": {}}, benchmarks=["gsm9k"]))
    with pytest.raises(ConfigError, match=r"humaneval.*executes the code.*execute_code: true"):
        check_benchmarks(_config({"humaneval": {}}, benchmarks=["humaneval"]))
    assert "humaneval" in check_benchmarks(_config({"humaneval": {"execute_code": True}}, benchmarks=["humaneval"]))
    with pytest.raises(ConfigError, match=r"unknown benchmark 'nope'"):
        check_benchmarks(_config({}, benchmarks=["nope"]))


def test_a_local_task_yaml_that_does_not_load_is_named(index_cache, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "good.yaml").write_text("task: good_task\ndataset_path: json\noutput_type: multiple_choice\ndoc_to_text: x\n")
    config = _config({"good": {"task": "good_task", "include_path": str(tasks)}}, benchmarks=["good"])
    first = check_benchmarks(config)["good"]
    (tasks / "good.yaml").write_text("task: good_task\ndataset_path: json\noutput_type: multiple_choice\ndoc_to_text: y\n")
    assert check_benchmarks(config)["good"] != first  # the definition changed: a new digest
    (tasks / "broken.yaml").write_text("task: broken\n  dataset_path: [json\n")
    with pytest.raises(ConfigError, match=r"task YAML .*broken\.yaml does not load"):
        check_benchmarks(config)


def test_a_definition_digest_covers_included_files_and_functions(index_cache, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "_base.yaml").write_text("dataset_path: json\noutput_type: generate_until\n")
    (tasks / "utils.py").write_text("def score(doc, results):\n    return {'acc': 1}\n")
    (tasks / "t.yaml").write_text("include: _base.yaml\ntask: inc_task\ndoc_to_text: q\nprocess_results: !function utils.score\n")
    index = task_index(str(tasks))
    digest = definition_digest("inc_task", index)
    (tasks / "utils.py").write_text("def score(doc, results):\n    return {'acc': 0}\n")
    assert definition_digest("inc_task", task_index(str(tasks))) != digest
    (tasks / "_base.yaml").write_text("dataset_path: json\noutput_type: generate_until\ntest_split: x\n")
    assert definition_digest("inc_task", task_index(str(tasks))) not in (digest,)
    benchmarks = with_schema_defaults("benchmarks", {"b": {"source": "synthetic_antonyms"}})
    assert resolve_benchmark({"benchmarks": benchmarks}, "b")["task"] == "spectral_edit_b"


def _connect(port: int, answer) -> None:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        answer.put("connected")
    except OSError as error:
        answer.put(type(error).__name__)


def _child_result(port: int) -> str:
    from multiprocessing import Process, Queue

    answer = Queue()
    child = Process(target=_connect, args=(port, answer))
    child.start()
    child.join(20)
    return answer.get(timeout=5)


def test_generated_code_runs_in_children_that_are_off_the_network():
    import socket

    from spectral_edit.benchmarks.harness import offline_children

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert _child_result(port) == "connected"  # an ordinary child reaches the listener
        with offline_children() as isolation:
            assert _child_result(port) != "connected"
        assert isolation in ("own network namespace", "Internet sockets disabled")
        assert _child_result(port) == "connected"  # only while the task is scored


UNSAFE_TASK = """task: unsafe_probe
dataset_path: json
dataset_kwargs: {data_files: {test: DATA}}
test_split: test
output_type: generate_until
unsafe_code: true
doc_to_text: "{{question}}"
doc_to_target: "{{answer}}"
generation_kwargs: {until: ["\\n"], max_gen_toks: 2, do_sample: false}
process_results: !function probe.score
metric_list:
  - {metric: offline, aggregation: mean, higher_is_better: true}
  - {metric: ran, aggregation: mean, higher_is_better: true}
"""
PROBE = """import multiprocessing
import os


def _child(port, answer):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        answer.put(("connected", 2 + 2))
    except OSError:
        answer.put(("refused", 2 + 2))


def score(doc, results):
    # What a code-execution metric does: run code in a child process, with a time limit.
    answer = multiprocessing.Queue()
    child = multiprocessing.Process(target=_child, args=(int(os.environ["PROBE_PORT"]), answer))
    child.start()
    child.join(20)
    network, value = answer.get(timeout=5)
    return {"offline": float(network == "refused"), "ran": float(value == 4)}
"""


def test_an_execute_code_benchmark_runs_the_code_off_the_network(tiny_base_dir, tmp_path, monkeypatch):
    import socket

    from spectral_edit.evaluate.cells import CellEvaluator

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n" for i in range(3)))
    (tasks / "unsafe.yaml").write_text(UNSAFE_TASK.replace("DATA", str(tmp_path / "docs.jsonl")))
    (tasks / "probe.py").write_text(PROBE)
    given = {"task": "unsafe_probe", "include_path": str(tasks), "execute_code": True, "metric": "offline,none"}
    spec = resolve_benchmark({"benchmarks": with_schema_defaults("benchmarks", {"probe": given})}, "probe")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        monkeypatch.setenv("PROBE_PORT", str(listener.getsockname()[1]))
        record = CellEvaluator(tiny_base_dir).run(cell={}, benchmark=spec, batch_size=4)["benchmark"]
    assert record["score"] == 1.0 and record["results"]["unsafe_probe"]["ran,none"] == 1.0
    assert record["code_execution"]["network"] in ("own network namespace", "Internet sockets disabled")


@pytest.mark.parametrize(
    "recipe",
    [
        {"kind": "full"},
        {"kind": "lora", "rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        {"kind": "speclora", "rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "top_k": 2},
    ],
    ids=lambda r: r["kind"],
)
def test_every_recipe_fine_tunes_on_instruction_data(tiny_base_dir, tmp_path, recipe):
    from safetensors.torch import load_file

    from spectral_edit.train.finetune import finetune

    prepare_dataset({"kind": "instruction", "source": "synthetic_arithmetic", "n_train": 16}, tmp_path / "data", "a")
    hyper = {**TINY_HYPER, "steps": 3, "batch_size": 4, "learning_rate": 1e-2, "max_length": 140}
    train = tmp_path / "data/train.jsonl"
    log = finetune(tiny_base_dir, train, tmp_path / "ft", {"kind": "instruction"}, hyper, 0, False, recipe)
    # max_length 140 cuts the longer byte-level chats: counted, not silent.
    assert log["max_length_cuts"]["examples"] == 16 and log["max_length_cuts"]["answer_tokens_cut"] > 0
    assert log["train_examples"] == 16 - log["max_length_cuts"]["dropped"] and len(log["loss_curve"]) == 3
    base, tuned = load_file(tiny_base_dir / "model.safetensors"), load_file(tmp_path / "ft/model.safetensors")
    changed = [name for name in base if not (base[name] == tuned[name]).all()]
    assert changed and (recipe["kind"] == "full" or all("q_proj" in n or "v_proj" in n for n in changed))
