"""Atomic, non-clobbering file output shared by every command."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix or ".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def check_output_dir(out: str | os.PathLike, marker: str, overwrite: bool, hint: str = "--overwrite") -> Path:
    """Refuse (creating nothing) when ``out`` is a file, or ``out/marker`` exists and ``overwrite`` is False."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; choose another --out")
    if (out / marker).exists() and not overwrite:
        raise OutputExistsError(f"{out} already holds {marker}; pass {hint} to replace it or choose another --out")
    return out


def prepare_output_dir(out: str | os.PathLike, marker: str, overwrite: bool, hint: str = "--overwrite") -> Path:
    """Create ``out``; refuse when ``out/marker`` already exists and ``overwrite`` is False."""
    out = check_output_dir(out, marker, overwrite, hint)
    out.mkdir(parents=True, exist_ok=True)
    return out
