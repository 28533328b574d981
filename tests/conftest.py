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
def photo_dir(tmp_path_factory):
    """A folder of two real photos (chelsea, coffee) as JPEG files, for the command line."""
    from helpers.photos import write_photos

    return write_photos(tmp_path_factory.mktemp("photos"), ("chelsea", "coffee"))


@pytest.fixture(scope="session")
def planted_directions(planted):
    from sinder.theory import defect_directions

    return defect_directions(planted)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (restored after): tiny tensors on a shared 2-core machine
    gain nothing from OpenMP threads, which would only spin against the other worker (measured:
    the README's python example 94 s against 25 s, evaluate's probe training 47 s against 0.7 s).
    Modules take it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    from sinder.runtime import one_thread as single

    with single():
        yield


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
