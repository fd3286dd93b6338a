"""Registry of spectral edit methods.

A method maps the singular values S of one dW (descending, as the SVD returns them) to new
singular values S' of the same length; the edited update is U diag(S') V^T. Selection methods
(top-k, bottom-k, random-k) return S with the dropped entries set to zero; reweighting methods
may return any non-negative values.

Each method lives in its own module in this package and registers itself with ``@register``;
every module here is imported on first use, so adding a method is adding one file.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import pkgutil
from dataclasses import dataclass, field
import re
from pathlib import Path
from typing import Callable, Mapping, Tuple, Union

import torch

from ..errors import ConfigError


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


EditResult = Union[torch.Tensor, Tuple[torch.Tensor, Mapping[str, object]]]
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

    @property
    def source_digest(self) -> str:
        """SHA-256 (16 hex digits) of the method's own file: a param of its cells, so editing
        that file reruns this method's cells and no others (Snakemake's code trigger sees only
        the rule's script, which every method shares)."""
        path = inspect.getsourcefile(self.edit)
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]

    def resolve_params(self, given: Mapping[str, object], where: str) -> dict:
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"{where}: unknown parameter {unknown[0]!r} for method {self.name!r} "
                f"(known: {', '.join(sorted(self.defaults)) or 'none'})"
            )
        params = {**self.defaults, **given}
        if self.check is not None:
            try:
                self.check(params)
            except ValueError as error:
                raise ConfigError(f"{where}: {error}") from None
        return params


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
):
    """Decorator that registers an edit function under ``name``."""

    def decorate(function: EditFunction) -> EditFunction:
        if name in _REGISTRY:
            raise RuntimeError(f"spectral method {name!r} registered twice")
        text = summary or ((function.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[name] = SpectralMethod(
            name, function, uses_retention, dict(defaults or {}), text, tuple(needs), check
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
