"""The config's ``benchmarks`` section: lm-evaluation-harness tasks the cells are scored on.

A benchmark is an lm-eval task or group from its registry (``task: gsm8k``), one defined by task
YAMLs in a local directory (``include_path``), or one this project generates offline
(``source: synthetic_arithmetic | synthetic_antonyms``; spectral_edit.benchmarks.synthetic
writes its data and task YAML). Each has its few-shot count, chat-template choice, ``limit``,
generation settings and the metric that is its score.

Before any job runs (:func:`check_benchmarks`) every benchmark the grid names must be known to
lm-eval (or its YAML must load), and a task that executes generated code (lm-eval's
``unsafe_code``, e.g. HumanEval) must be allowed to by ``execute_code: true``. The same pass
returns each benchmark's definition digest (its YAML, the YAMLs it includes, the Python files its
``!function`` tags name, its member tasks, and lm-eval's version), a param of its cells: editing
a task's definition reruns exactly the cells scored on it.

lm-eval's registry index (about 14,700 names) takes about 9 s to build, so it is built once per
lm-eval version and kept under ``.snakemake/spectral-edit/``; an include path is indexed again
whenever one of its files changes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from spectral_edit.errors import ConfigError
from spectral_edit.layout import BENCHMARK_TASK_DIR

SYNTHETIC_SOURCES = ("synthetic_arithmetic", "synthetic_antonyms")
INDEX_DIR = Path(".snakemake") / "spectral-edit"


def lm_eval_version() -> str:
    try:
        return importlib.metadata.version("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("config: benchmarks: lm-evaluation-harness is not installed (setup.sh installs it)") from None


def synthetic_task_name(benchmark: str) -> str:
    """The lm-eval task name of a generated benchmark (an identifier lm-eval accepts)."""
    return "spectral_edit_" + re.sub(r"[^0-9A-Za-z_]", "_", benchmark)


def resolve_benchmark(config: Mapping, name: str) -> dict:
    """A benchmark's settings with its lm-eval task name and include path filled in."""
    benchmarks = config["benchmarks"]
    if name not in benchmarks:
        raise ConfigError(f"config: unknown benchmark {name!r} (defined under benchmarks: {', '.join(benchmarks) or 'none'})")
    spec = {"name": name, **benchmarks[name]}
    if spec["source"] in SYNTHETIC_SOURCES:
        spec["task"] = synthetic_task_name(name)
        spec["include_path"] = BENCHMARK_TASK_DIR.format(benchmark=name)
    else:
        spec.setdefault("task", name)
    return spec


def dataset_benchmarks(config: Mapping, dataset: str) -> tuple[list[str], list[str]]:
    """(target benchmarks, held-out benchmarks) of a grid dataset. ``heldout`` may also name
    prepared datasets (label-word held-out benchmarks); those are left out here."""
    spec = config["datasets"][dataset]
    names = config["benchmarks"]
    targets = list(spec.get("benchmarks") or [])
    heldout = [b for b in spec.get("heldout") or [] if b in names]
    return targets, heldout


def grid_benchmarks(config: Mapping) -> list[str]:
    """Every benchmark a grid dataset is scored on, in config order."""
    found: list[str] = []
    for dataset in config["grid"]["datasets"]:
        targets, heldout = dataset_benchmarks(config, dataset)
        found += targets + heldout
    return list(dict.fromkeys(found))


# --- lm-eval's task index, cached ------------------------------------------------------------


