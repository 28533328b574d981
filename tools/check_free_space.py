"""Refuse to start an install that the disk cannot hold, in one line, before pip fills it.

`make` runs this with the system interpreter before it builds `.venv`: torch 2.14.1 with its CUDA
libraries takes 5.6 GB there, and a full disk otherwise ends pip half-way with `Errno 28`.
Standard library only, because it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

GB = 1024**3


def shortfalls(needs: dict[str, float]) -> list[str]:
    """One line per filesystem that lacks the GB asked of it (folders on one filesystem add up)."""
    by_device: dict[int, tuple[list[str], float]] = {}
    for folder, gb in needs.items():
        device = os.stat(folder).st_dev
        folders, total = by_device.get(device, ([], 0.0))
        by_device[device] = (folders + [folder], total + gb)
    lines = []
    for folders, total in by_device.values():
        free = shutil.disk_usage(folders[0]).free / GB
        if free < total:
            where = " and ".join(os.path.abspath(f) for f in folders)
            verb = "has" if len(folders) == 1 else "have"
            lines.append(f"{where} {verb} {free:.1f} GB free; the install needs about {total:.1f} GB there")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="where the virtual environment goes")
    parser.add_argument("--gb", type=float, required=True, help="GB the environment takes")
    parser.add_argument("--temp-gb", type=float, default=1.0, help="GB pip unpacks into the temporary folder")
    args = parser.parse_args(argv)
    folder = args.folder if os.path.isdir(args.folder) else os.path.dirname(os.path.abspath(args.folder))
    lines = shortfalls({folder: args.gb, tempfile.gettempdir(): args.temp_gb})
    if lines:
        print(f"sinder: not enough disk to install: {'; '.join(lines)}. Free some space and run make again.", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
