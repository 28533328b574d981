"""A fingerprint of a state dict that holds across CPUs, BLAS kernels and thread counts, and
still changes with any real change of the weights.

Each tensor is summarised, in float64, by its L2 norm and its inner products with a few fixed
±1 patterns (numpy's PCG64, the same everywhere). A float-noise difference δ moves each number by
at most ‖δ‖, about 4e-7·‖x‖ between two CPUs' float32 builds (measured: ATen's default and AVX2
kernels); the tolerance is TOL·‖x‖ with TOL = 1e-5. A real edit of relative size r moves the
projections by about r·‖x‖ each, so anything above ~1e-4 of a tensor's norm is caught.

Re-pin (after a deliberate change, or a torch/timm upgrade that changes timm's init), or check
this machine's builds against the pins whatever its versions (how far each member is, in units
of the tolerance):
    .venv/bin/python tests/helpers/fingerprint.py [--check]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

PATTERNS = 3
TOL = 1e-5
PINS = Path(__file__).resolve().parent.parent / "data" / "planted_fingerprints.json"


def _patterns(n: int) -> np.ndarray:
    return np.random.default_rng(12345 + n).choice([-1.0, 1.0], size=(PATTERNS, n))


def fingerprint(state: dict[str, torch.Tensor]) -> dict[str, dict]:
    out = {}
    for key, value in sorted(state.items()):
        x = value.detach().to(torch.float64).flatten().numpy()
        stats = [float(np.linalg.norm(x)), *(_patterns(x.size) @ x).tolist()]
        out[key] = {"shape": list(value.shape), "stats": [float(f"{v:.10g}") for v in stats]}
    return out


def _deviation(a: dict, b: dict) -> float:
    """Largest difference between two fingerprints of one tensor, as a fraction of its norm."""
    return max(abs(p - q) for p, q in zip(a["stats"], b["stats"])) / max(b["stats"][0], 1e-30)


def mismatches(got: dict[str, dict], pinned: dict[str, dict]) -> list[str]:
    """Where ``got`` differs from ``pinned`` by more than float noise, one line each (empty: same)."""
    bad = [f"{k}: missing" for k in pinned.keys() - got.keys()] + [f"{k}: new" for k in got.keys() - pinned.keys()]
    for key in sorted(pinned.keys() & got.keys()):
        a, b = got[key], pinned[key]
        if a["shape"] != b["shape"]:
            bad.append(f"{key}: shape {a['shape']} != {b['shape']}")
            continue
        if _deviation(a, b) > TOL:
            bad.append(f"{key}: off by {_deviation(a, b):.2e} of its norm (tolerance {TOL:.0e})")
    return bad


def worst_ratio(got: dict[str, dict], pinned: dict[str, dict]) -> float:
    """The largest deviation over all tensors, as a fraction of the tolerance (< 1: within it)."""
    return max(_deviation(got[k], b) for k, b in pinned.items()) / TOL


def read_pins() -> dict:
    return json.loads(PINS.read_text())


def _repin() -> None:
    import timm

    from sinder.planted import PRESETS, build_planted

    members = {name: fingerprint(build_planted(cfg)[0].state_dict()) for name, cfg in PRESETS.items()}
    versions = {"torch": torch.__version__.split("+")[0], "timm": timm.__version__}
    body = ",\n".join(
        f"{json.dumps(name)}: {{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in fp.items()) + "\n}"
        for name, fp in sorted(members.items())
    )
    head = json.dumps(versions)[1:-1]
    PINS.write_text("{" + head + ', "members": {\n' + body + "\n}}\n")  # one line per tensor
    print(f"pinned {len(members)} members under {versions}: {PINS}")


def _check() -> None:
    import timm

    from sinder.planted import PRESETS, build_planted

    pins = read_pins()
    print(
        f"here: torch {torch.__version__}, timm {timm.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}; pinned under torch {pins['torch']}, timm {pins['timm']}"
    )
    for name, cfg in PRESETS.items():
        got = fingerprint(build_planted(cfg)[0].state_dict())
        bad = mismatches(got, pins["members"][name])
        print(
            f"{name}: worst {worst_ratio(got, pins['members'][name]):.3f} of the tolerance, {len(bad)} tensors off"
            + (f" ({bad[0]})" if bad else "")
        )


if __name__ == "__main__":
    import sys

    _check() if sys.argv[1:] == ["--check"] else _repin()
