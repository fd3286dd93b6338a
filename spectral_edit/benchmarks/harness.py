"""Score a model in memory with lm-evaluation-harness and keep every sample's score.

The evaluation server calls :func:`run_benchmark` on the model it has just edited, so nothing is
exported and the model is loaded once per checkpoint: lm-eval's ``HFLM`` accepts a model object.
The record keeps lm-eval's metrics, its version and task hashes (computed as lm-eval's
EvaluationTracker computes them), the group structure of a group benchmark (its leaf tasks and
whether lm-eval weights them by size), and per sample the metric values, the filtered answer,
the target and, for generated text, the model's response; prompts and documents are left out
(a 5-shot GSM8K prompt is several kB per sample). The same samples give the tables their
intervals (spectral_edit.analysis.benchmark_scores).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

# Keys of an lm-eval sample that are not metric values.
_SAMPLE_KEYS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics"}
_HASH_KEYS = ("doc_hash", "prompt_hash", "target_hash")


def task_manager(spec: Mapping, managers: dict):
    """lm-eval's TaskManager for a benchmark: its include path alone (fast), or the registry
    (about 9 s to index, so kept in ``managers`` for the next cell of the process)."""
    from lm_eval.tasks import TaskManager

    key = spec.get("include_path") or ""
    if key not in managers:
        managers[key] = TaskManager(include_path=key, include_defaults=False) if key else TaskManager()
    return managers[key]


def _group_weighting(manager, group: str, metric: str) -> bool:
    """Whether lm-eval weights a group's leaf tasks by their size for ``metric`` (its default: yes)."""
    entry = manager.task_index.get(group)
    aggregates = ((entry.cfg or {}) if entry else {}).get("aggregate_metric_list") or []
    for aggregate in aggregates if isinstance(aggregates, list) else [aggregates]:
        if isinstance(aggregate, Mapping) and aggregate.get("metric") == metric.split(",")[0]:
            return bool(aggregate.get("weight_by_size", True))
    return True


def _leaf_tasks(results: Mapping, name: str) -> list[str]:
    subtasks = results.get("group_subtasks", {})
    if name not in subtasks or not subtasks[name]:
        return [name]
    leaves: list[str] = []
    for child in subtasks[name]:
        leaves += _leaf_tasks(results, child)
    return list(dict.fromkeys(leaves))


def _default_metric(task_results: Mapping) -> str:
    for key, value in task_results.items():
        if "," in key and "_stderr" not in key and isinstance(value, int | float):
            return key
    raise ValueError(f"lm-eval reported no metric: {sorted(task_results)}")


def _short(value, limit: int = 2000):
    """JSON-ready sample fields (numpy scalars, tuples), long text cut."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    if isinstance(value, list | tuple):
        return [_short(v, limit) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _short(v, limit) for k, v in value.items()}
    if hasattr(value, "item"):
        return value.item()
    return value


def _sample_record(sample: Mapping, generated: bool) -> dict:
    record = {"doc_id": int(sample["doc_id"]), "filter": sample["filter"]}
    record.update({k: _short(v) for k, v in sample.items() if k not in _SAMPLE_KEYS and k not in _HASH_KEYS})
    record["target"] = _short(sample["target"], 500)
    record["filtered"] = _short(sample["filtered_resps"], 500)
    if generated:
        record["response"] = _short(sample["resps"])
    return record


def benchmark_record(results: Mapping, spec: Mapping, manager) -> dict:
    """What a benchmark cell keeps of lm-eval's output (see the module docstring)."""
    from lm_eval.utils import hash_string

    task = spec["task"]
    metric = spec.get("metric") or _default_metric(results["results"][task])
    if metric not in results["results"][task]:
        reported = [k for k in results["results"][task] if "," in k and "_stderr" not in k]
        raise ValueError(f"benchmarks.{spec['name']}.metric: lm-eval reported no {metric!r} for {task} (it has {reported})")
    leaves = _leaf_tasks(results, task)
    samples, hashes = {}, {}
    for leaf in leaves:
        raw = sorted(results["samples"][leaf], key=lambda s: (int(s["doc_id"]), s["filter"]))
        generated = results["configs"][leaf].get("output_type") == "generate_until"
        samples[leaf] = [_sample_record(s, generated) for s in raw]
        # lm-eval's task hash (EvaluationTracker): one hash over every sample's three hashes.
        hashes[leaf] = hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in raw))
    return {
        "benchmark": spec["name"],
        "task": task,
        "metric": metric,
        "score": float(results["results"][task][metric]),
        "lm_eval": {
            "version": results.get("lm_eval_version"),
            "task_hashes": hashes,
            "n_shot": results.get("n-shot", {}),
            "task_versions": results.get("versions", {}),
            "higher_is_better": _short(results.get("higher_is_better", {})),
        },
        "results": _short(results["results"]),
        "leaf_tasks": leaves,
        "weight_by_size": _group_weighting(manager, task, metric) if leaves != [task] else True,
        "samples": samples,
    }


