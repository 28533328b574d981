import os

# Before torch loads: idle OpenMP threads sleep instead of spinning, so the two test workers
# (`make test` runs pytest -n 2) and the CLI subprocesses they start do not slow each other.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    torch.set_num_threads(1)  # one core per worker; in-process numbers do not depend on it


@pytest.fixture(scope="session")
def planted():
    """The built-in planted-defect backbone (shared: tests must not modify it)."""
    from sinder.backbones import load_backbone

    return load_backbone("planted:small")


@pytest.fixture(scope="session")
def planted_directions(planted):
    from sinder.theory import defect_directions

    return defect_directions(planted)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
