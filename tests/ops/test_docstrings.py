"""Every Function in engine/ops has a docstring; its backward opens with a derivative comment."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import engine.ops
from engine.function import Function


def _functions() -> list[type[Function]]:
    """The Function subclasses defined (not merely imported) in the modules of engine.ops."""
    found = []
    for info in pkgutil.iter_modules(engine.ops.__path__):
        module = importlib.import_module(f"engine.ops.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Function) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


FUNCTIONS = _functions()


def test_functions_found():
    # guards the walk itself: an empty list would make the tests below pass vacuously
    names = {fn.__name__ for fn in FUNCTIONS}
    assert {"AddFn", "Conv2dFn", "MaxPool2dFn", "SoftmaxCrossEntropyFn"} <= names, names


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda fn: fn.__name__)
def test_function_has_docstring(fn):
    doc = fn.__dict__.get("__doc__")  # its own docstring, not Function's
    assert doc and doc.strip(), f"{fn.__module__}.{fn.__name__} has no docstring"


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda fn: fn.__name__)
def test_backward_opens_with_derivative_comment(fn):
    assert "backward" in fn.__dict__, f"{fn.__name__} does not define its own backward"
    lines = inspect.getsource(fn.backward).splitlines()
    body = [line.strip() for line in lines[1:] if line.strip()]  # lines[0] is the def
    assert body and body[0].startswith("#"), (
        f"{fn.__module__}.{fn.__name__}.backward should open with the derivative as a comment, "
        f"got {body[0] if body else 'nothing'!r}"
    )