_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000


def cut_network() -> str:
    """Take this process off the network, as well as it can be done here: its own empty network
    namespace (no interface but a loopback that is down) where the kernel allows one, else no
    Internet sockets from Python (``socket.socket`` refuses AF_INET and AF_INET6; Unix sockets,
    which multiprocessing uses to talk to its children, keep working). Returns which."""
    import ctypes
    import socket

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        for flags in (_CLONE_NEWNET, _CLONE_NEWUSER | _CLONE_NEWNET):  # root; an unprivileged user
            if libc.unshare(flags) == 0:
                return "own network namespace"
    except (OSError, AttributeError):
        pass
    internet = (socket.AF_INET, socket.AF_INET6)

    class LocalOnly(socket.socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None and (family in internet or family == -1):
                raise PermissionError("network access is disabled while generated code runs")
            super().__init__(family, type, proto, fileno)

    socket.socket = LocalOnly
    return "Internet sockets disabled"


@contextlib.contextmanager
def offline_children():
    """While a task that executes the model's code is scored: every multiprocessing child of this
    process (HF's code_eval runs each completion in one, with its time limit) starts by cutting
    itself off the network (:func:`cut_network`). Yields how they are cut off, found by a probe."""
    from multiprocessing import Process, Queue
    from multiprocessing.process import BaseProcess

    original = BaseProcess.run

    def run(self):
        cut_network()
        return original(self)

    BaseProcess.run = run
    try:
        answer: Queue = Queue()
        probe = Process(target=_probe_network, args=(answer,))
        probe.start()
        probe.join(30)
        yield answer.get(timeout=5) if not answer.empty() else "unknown (the probe did not answer)"
    finally:
        BaseProcess.run = original


def _probe_network(answer) -> None:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 9), timeout=1):
            pass
        answer.put("not cut off")
    except PermissionError:
        answer.put("Internet sockets disabled")
    except OSError as error:  # unreachable: no interface is up in the new namespace
        answer.put("own network namespace" if error.errno in (101, 99) else f"own network namespace? ({error})")


def run_benchmark(model, tokenizer, spec: Mapping, batch_size: int, managers: dict) -> dict:
    """Score ``model`` as it is in memory on one benchmark (resolved config entry)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(spec, managers)
    guard = contextlib.nullcontext("no code is executed")
    if spec["execute_code"]:
        # The config allows running the model's code (lm-eval's opt-in, and the flag HF's
        # code_eval metric checks); each completion runs in a child process off the network.
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")
        guard = offline_children()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    with guard as isolation:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=[spec["task"]],
            num_fewshot=spec["num_fewshot"],
            limit=spec["limit"],
            task_manager=manager,
            apply_chat_template=bool(spec["apply_chat_template"]),
            fewshot_as_multiturn=bool(spec["fewshot_as_multiturn"]),
            system_instruction=spec.get("system_instruction"),
            gen_kwargs=dict(spec["generation"]) if spec["generation"] else None,
            log_samples=True,
            bootstrap_iters=0,  # our intervals come from the samples (paired across models)
            confirm_run_unsafe_code=bool(spec["execute_code"]),
        )
    record = benchmark_record(results, spec, manager)
    if spec["execute_code"]:
        record["code_execution"] = {"network": isolation}
        log.info("%s: the model's code ran in child processes with: %s", spec["name"], isolation)
    asked = spec["num_fewshot"]
    shots = record["lm_eval"]["n_shot"]
    if asked is not None and any(int(n) != int(asked) for n in shots.values()):
        log.warning(
            "benchmarks.%s: num_fewshot %s asked, lm-eval used %s (a task at 0 shots keeps 0)", spec["name"], asked, shots
        )
    log.info("%s: %s = %.4f", spec["name"], record["metric"], record["score"])
    return record
