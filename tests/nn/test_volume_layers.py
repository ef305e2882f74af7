"""The 3-D pools, adaptive average pools and Upsample as layers: gradient checks, specs that rebuild
them, 3-D geometry, argument checks, and NumPy-only inference (engine.deploy) equal to the engine."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
from engine import deploy, nn, no_grad
from engine.checkpoint import save_checkpoint
from engine.errors import ArgumentError
from engine.gradcheck import check_grad
from engine.tensor import Tensor
from tests.conftest import TOL, cpu_only
from tests.helpers import distinct, on_device

LAYERS = [  # layer, input maker
    (nn.MaxPool3d(2), lambda r: distinct(r, (2, 2, 4, 4, 6))),
    (
        nn.MaxPool3d((3, 2, 3), stride=(2, 1, 2), padding=(1, 0, 1)),
        lambda r: distinct(r, (1, 2, 5, 4, 5)),
    ),
    (nn.AvgPool3d(2, stride=1), lambda r: r.standard_normal((1, 2, 3, 4, 5))),
    (nn.AdaptiveAvgPool2d(1), lambda r: r.standard_normal((2, 3, 5, 4))),
    (nn.AdaptiveAvgPool2d((3, 2)), lambda r: r.standard_normal((2, 2, 7, 5))),
    (nn.AdaptiveAvgPool3d((2, 1, 3)), lambda r: r.standard_normal((1, 2, 5, 4, 7))),
    (nn.Upsample(scale_factor=2), lambda r: r.standard_normal((1, 2, 3, 4))),
    (nn.Upsample(size=(5, 7), mode="bilinear"), lambda r: r.standard_normal((2, 1, 3, 4))),
    (
        nn.Upsample(scale_factor=(1.5, 2, 0.7), mode="trilinear", align_corners=True),
        lambda r: r.standard_normal((1, 2, 3, 4, 5)),
    ),
]


@pytest.mark.parametrize(
    "layer,make", LAYERS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else ""
)
def test_volume_layer_grad(backend, rng, layer, make):
    check_grad(layer, [make(rng)], device=backend.device, **TOL["gradcheck"])


@pytest.mark.parametrize(
    "layer,make", LAYERS, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else ""
)
def test_volume_layer_equals_its_function_and_rebuilds(backend, rng, layer, make):
    x = on_device(make(rng), backend.device)
    rebuilt = nn.from_spec(layer.spec())
    np.testing.assert_array_equal(rebuilt(x).numpy(), layer(x).numpy())
    assert rebuilt.spec() == layer.spec()


@cpu_only("specs and geometry are device-independent metadata")
def test_pool3d_geometry_has_three_axes():
    g = nn.MaxPool3d((3, 2, 3), stride=(2, 1, 2), padding=(1, 0, 1)).geometry()
    assert (g.kind, g.kernel_size, g.stride, g.padding) == ("pool", (3, 2, 3), (2, 1, 2), (1, 0, 1))
    # cell u is centred on s u - p + (k - 1) / 2, per axis
    assert g.centre_map() == ((2.0, 0.0), (1.0, 0.5), (2.0, 0.0))
    assert nn.AvgPool3d(2).spec() == {
        "type": "AvgPool3d",
        "kernel_size": [2, 2, 2],
        "stride": [2, 2, 2],
        "padding": [0, 0, 0],
    }
    for layer in (nn.AdaptiveAvgPool3d(1), nn.Upsample(size=4)):
        assert layer.geometry() is None


@cpu_only("argument checks happen before any array is touched")
def test_upsample_arguments_are_checked():
    with pytest.raises(ArgumentError, match="exactly one of size and scale_factor"):
        nn.Upsample()
    with pytest.raises(ArgumentError, match="exactly one of size and scale_factor"):
        nn.Upsample(size=4, scale_factor=2.0)
    with pytest.raises(ArgumentError, match="mode must be one of"):
        nn.Upsample(size=4, mode="area")
    with pytest.raises(ArgumentError, match="'trilinear' needs x 5-D"):
        nn.Upsample(size=4, mode="trilinear")(np.zeros((1, 1, 2, 2)))
    with pytest.raises(TypeError, match="output_size must be an int or a triple"):
        nn.AdaptiveAvgPool3d((2, 2))


@cpu_only("engine.deploy is NumPy-only: it runs on the CPU")
@pytest.mark.parametrize("volume", [False, True], ids=["2d", "3d"])
def test_deploy_runs_the_new_layers_as_the_engine_does(rng, tmp_path, volume):
    if volume:
        shape = (3, 2, 4, 6, 5)
        layers = [
            nn.Upsample(scale_factor=(1.5, 1, 2), mode="trilinear"),
            nn.MaxPool3d(2, padding=1),
            nn.AvgPool3d((1, 2, 2)),
            nn.Upsample(size=(4, 3, 3)),
            nn.AdaptiveAvgPool3d((1, 2, 1)),
        ]
    else:
        shape = (3, 2, 7, 6)
        layers = [
            nn.Conv2d(2, 3, 3, rng=rng),
            nn.Upsample(size=(8, 9), mode="bilinear", align_corners=True),
            nn.AdaptiveAvgPool2d((3, 2)),
        ]
    model = nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 if volume else 18, 4, rng=rng))
    x = rng.standard_normal(shape).astype(np.float32)
    with no_grad():
        expected = model(Tensor(x)).numpy()
    net = deploy.load(save_checkpoint(tmp_path / "model.npz", model))
    np.testing.assert_allclose(net(x), expected, rtol=1e-5, atol=1e-6)


@cpu_only("a property of the functional API, not of a kernel")
def test_global_average_pooling_is_the_spatial_mean(rng):
    x = rng.standard_normal((2, 3, 4, 5, 6))
    y = F.adaptive_avg_pool3d(x, 1).numpy()
    np.testing.assert_allclose(y, x.mean(axis=(2, 3, 4), keepdims=True), **TOL["loops64"])
