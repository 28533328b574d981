"""The code style is checked, not hoped for: ruff's lint rules and formatter (configured in
pyproject.toml) pass on src/, tests/, benchmarks/ and tools/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = ["src", "tests", "benchmarks", "tools"]


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (it comes with the dev extras: pip install -e '.[dev]')")
    return [exe]


@pytest.mark.parametrize("check", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(check):
    done = subprocess.run([*_ruff(), *check, *TREES], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_a_spec_parse_does_not_import_the_zoo_builder_or_the_theory():
    """Naming a model (parsing its spec) loads the family modules only: the zoo's builder and the
    theory come in when a planted model is built."""
    import subprocess
    import sys

    code = (
        "import sys; from sinder.backbones import parse_spec; parse_spec('planted:small'); parse_spec('timm:vit_small_patch14_dinov2');"
        "print(sorted(m for m in ('sinder.planted.model', 'sinder.theory', 'sinder.analyze', 'sinder.repair') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
