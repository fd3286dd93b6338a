"""Registry of spectral edit methods.

A method maps the singular values S of one dW (descending, as the SVD returns them) to new
singular values S' of the same length; the edited update is U diag(S') V^T. Selection methods
(top-k, bottom-k, random-k) return S with the dropped entries set to zero; reweighting methods
may return any non-negative values.

Each method lives in its own module in this package and registers itself with ``@register``;
every module here is imported on first use, so adding a method is adding one file.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import inspect
import math
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spectral_edit.errors import ConfigError


@dataclass(frozen=True)
class MatrixContext:
    """What a method may know about the matrix it edits, besides its singular values."""

    name: str  # parameter name in the checkpoint, e.g. model.layers.3.mlp.down_proj.weight
    shape: tuple[int, int]
    retention: float | None  # None for methods without a retention
    seed: int  # the cell's seed, for methods that draw random numbers
    params: Mapping[str, object] = field(default_factory=dict)
    numerical_rank: int | None = None  # components above fp32 rounding noise (a LoRA update: r)
    num_layers: int = 0  # decoder layers of the model, for layer-dependent methods
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)  # e.g. calibration sensitivities

    @property
    def layer(self) -> int | None:
        return layer_index(self.name)

    @property
    def module(self) -> str:
        """The module's own name, e.g. 'down_proj' (the part before '.weight')."""
        parts = self.name.split(".")
        return parts[-2] if len(parts) >= 2 and parts[-1] == "weight" else parts[-1]

    @property
    def rank(self) -> int:
        return int(self.numerical_rank) if self.numerical_rank is not None else min(self.shape)


EditResult = torch.Tensor | tuple[torch.Tensor, Mapping[str, object]]
EditFunction = Callable[[torch.Tensor, MatrixContext], EditResult]


@dataclass(frozen=True)
class SpectralMethod:
    """A registered method. ``edit`` returns S' or (S', a record of what it did to the matrix)."""

    name: str
    edit: EditFunction
    uses_retention: bool
    defaults: Mapping[str, object]
    summary: str
    needs: tuple[str, ...] = ()  # extra inputs, e.g. ("sensitivities",)
    check: Callable[[Mapping[str, object]], None] | None = None  # raises ValueError on bad params
    paper: str = ""  # where the method comes from, as the README's method table cites it
    param_types: Mapping[str, tuple[type, ...]] = field(default_factory=dict)  # where the default's type is not the rule

    @property
    def source_digest(self) -> str:
        """SHA-256 (16 hex digits) of the method's file and every module of this package it
        imports, directly or through others (e.g. methods/__init__.py's kept_count,
        random_matrix.py): a param of its cells, so editing any of them reruns the cells of
        the methods that use it and no others (Snakemake's code trigger sees only the rule's
        script, which every method shares)."""
        return _sources_digest(Path(inspect.getsourcefile(self.edit)), _PACKAGE_ROOT)

    def resolve_params(self, given: Mapping[str, object], where: str) -> dict:
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"{where}: unknown parameter {unknown[0]!r} for method {self.name!r} "
                f"(known: {', '.join(sorted(self.defaults)) or 'none'})"
            )
        for key, value in sorted(given.items()):
            problem = _type_problem(value, self.param_types.get(key) or _types_of(self.defaults[key]))
            if problem:
                raise ConfigError(f"{where}.{key}: {value!r} is not {problem} (method {self.name!r})")
        params = {**self.defaults, **given}
        if self.check is not None:
            try:
                self.check(params)
            except ValueError as error:
                raise ConfigError(f"{where}: {error}") from None
        return params


def _types_of(default: object) -> tuple[type, ...]:
    """The types a parameter takes: its default's (an int default takes ints, a float one any
    number); a None default says nothing (the method's check decides)."""
    if default is None:
        return ()
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, float):
        return (int, float)
    return (type(default),)


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list", type(None): "null"}


def _type_problem(value: object, types: tuple[type, ...]) -> str | None:
    """What ``value`` should have been, or None when it is one of ``types`` (bool is no number)."""
    if not types:
        return None
    if isinstance(value, bool) and bool not in types:
        pass
    elif isinstance(value, types):
        return None
    names = [_TYPE_NAMES.get(t, t.__name__) for t in types if not (t is int and float in types)]
    return " or ".join(names)


