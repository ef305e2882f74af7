"""Every layer test runs once per backend ("device:flavour", tests/conftest.py), cuda ones included."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _every_backend(backend):
    """Enter each backend for every test; a test that needs the device asks for `backend` too."""
    return backend
