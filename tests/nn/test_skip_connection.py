"""nn.SkipConnection: gradient checks of its three modes on every backend, the concatenation's
layout and state names, argument checks, and NumPy-only inference equal to the engine."""

from __future__ import annotations

import numpy as np
import pytest

from engine import deploy, nn, no_grad
from engine.checkpoint import save_checkpoint
from engine.errors import ArgumentError
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL, cpu_only
from tests.helpers import distinct, on_device


def _down_up(r, nd: int = 2, c: int = 2) -> nn.Sequential:
    """Pool by 2 then a transposed conv back to the input grid: a one-level U-Net body."""
    pool, up = (nn.MaxPool2d, nn.ConvTranspose2d) if nd == 2 else (nn.MaxPool3d, nn.ConvTranspose3d)
    return nn.Sequential({"pool": pool(2), "up": up(c, 3 if nd == 2 else c, 2, 2, rng=r)})


CASES = [  # (mode, dim, nd, input shape)
    ("cat", 1, 2, (2, 2, 4, 4)),
    ("cat", 1, 3, (1, 2, 4, 2, 4)),
    ("add", 1, 3, (1, 2, 2, 4, 4)),
    ("mul", 1, 3, (1, 2, 2, 2, 4)),
]


@pytest.mark.parametrize("mode,dim,nd,shape", CASES)
def test_skip_connection_grad(backend, rng, mode, dim, nd, shape):
    body = _down_up(rng, nd, shape[1]) if mode == "cat" else _down_up(rng, 3, shape[1])
    layer = nn.SkipConnection(body, dim=dim, mode=mode).astype(np.float64).to(backend.device)
    # distinct values: no ties inside a max-pool window within the difference step
    check_grad(
        layer,
        [distinct(rng, shape)],
        params=layer.named_parameters(),
        device=backend.device,
        **TOL["gradcheck"],
    )


def test_skip_connection_concatenates_input_first(backend, rng):
    body = _down_up(rng)
    layer = nn.SkipConnection(body).to(backend.device)
    x = on_device(rng.standard_normal((2, 2, 4, 6)).astype(np.float32), backend.device)
    y = layer(Tensor(x)).numpy()
    assert y.shape == (2, 5, 4, 6)
    np.testing.assert_array_equal(y[:, :2], Tensor(x).numpy())
    np.testing.assert_array_equal(y[:, 2:], body(Tensor(x)).numpy())


@cpu_only("state names, spec, argument checks and deploy are device-independent")
def test_skip_connection_names_spec_and_checks(rng):
    layer = nn.SkipConnection(_down_up(rng))
    assert [k for k, _ in layer.named_parameters()] == ["up.weight", "up.bias"]
    assert [name for name, _ in layer.path()] == ["pool", "up"]
    spec = layer.spec()
    assert spec["type"] == "SkipConnection" and spec["body"]["names"] == ["pool", "up"]
    assert (spec["dim"], spec["mode"]) == (1, "cat")
    with pytest.raises(ArgumentError, match="body must be an nn.Sequential"):
        nn.SkipConnection(nn.ReLU())
    with pytest.raises(ArgumentError, match="mode='max'"):
        nn.SkipConnection(nn.Sequential(nn.ReLU()), mode="max")
    odd = Tensor(rng.standard_normal((1, 2, 5, 4)).astype(np.float32))
    with pytest.raises(ArgumentError, match=r"maps \(1, 2, 5, 4\) to \(1, 3, 4, 4\)"):
        layer(odd)


@cpu_only("engine.deploy runs NumPy-only on the CPU")
@pytest.mark.parametrize("mode", ["cat", "add", "mul"])
def test_skip_connection_deploys(rng, tmp_path, mode):
    """Nested blocks (a U-Net's two levels for "cat") run NumPy-only as in the engine."""
    layers = {"conv": nn.Conv3d(2, 2, 3, padding=1, rng=rng)}
    if mode == "cat":
        layers["inner"] = nn.SkipConnection(_down_up(rng, 3))  # 2 + 2 channels
    outer = nn.SkipConnection(nn.Sequential(layers), mode=mode)
    channels = 6 if mode == "cat" else 2
    model = nn.Sequential(outer, nn.Conv3d(channels, 1, 1, rng=rng))
    path = save_checkpoint(tmp_path / "m.npz", model)
    x = rng.standard_normal((2, 2, 4, 4, 4)).astype(np.float32)
    with no_grad():
        expected = model(Tensor(x)).numpy()
    np.testing.assert_allclose(deploy.load(path)(x), expected, rtol=1e-5, atol=1e-5)