_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # spectral_edit/


def _module_file(parts: list[str]) -> Path | None:
    """The file of module spectral_edit.<parts> (a package's __init__.py), if it exists."""
    base = _PACKAGE_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def package_import_closure(path: Path) -> list[Path]:
    """``path`` and every module of this package it imports, transitively, sorted.

    Read from the import statements (relative ones and ``spectral_edit.``), not by importing:
    what a file imports is what it can call. ``from . import name`` counts the package's
    __init__ and, where ``name`` is a submodule, that module too.
    """
    seen: set[Path] = set()
    pending = [path.resolve()]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        package = list(current.relative_to(_PACKAGE_ROOT).parent.parts)
        for node in ast.walk(ast.parse(current.read_text())):
            targets: list[list[str]] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                    module = anchor + (node.module.split(".") if node.module else [])
                elif node.module and node.module.split(".")[0] == _PACKAGE_ROOT.name:
                    module = node.module.split(".")[1:]
                else:
                    continue
                targets.append(module)
                targets += [module + [alias.name] for alias in node.names]
            elif isinstance(node, ast.Import):
                targets += [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == _PACKAGE_ROOT.name]
            for parts in targets:
                found = _module_file(parts)
                if found is not None and found not in seen:
                    pending.append(found)
    return sorted(seen)


@functools.cache
def _sources_digest(path: Path, root: Path) -> str:
    # Once per file and process: planning a large grid asks for it for every cell.
    digest = hashlib.sha256()
    for source in package_import_closure(path):
        digest.update(source.relative_to(root).as_posix().encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


_REGISTRY: dict[str, SpectralMethod] = {}
_loaded = False


def register(
    name: str,
    *,
    uses_retention: bool,
    defaults: Mapping[str, object] | None = None,
    needs: tuple[str, ...] = (),
    summary: str | None = None,
    check: Callable[[Mapping[str, object]], None] | None = None,
    paper: str,
    param_types: Mapping[str, tuple[type, ...]] | None = None,
):
    """Decorator that registers an edit function under ``name``; ``paper`` cites its source
    (the README's method table must agree: tests/test_methods.py)."""

    def decorate(function: EditFunction) -> EditFunction:
        if name in _REGISTRY:
            raise RuntimeError(f"spectral method {name!r} registered twice")
        text = summary or ((function.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[name] = SpectralMethod(
            name, function, uses_retention, dict(defaults or {}), text, tuple(needs), check, paper, dict(param_types or {})
        )
        return function

    return decorate


def _load_all() -> None:
    global _loaded
    if not _loaded:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _loaded = True


def available_methods() -> dict[str, SpectralMethod]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> SpectralMethod:
    methods = available_methods()
    if name not in methods:
        raise ConfigError(f"unknown spectral method {name!r} (known: {', '.join(methods)})")
    return methods[name]


def kept_count(rank: int, retention: float) -> int:
    """k = ceil(rho * r), at least 1 and at most r.

    The product is rounded to 9 decimals first so that binary floating point does not push
    an exact product over an integer (0.7 * 10 = 7.000000000000001 would otherwise give 8).
    """
    if not 0 < retention <= 1:
        raise ConfigError(f"retention {retention} is outside (0, 1]")
    return max(1, min(rank, math.ceil(round(retention * rank, 9))))


def keep_only(singular_values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Singular values with every entry outside ``indices`` set to zero."""
    kept = torch.zeros_like(singular_values)
    kept[indices] = singular_values[indices]
    return kept


_LAYER = re.compile(r"\.layers?\.(\d+)\.|\.h\.(\d+)\.|\.blocks?\.(\d+)\.")


def layer_index(name: str) -> int | None:
    """The decoder layer a parameter belongs to, from its name (None for embeddings, head)."""
    match = _LAYER.search(name)
    return int(next(g for g in match.groups() if g is not None)) if match else None


def split_result(result: EditResult) -> tuple[torch.Tensor, dict]:
    if isinstance(result, tuple):
        values, record = result
        return values, dict(record)
    return result, {}
