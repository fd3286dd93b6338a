"""Atomic output writing: a reader never sees a half-written file under its final name.

Each writer writes to a temporary file in the destination directory and renames it into
place (rename is atomic within one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates the file 0600; an output gets what the umask gives any new file, so that
    # collaborators on a shared file system can read results.
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    current = os.umask(0)  # the only portable way to read it is to set it
    os.umask(current)
    return current


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


@contextlib.contextmanager
def atomic_directory_files(final_dir: str | os.PathLike, last: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a scratch directory; on success move each file it holds into ``final_dir``.

    Files named in ``last`` are moved after all others, so that the file the workflow treats
    as the sign of completion (e.g. ``model.safetensors``) appears only when the rest is there.
    """
    final_dir = Path(final_dir)
    final_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=final_dir))
    try:
        yield scratch
        names = sorted(p.name for p in scratch.iterdir())
        ordered = [n for n in names if n not in last] + [n for n in last if n in names]
        for name in ordered:
            os.replace(scratch / name, final_dir / name)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a scratch directory beside ``final_dir``; on success rename it to ``final_dir``.

    For outputs that are whole directories (an exported model): the directory appears under its
    name complete or not at all. An existing ``final_dir`` is replaced.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.incomplete-", dir=final_dir.parent))
    os.chmod(scratch, 0o777 & ~_umask())  # mkdtemp makes it 0700
    try:
        yield scratch
        # Libraries write some files 0600 (safetensors); an output gets what the umask gives.
        for path in scratch.rglob("*"):
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(scratch, final_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
