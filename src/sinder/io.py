"""Atomic, non-clobbering file output shared by every command."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
import weakref
from pathlib import Path

from .errors import DiskFullError, OutputExistsError
from .interrupt import interrupts_held

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


class atomic_path:
    """``with atomic_path(path) as tmp``: a temporary path beside ``path``; on success it replaces
    ``path`` atomically with the permissions of a plain ``open`` (the umask), not mkstemp's 0600.
    A full disk is one line.

    An interrupt must not strand the temporary. SIGINT/SIGTERM are held while it is made (inside
    mkstemp, or in a generator's ``__enter__``, one was lost with its name), and a finaliser removes
    it when an interrupt lands before ``__exit__`` runs its first line (then ``__exit__`` never runs)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.target = Path(path)
        self.tmp: Path | None = None
        self._stranded: weakref.finalize | None = None

    def __enter__(self) -> Path:
        try:
            with interrupts_held():
                self.target.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=self.target.suffix or ".tmp", dir=self.target.parent)
                self.tmp = Path(name)
                self._stranded = weakref.finalize(self, self.tmp.unlink, missing_ok=True)
                os.close(fd)
        except BaseException as err:
            self._discard(err)
            raise
        return self.tmp

    def __exit__(self, typ, err, tb) -> bool:
        if err is None:
            try:
                os.chmod(self.tmp, 0o666 & ~current_umask())
                os.replace(self.tmp, self.target)
            except BaseException as failed:
                self._discard(failed)
                raise
            self._stranded.detach()
            return False
        self._discard(err)
        return False  # the body's own exception goes on

    def _discard(self, err: BaseException) -> None:
        """Remove the temporary; a full disk becomes one line."""
        if self._stranded is not None:
            with interrupts_held():  # a second Ctrl-C here must not strand it either
                self._stranded()
        if is_disk_full(err):
            raise disk_full_error(self.target) from None


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


def json_safe(obj):
    """NaN/inf -> None, recursively (summary.json is strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
