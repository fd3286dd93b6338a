"""Raw tables of a dataset, from the Hugging Face hub or from files (local, or http(s)), through
``datasets.load_dataset`` either way (a hub id, or the csv/json/parquet builder with
``data_files``), so the code path users take on a cluster is the one the tests run on local
files here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from spectral_edit.errors import DataError

log = logging.getLogger(__name__)

# The schema's bound on n_train: fine-tuning tokenizes the whole training split in memory, and a
# split used whole (n_train unset) may not pass it either (5M rows took 7.8 GB in 12 steps).
MAX_TRAIN_EXAMPLES = 200_000

# Builder and reader options per file suffix.
FORMATS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}


def check_training_size(spec: Mapping, rows: int, name: str) -> None:
    """A split used whole (no n_train) may not pass the bound the schema puts on n_train."""
    if spec.get("n_train") is None and rows > MAX_TRAIN_EXAMPLES:
        raise DataError(
            f"datasets.{name}: the training split has {rows} rows and n_train is not set; fine-tuning tokenizes "
            f"the whole split in memory: set n_train (at most {MAX_TRAIN_EXAMPLES})"
        )


def file_format(path: str | Path, where: str) -> tuple[str, dict]:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{where}: unsupported file type {suffix!r} for {path} (csv, tsv, jsonl, json, parquet)")
    return FORMATS[suffix]


def local_path(spec: Mapping, which: str) -> Path | None:
    files = spec.get("files", {}) or {}
    return Path(files[which]) if files.get(which) else None


def is_url(spec: Mapping, which: str) -> bool:
    """A file given as an http(s) address: ``datasets`` downloads it (no offline check)."""
    value = str((spec.get("files", {}) or {}).get(which, ""))
    return value.startswith(("http://", "https://"))


def load_table(spec: Mapping, which: str, name: str = "dataset") -> pd.DataFrame | None:
    """The ``train`` or ``eval`` table of a hub or local dataset (None when not configured)."""
    import datasets

    where = f"datasets.{name}"
    options = dict(spec.get("read_options", {}) or {})
    if spec["source"] == "local":
        path = local_path(spec, which)
        if path is None:
            return None
        location = spec["files"][which] if is_url(spec, which) else str(path)
        if not is_url(spec, which) and not path.is_file():
            raise DataError(f"{where}.files.{which}: file not found: {path}")
        builder, defaults = file_format(path, f"{where}.files.{which}")
        try:
            table = datasets.load_dataset(builder, data_files={"data": location}, split="data", **{**defaults, **options})
        except Exception as error:  # datasets wraps the reader's error in its own
            _raise_if_undecodable(error, f"{where}.files.{which}", location, name)
            raise
    elif spec["source"] == "hub":
        hub = spec["hub"]
        split = hub.get(f"{which}_split")
        if split is None:
            return None
        log.info("loading %s (%s) split %s from the Hugging Face hub", hub["path"], hub.get("name"), split)
        table = datasets.load_dataset(hub["path"], hub.get("name"), split=split, revision=hub.get("revision"), **options)
    else:
        raise DataError(f"{where}.source: {spec['source']!r} has no tables")
    return table.to_pandas()


def _raise_if_undecodable(error: BaseException, where: str, location, name: str) -> None:
    """A file in another encoding than the reader's: one line naming the file and the key to set."""
    while error is not None and not isinstance(error, UnicodeDecodeError):
        error = error.__cause__ or error.__context__
    if isinstance(error, UnicodeDecodeError):
        raise DataError(
            f"{where}: {location} is not {error.encoding} text (byte {error.object[error.start]:#04x} at offset "
            f"{error.start}): set datasets.{name}.read_options.encoding to the file's encoding (e.g. latin-1)"
        ) from None


def peek_local(spec: Mapping, which: str, columns: list[str], name: str) -> pd.DataFrame | None:
    """The named columns of a local file, read with pandas: a cheap check before any job."""
    path = local_path(spec, which)
    if path is None or is_url(spec, which):
        return None
    where = f"datasets.{name}.files.{which}"
    if not path.is_file():
        raise DataError(f"{where}: file not found: {path}")
    builder, defaults = file_format(path, where)
    options = {**defaults, **(spec.get("read_options", {}) or {})}
    try:
        if builder == "parquet":
            frame = pd.read_parquet(path)
        elif builder == "json":
            frame = pd.read_json(path, lines=path.suffix.lower() == ".jsonl", encoding=options.get("encoding", "utf-8"))
        else:
            frame = pd.read_csv(
                path, sep=options.pop("delimiter", ","), **{k: v for k, v in options.items() if k in ("quoting", "encoding")}
            )
    except UnicodeDecodeError as error:
        _raise_if_undecodable(error, where, path, name)
        raise
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: no column {missing[0]!r} in {path.name} (it has: {', '.join(map(str, frame.columns))})")
    if frame.empty:  # a header-only file would otherwise fail inside the dataset job
        raise DataError(f"{where}: {path.name} has no rows")
    return frame[columns]
