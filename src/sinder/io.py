"""Atomic, non-clobbering file output shared by every command."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import DiskFullError, OutputExistsError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def current_umask() -> int:
    try:  # Linux: read it without changing it (os.umask would race with other threads' writes)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC/EDQUOT, whether raised as OSError or wrapped by a writer (safetensors' ``IoError``)."""
    if isinstance(err, OSError) and err.errno in _NO_SPACE:
        return True
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text


def disk_full_error(target: Path) -> DiskFullError:
    try:
        free = f"{shutil.disk_usage(target.parent).free / 2**20:.0f} MB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(f"no space left on device while writing {target} ({free}); free some space or choose another --out, then rerun")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically with the
    permissions of a plain ``open`` (the umask), not mkstemp's 0600. A full disk is one line."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix or ".tmp", dir=target.parent)
        os.close(fd)
    except OSError as err:
        raise (disk_full_error(target) if is_disk_full(err) else err) from None
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(err):
            raise disk_full_error(target) from None
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
