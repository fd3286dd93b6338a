"""Registry of spectral edit methods.

A method maps the singular values S of one dW (descending, as the SVD returns them) to new
singular values S' of the same length; the edited update is U diag(S') V^T. Selection methods
(top-k, bottom-k, random-k) return S with the dropped entries set to zero; reweighting methods
may return any non-negative values.

Each method lives in its own module in this package and registers itself with ``@register``;
every module here is imported on first use, so adding a method is adding one file.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Mapping

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


EditFunction = Callable[[torch.Tensor, MatrixContext], torch.Tensor]


@dataclass(frozen=True)
class SpectralMethod:
    name: str
    edit: EditFunction
    uses_retention: bool
    defaults: Mapping[str, object]
    summary: str

    def resolve_params(self, given: Mapping[str, object], where: str) -> dict:
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ConfigError(
                f"{where}: unknown parameter {unknown[0]!r} for method {self.name!r} "
                f"(known: {', '.join(sorted(self.defaults)) or 'none'})"
            )
        return {**self.defaults, **given}


_REGISTRY: dict[str, SpectralMethod] = {}
_loaded = False


def register(name: str, *, uses_retention: bool, defaults: Mapping[str, object] | None = None):
    """Decorator that registers an edit function under ``name``."""

    def decorate(function: EditFunction) -> EditFunction:
        if name in _REGISTRY:
            raise RuntimeError(f"spectral method {name!r} registered twice")
        summary = (function.__doc__ or "").strip().splitlines()[0] if function.__doc__ else ""
        _REGISTRY[name] = SpectralMethod(name, function, uses_retention, dict(defaults or {}), summary)
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
