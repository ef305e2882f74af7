"""Layers: gradient checks of every layer's input and parameters, state_dict naming and loading."""

from __future__ import annotations

import numpy as np
import pytest

from engine import nn
from engine.gradcheck import check_grad
from tests.conftest import TOL, cpu_only
from tests.helpers import away_from_zero, distinct, on_device, to_host


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((1, 2), (0, 1))])
def test_conv2d_layer_grad(backend, rng, stride, padding):
    layer = nn.Conv2d(3, 4, kernel_size=(3, 2), stride=stride, padding=padding, rng=rng)
    layer.astype(np.float64).to(backend.device)
    check_grad(
        layer,
        [rng.standard_normal((2, 3, 7, 6))],
        params=layer.named_parameters(),
        device=backend.device,
        **TOL["gradcheck"],
    )


@pytest.mark.parametrize("bias", [True, False])
def test_linear_layer_grad(backend, rng, bias):
    layer = nn.Linear(5, 3, bias=bias, rng=rng).astype(np.float64).to(backend.device)
    check_grad(
        layer,
        [rng.standard_normal((4, 5))],
        params=layer.named_parameters(),
        device=backend.device,
        **TOL["gradcheck"],
    )
    assert nn.Dense is nn.Linear


@pytest.mark.parametrize(
    "layer,make",
    [
        (nn.MaxPool2d(2), lambda r: distinct(r, (2, 2, 4, 6))),
        (nn.MaxPool2d(3, stride=2, padding=1), lambda r: distinct(r, (1, 2, 5, 5))),
        (nn.AvgPool2d(2), lambda r: r.standard_normal((2, 2, 4, 6))),
        (nn.AvgPool2d(3, stride=2, padding=1), lambda r: r.standard_normal((1, 2, 5, 5))),
        (nn.Flatten(), lambda r: r.standard_normal((2, 3, 2, 2))),
        (nn.ReLU(), lambda r: away_from_zero(r, (3, 4))),
        (nn.Sigmoid(), lambda r: r.standard_normal((3, 4))),
        (nn.Tanh(), lambda r: r.standard_normal((3, 4))),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "",
)
def test_parameter_free_layer_grad(backend, rng, layer, make):
    check_grad(layer, [make(rng)], device=backend.device, **TOL["gradcheck"])


def test_dropout_layer_train_and_eval(backend):
    layer = nn.Dropout(0.5, rng=np.random.default_rng(1))
    x = on_device(np.ones((50, 50)), backend.device)
    assert (layer(x).numpy() == 0).any()
    layer.eval()
    np.testing.assert_array_equal(layer(x).numpy(), np.ones((50, 50)))


def test_sequential_grad_and_pytorch_names(backend, rng):
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1, rng=rng),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 3, rng=rng),
    ).astype(np.float64)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "4.weight", "4.bias"]
    x = distinct(rng, (2, 1, 6, 6), step=0.05)
    model.to(backend.device)
    check_grad(
        model, [x], params=model.named_parameters(), device=backend.device, **TOL["gradcheck"]
    )


@cpu_only("parameter naming only: no array math, nothing a device changes")
def test_nested_modules_and_lists_are_found(rng):
    class Net(nn.Module):
        def __init__(self):
            self.features = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng))
            self.heads = [nn.Linear(2, 2, rng=rng), nn.Linear(2, 1, bias=False, rng=rng)]

    names = [n for n, _ in Net().named_parameters()]
    assert names == [
        "features.0.weight",
        "features.0.bias",
        "heads.0.weight",
        "heads.0.bias",
        "heads.1.weight",
    ]


def test_train_eval_and_zero_grad(backend, rng):
    model = nn.Sequential(nn.Linear(3, 2, rng=rng), nn.Dropout(0.5, rng=rng)).to(backend.device)
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    model(on_device(np.ones((1, 3), dtype=np.float32), backend.device)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_load_state_dict_checks_names_and_shapes(backend, rng):
    model = nn.Sequential(nn.Linear(3, 2, rng=rng)).to(backend.device)
    state = model.state_dict()
    with pytest.raises(KeyError, match="missing.*0.bias"):
        model.load_state_dict({"0.weight": state["0.weight"]})
    with pytest.raises(ValueError, match="shape"):
        model.load_state_dict({"0.weight": np.zeros((2, 4)), "0.bias": state["0.bias"]})
    other = nn.Sequential(nn.Linear(3, 2, rng=np.random.default_rng(9))).to(backend.device)
    other.load_state_dict(state)  # host arrays, copied onto the parameters' device
    assert other[0].weight.device == backend.device
    np.testing.assert_array_equal(to_host(other[0].weight.data), to_host(model[0].weight.data))


@cpu_only("initialisers draw on the host from a NumPy Generator: nothing a device changes")
def test_initialisation_is_reproducible_and_scaled():
    a = nn.Conv2d(16, 32, 3, rng=np.random.default_rng(5))
    b = nn.Conv2d(16, 32, 3, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert a.weight.dtype == np.float32
    assert abs(a.weight.data.std() - np.sqrt(2 / (16 * 9))) < 0.01  # He: var = 2 / fan_in
    g = nn.Linear(100, 50, rng=np.random.default_rng(5), init="glorot")
    assert np.abs(g.weight.data).max() <= np.sqrt(6 / 150)
