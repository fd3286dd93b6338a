"""A cell's edit as one record: built once per job from its rule's params, input and wildcards,
sent to the evaluation server as JSON, and read by the code that edits (spectral_edit.edit.apply)
and exports (spectral_edit.export.artifacts).

Standard library only: a cell job that goes through the evaluation server builds and sends the
record without importing torch.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields

from spectral_edit.layout import parse_retention

UNEDITED_PARAMS = ("finetuned", "base")
# What a cell's record shows of its edit (``CellEvaluator.run``), in this order; the files are
# where the edit came from on one machine, not what it is, and stay out of it.
SHOWN = ("method", "params", "retention", "seed", "unedited_params")


@dataclass(frozen=True, kw_only=True)
class EditSpec:
    """One cell's edit: W_base + U diag(S') V^T, S' from ``method`` with ``params`` at ``retention``.

    ``factors`` is the SVD cache, ``finetuned_weights`` the checkpoint dW is read from,
    ``base_weights`` W_base's file (None: the loaded base model's own), ``sensitivities`` the
    calibration file of a method that needs one. ``unedited_params`` says whether the tensors
    that are not decomposed take their fine-tuned or base values.
    """

    method: str  # a registered method (spectral_edit.edit.methods), not the grid's name for it
    params: dict = field(default_factory=dict, hash=False)
    retention: float | None = None
    seed: int = 0
    unedited_params: str = "finetuned"
    factors: str
    finetuned_weights: str
    sensitivities: str | None = None
    base_weights: str | None = None

    def __post_init__(self):
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"edit record: method must be a method's name, not {self.method!r}")
        if self.unedited_params not in UNEDITED_PARAMS:
            raise ValueError(f"edit record: unedited_params must be one of {UNEDITED_PARAMS}, not {self.unedited_params!r}")
        if self.retention is not None and (isinstance(self.retention, bool) or not isinstance(self.retention, int | float)):
            raise ValueError(f"edit record: retention must be a number or None, not {self.retention!r}")
        if not isinstance(self.params, Mapping):
            raise ValueError(f"edit record: params must be a mapping, not {self.params!r}")
        # A copy of its own, so that nothing the caller changes later changes the record.
        object.__setattr__(self, "params", copy.deepcopy(dict(self.params)))
        object.__setattr__(self, "seed", int(self.seed))
        for name in ("factors", "finetuned_weights", "sensitivities", "base_weights"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.fspath(value))

    @classmethod
    def from_job(cls, wildcards, inputs, params) -> EditSpec:
        """The edit of an edited cell's job (rules/evaluate.smk, rules/export.smk): method and
        switch from its params, files from its input, retention and seed from its wildcards."""
        return cls(
            method=params.method["name"],
            params=params.method["params"],
            retention=parse_retention(wildcards.retention),
            seed=int(wildcards.seed),
            unedited_params=params.unedited_params,
            factors=inputs.factors,
            finetuned_weights=inputs.finetuned_weights,
            sensitivities=inputs.get("sensitivities"),
        )

    def to_json(self) -> dict:
        """Every field as JSON types (what crosses the socket to the evaluation server)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> EditSpec:
        """The record of :meth:`to_json`'s dict; a missing file or an unknown key is an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"edit record: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"edit record: unknown field(s) {unknown}; known: {sorted(known)}")
        missing = [name for name in ("method", "factors", "finetuned_weights") if data.get(name) is None]
        if missing:
            raise ValueError(f"edit record: missing field(s) {missing}")
        return cls(**data)

    def shown(self) -> dict:
        """What a cell's record shows of its edit (the files left out)."""
        return {name: copy.deepcopy(getattr(self, name)) for name in SHOWN}


def as_edit_spec(edit: EditSpec | Mapping) -> EditSpec:
    """``edit`` as a record: a record as it is, a mapping (a request's JSON, or a caller's
    dict with the same keys) read by :meth:`EditSpec.from_json`."""
    return edit if isinstance(edit, EditSpec) else EditSpec.from_json(edit)
