import pytest
import torch


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
