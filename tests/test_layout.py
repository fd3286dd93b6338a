"""How the package is laid out: planning (the Snakefile and its config checks) imports only the
light modules, and no two modules import each other at module level."""

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "spectral_edit"

# What planning must not import: each costs seconds on every `snakemake` call, dry runs included,
# and a login node that plans a cluster run need not have them. torch is allowed: rules/common.smk
# asks it whether the machine has a CUDA device.
HEAVY = ("transformers", "datasets", "matplotlib")


def workflow_imports() -> str:
    """The module-level `spectral_edit` imports of the Snakefile and rules/*.smk, as Python."""
    statements = []
    for path in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        text = path.read_text()
        # A statement at column 0, continued inside parentheses when it has them.
        pattern = r"^(?:from spectral_edit[\w.]* import (?:\([^)]*\)|[^\n]*)|import spectral_edit[^\n]*)"
        statements += re.findall(pattern, text, flags=re.M)
    return "\n".join(statements)


PLANNING = """
import sys

from spectral_edit import layout
from spectral_edit.benchmarks.spec import check_benchmarks, dataset_benchmarks, resolve_benchmark
from spectral_edit.data.prompts import check_label_words
from spectral_edit.plan.config import (
    canonical, grid_cells, grid_finetunes, load_config, recipe_for_dataset, resolve_finetune, resolve_method,
)
from spectral_edit.plan.resources import rule_resources

{workflow_imports}

# What the Snakefile and rules/common.smk do while planning the default config.
config = load_config({config!r})  # validates it and runs check_config
for name, digest in check_benchmarks(config).items():
    resolve_benchmark(config, name)
check_label_words(config, lambda model: layout.BASE_MODEL_DIR.format(model=model))
config = canonical(config)
cells = list(grid_cells(config))
assert cells, "the default grid has no cells"
for name in config["grid"]["methods"]:
    method, params = resolve_method(config, name)
    method.source_digest
for model in config["grid"]["models"]:
    rule_resources("base_model", config["models"][model], config)
    for finetune in grid_finetunes(config):
        rule_resources("finetune", config["models"][model], config, resolve_finetune(config, finetune))
        for dataset in config["grid"]["datasets"]:
            dataset_benchmarks(config, dataset)
            rule_resources("finetune", config["models"][model], config, recipe_for_dataset(config, finetune, dataset))
print(sorted(name for name in {heavy!r} if name in sys.modules))
"""


def test_planning_imports_no_model_data_or_plotting_library(tmp_path):
    imports = workflow_imports()
    assert "spectral_edit.plan.config" in imports, "no spectral_edit import found in rules/common.smk"
    code = PLANNING.format(workflow_imports=imports, config=str(REPO / "config.yaml"), heavy=HEAVY)
    # In an empty directory: a checkout's materialised models would make check_label_words load
    # a tokenizer (that needs transformers, as it should).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", f"planning imported {result.stdout.strip()}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _module_level_imports(tree: ast.AST, module: str, is_package: bool):
    """The absolute names a module imports when it is imported: not inside functions (they run
    later) nor under `if TYPE_CHECKING:` (never at run time)."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack += node.orelse
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                # `from a import b` imports the module a.b when there is one, else a name of a.
                yield f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base
        stack += ast.iter_child_nodes(node)


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports at module level}."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for name in _module_level_imports(tree, module, path.name == "__init__.py"):
            # `import spectral_edit.a.b.c` where c is a name, not a module: the deepest module.
            while name.startswith("spectral_edit") and not _is_module(name):
                name = name.rpartition(".")[0]
            if name.startswith("spectral_edit") and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph as [a, b, ..., a], or None."""
    state, path = {}, []  # state: 1 while on the current path, 2 once every path from it is done

    def visit(module):
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_import_graph_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_imports_itself_through_others_at_module_level():
    graph = import_graph()
    assert "spectral_edit.plan.config" in graph and graph["spectral_edit.plan.config"], "no edges found"
    cycle = find_cycle(graph)
    assert cycle is None, "module-level import circle: " + " -> ".join(cycle)


def test_the_readme_layout_names_every_module_by_stage():
    """The README's layout section finds the room of every module: each subpackage is a line of
    its stage, and every module in it is named on that line's paragraph (a method and a figure are
    one file each behind a registry, named by their folder)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("\n## Layout\n") :]
    section = section.split("\n## ", 2)[1]  # up to the next section, if any
    stages = dict(re.findall(r"^(\w+/)\s+(.*?)(?=^\S|\Z)", section, flags=re.M | re.S))
    leaves = re.search(r"^shared leaves\s+(.*?)(?=^\S)", section, flags=re.M | re.S).group(1)
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if path.name == "__init__.py" and len(parts) > 1 and parts[-2] not in ("data",):
            continue  # a package's docstring; data/__init__ holds the prepared splits
        if parts[:2] in (("edit", "methods"), ("analysis", "figures")) and path.stem not in ("common",):
            if f"{parts[1]}/" not in stages.get(f"{parts[0]}/", ""):
                missing.append("/".join(parts[:2]) + "/")
            continue
        if len(parts) == 1:
            text = leaves
        else:
            text = stages.get(f"{parts[0]}/", "")
        if path.stem not in ("__init__",) and not re.search(rf"\b{path.stem}\b", text):
            missing.append("/".join(parts))
    assert not missing, f"README's layout section does not name: {', '.join(sorted(set(missing)))}"
