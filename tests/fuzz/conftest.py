"""The long fuzz tier (marker fuzz_long) runs only when asked for: `pytest -m fuzz_long` or
FUZZ_LONG=1; `make test` and any other -m expression skip it."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    expr = config.getoption("-m") or ""
    if ("fuzz_long" in expr and "not fuzz_long" not in expr) or os.environ.get("FUZZ_LONG") == "1":
        return
    skip = pytest.mark.skip(reason="long fuzz tier: run with pytest -m fuzz_long")
    for item in items:
        if "fuzz_long" in item.keywords:
            item.add_marker(skip)