def _files_state(root: Path) -> list:
    return sorted([str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in root.rglob("*") if p.suffix in (".yaml", ".py"))


def _build_index(include_path: Path | None) -> dict:
    """{name: {kind, yaml, members, unsafe_code}} of lm-eval's registry (None) or of one include
    path. For an include path every YAML is also loaded the way lm-eval loads it to run it
    (includes followed, ``!function`` imported), so that a file that does not load is named
    here: lm-eval's own index skips such a file without a word."""
    import logging

    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml  # lm-eval's own loader (private; pinned version)

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if include_path is not None:
        for path in sorted(include_path.rglob("*.yaml")):
            try:
                load_yaml(path, resolve_func=True)
            except Exception as error:  # any failure: the task cannot be loaded
                raise ConfigError(
                    f"config: benchmarks: task YAML {path} does not load: {type(error).__name__}: {error}"
                ) from None
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
    else:
        manager = TaskManager()
    index = {}
    for name, entry in manager.task_index.items():
        cfg = entry.cfg or {}
        members = sorted(entry.tags) if entry.kind.name == "TAG" else [t for t in cfg.get("task", []) if isinstance(t, str)]
        index[name] = {
            "kind": entry.kind.name,
            "yaml": str(entry.yaml_path) if entry.yaml_path else None,
            "members": members if entry.kind.name in ("GROUP", "TAG") else [],
            "unsafe_code": bool(cfg.get("unsafe_code", False)),
        }
    return index


def task_index(include_path: str | None = None) -> dict:
    """lm-eval's index of the registry or of an include path, from the cache when it is current."""
    version = lm_eval_version()
    if include_path is None:
        key = {"lm_eval": version, "registry": True}
    else:
        root = Path(include_path)
        if not root.is_dir():
            raise ConfigError(f"config: benchmarks: include_path {include_path!r} is not a directory")
        key = {"lm_eval": version, "path": str(root.resolve()), "files": _files_state(root)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache = INDEX_DIR / f"lm-eval-index-{digest}.json"
    if cache.is_file():
        try:
            return json.loads(cache.read_text())
        except json.JSONDecodeError:
            pass
    index = _build_index(None if include_path is None else Path(include_path))
    INDEX_DIR.mkdir(parents=True, exist_ok=True)
    temporary = cache.with_suffix(f".{id(index)}.tmp")
    temporary.write_text(json.dumps(index))
    temporary.replace(cache)
    return index


# --- definition digests ---------------------------------------------------------------------


class _DataLoader(yaml.SafeLoader):
    """YAML with lm-eval's ``!function module.name`` tags read as text (for digests)."""


_DataLoader.add_constructor("!function", lambda loader, node: "!function " + loader.construct_scalar(node))


def _definition_files(yaml_path: Path, seen: set) -> None:
    """The YAML, the YAMLs it includes and the Python files its !function tags name."""
    yaml_path = yaml_path.resolve()
    if yaml_path in seen or not yaml_path.is_file():
        return
    seen.add(yaml_path)
    text = yaml_path.read_text()
    for module in re.findall(r"!function\s+([A-Za-z0-9_.]+)\.[A-Za-z0-9_]+", text):
        python = yaml_path.parent / (module.replace(".", "/") + ".py")
        if python.is_file():
            seen.add(python.resolve())
    try:
        cfg = yaml.load(text, Loader=_DataLoader) or {}  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError:
        return
    includes = cfg.get("include") if isinstance(cfg, dict) else None
    for include in includes if isinstance(includes, list) else [includes] if includes else []:
        path = Path(include)
        _definition_files(path if path.is_absolute() else yaml_path.parent / path, seen)


def definition_digest(task: str, index: Mapping) -> str:
    """SHA-256 of everything that defines ``task`` (and its member tasks) in ``index``."""
    seen_names: set = set()
    files: set = set()

    def visit(name: str) -> None:
        if name in seen_names or name not in index:
            return
        seen_names.add(name)
        entry = index[name]
        if entry["yaml"]:
            _definition_files(Path(entry["yaml"]), files)
        for member in entry["members"]:
            visit(member)

    visit(task)
    digest = hashlib.sha256(lm_eval_version().encode())
    for path in sorted(files):
        digest.update(str(path.name).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:20]


def _unsafe(task: str, index: Mapping, seen: set | None = None) -> bool:
    seen = set() if seen is None else seen
    if task in seen or task not in index:
        return False
    seen.add(task)
    entry = index[task]
    return entry["unsafe_code"] or any(_unsafe(member, index, seen) for member in entry["members"])


def check_benchmarks(config: Mapping) -> dict[str, str]:
    """Before any job: every benchmark the grid is scored on is defined and loadable; returns
    {benchmark: definition digest} (a rerun trigger of its cells)."""
    digests = {}
    for name in grid_benchmarks(config):  # (a name benchmarks does not define: config.check_config)
        spec = resolve_benchmark(config, name)
        where = f"config: benchmarks.{name}"
        if spec["source"] in SYNTHETIC_SOURCES:
            # Written by the workflow (rules/benchmarks.smk); its definition is its settings.
            digests[name] = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
            continue
        index = task_index(spec.get("include_path"))
        if spec["task"] not in index:
            place = f"include_path {spec['include_path']!r}" if spec.get("include_path") else f"lm-eval {lm_eval_version()}"
            close = [n for n in sorted(index) if n.startswith(spec["task"][:4])][:5]
            hint = f" (names beginning alike: {', '.join(close)})" if close else ""
            raise ConfigError(f"{where}.task: {spec['task']!r} is not a task or group of {place}{hint}")
        if _unsafe(spec["task"], index) and not spec["execute_code"]:
            raise ConfigError(
                f"{where}: task {spec['task']!r} executes the code the model writes; "
                "set execute_code: true to allow it (README: code execution)"
            )
        digests[name] = definition_digest(spec["task"], index)
    return digests
