"""`make` refuses, in one line and before pip starts, an install the disk cannot hold: a full disk
otherwise stops pip half-way with `OSError: [Errno 28]` and leaves a broken `.venv`."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "check_free_space.py"
GB = 1024**3


def _tool():
    spec = importlib.util.spec_from_file_location("check_free_space", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_disk_with_room_passes_silently(tmp_path):
    done = subprocess.run([sys.executable, str(TOOL), str(tmp_path), "--gb", "0", "--temp-gb", "0"], capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_disk_too_small_is_refused_in_one_line_that_says_where_and_how_much(tmp_path):
    free = shutil.disk_usage(tmp_path).free / GB
    done = subprocess.run([sys.executable, str(TOOL), str(tmp_path / ".venv"), "--gb", str(free + 100)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert str(tmp_path) in done.stderr and "GB free" in done.stderr and "Free some space" in done.stderr
    assert "the install needs about" in done.stderr


def test_folders_on_one_filesystem_add_up(tmp_path):
    tool = _tool()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    share = 0.6 * shutil.disk_usage(tmp_path).free / GB  # each fits alone, both together do not
    assert tool.shortfalls({str(tmp_path / "a"): share}) == []
    assert tool.shortfalls({str(tmp_path / "b"): share}) == []
    [line] = tool.shortfalls({str(tmp_path / "a"): share, str(tmp_path / "b"): share})
    assert f"{tmp_path / 'a'} and " in line and " have " in line


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_checks_the_disk_before_it_creates_the_environment(tmp_path):
    for name in ("Makefile", "pyproject.toml", "tools/check_free_space.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    free = shutil.disk_usage(tmp_path).free / GB
    done = subprocess.run(
        ["make", f"INSTALL_GB={free + 100:.0f}", f"PYTHON={sys.executable}", "test"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "sinder: not enough disk to install" in done.stderr, done.stderr
    assert not (tmp_path / ".venv").exists()  # refused before the environment was made
