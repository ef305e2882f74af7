import pytest


@pytest.fixture(autouse=True)
def _every_flavour(flavour):
    """Every op test runs on every CPU kernel flavour."""
    return flavour
