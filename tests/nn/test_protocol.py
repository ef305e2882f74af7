"""The layer protocol: every LAYERS entry's spec is JSON-safe and rebuilds the same layer, geometry
answers the spatial questions, and Sequential's fusion follows the FUSIONS rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

import engine.functional as F
import models
from engine import Tensor, nn
from engine.errors import ArgumentError
from tests.conftest import cpu_only
from tests.helpers import distinct

# One example per LAYERS entry, with non-default arguments; a layer added to LAYERS without an
# example here fails test_every_layer_has_an_example.
EXAMPLES = {
    "Linear": lambda r: nn.Linear(5, 3, bias=False, rng=r),
    "Conv2d": lambda r: nn.Conv2d(2, 4, (3, 2), stride=(2, 1), padding=(1, 0), rng=r),
    "Conv3d": lambda r: nn.Conv3d(2, 3, (3, 2, 1), stride=(1, 2, 1), padding=(1, 0, 2), rng=r),
    "ConvTranspose2d": lambda r: nn.ConvTranspose2d(4, 2, 3, 2, 1, output_padding=1, rng=r),
    "ConvTranspose3d": lambda r: nn.ConvTranspose3d(
        3, 2, (2, 3, 3), stride=(2, 1, 2), output_padding=(1, 0, 0), bias=False, rng=r
    ),
    "MaxPool2d": lambda r: nn.MaxPool2d(3, stride=2, padding=1),
    "AvgPool2d": lambda r: nn.AvgPool2d((2, 3)),
    "Flatten": lambda r: nn.Flatten(),
    "ReLU": lambda r: nn.ReLU(),
    "Sigmoid": lambda r: nn.Sigmoid(),
    "Tanh": lambda r: nn.Tanh(),
    "Dropout": lambda r: nn.Dropout(0.25, rng=r),
    "Sequential": lambda r: nn.Sequential(nn.Conv2d(1, 2, 3, rng=r), nn.Sequential(nn.ReLU())),
    "MaxPool3d": lambda r: nn.MaxPool3d((3, 2, 3), stride=(2, 1, 2), padding=(1, 0, 1)),
    "AvgPool3d": lambda r: nn.AvgPool3d(2, stride=1),
    "AdaptiveAvgPool3d": lambda r: nn.AdaptiveAvgPool3d(1),
    "Upsample": lambda r: nn.Upsample(scale_factor=(2.0, 1.5), mode="bilinear", align_corners=True),
    "BatchNorm1d": lambda r: nn.BatchNorm1d(4, eps=1e-3, momentum=None),
    "BatchNorm2d": lambda r: nn.BatchNorm2d(3, momentum=0.2, affine=False),
    "BatchNorm3d": lambda r: nn.BatchNorm3d(2, track_running_stats=False),
    "InstanceNorm2d": lambda r: nn.InstanceNorm2d(3, affine=True),
    "InstanceNorm3d": lambda r: nn.InstanceNorm3d(2, track_running_stats=True),
    "GroupNorm": lambda r: nn.GroupNorm(2, 4, eps=1e-4, affine=False),
    "LayerNorm": lambda r: nn.LayerNorm((3, 4), elementwise_affine=True, bias=False),
    "LeakyReLU": lambda r: nn.LeakyReLU(0.2),
    "GELU": lambda r: nn.GELU(),
    "Identity": lambda r: nn.Identity(),
    "AdaptiveAvgPool2d": lambda r: nn.AdaptiveAvgPool2d((1, 1)),
    "Residual": lambda r: nn.Residual(
        nn.Sequential({"conv1": nn.Conv2d(2, 3, 3, padding=1, rng=r), "bn1": nn.BatchNorm2d(3)}),
        nn.Sequential(nn.Conv2d(2, 3, 1, rng=r), nn.BatchNorm2d(3)),
        nn.ReLU(),
    ),
    "SkipConnection": lambda r: nn.SkipConnection(
        nn.Sequential({"pool": nn.MaxPool2d(2), "up": nn.ConvTranspose2d(2, 3, 2, 2, rng=r)})
    ),
}


@cpu_only("specs, geometry and fusion rules are device-independent metadata")
def test_every_layer_has_an_example():
    assert sorted(EXAMPLES) == sorted(nn.LAYERS)


@cpu_only("specs, geometry and fusion rules are device-independent metadata")
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_spec_round_trips_through_json(rng, name):
    layer = EXAMPLES[name](rng)
    spec = layer.spec()
    assert spec["type"] == name
    assert json.loads(json.dumps(spec)) == spec  # JSON-safe: no tuples, no NumPy scalars
    rebuilt = nn.from_spec(json.loads(json.dumps(spec)))
    assert type(rebuilt) is type(layer) and rebuilt.spec() == spec
    assert [(k, p.shape) for k, p in rebuilt.named_parameters()] == [
        (k, p.shape) for k, p in layer.named_parameters()
    ]


@cpu_only("specs, geometry and fusion rules are device-independent metadata")
def test_conv2d_spec_lists_its_constructor_arguments(rng):
    spec = EXAMPLES["Conv2d"](rng).spec()
    assert spec == {
        "type": "Conv2d",
        "in_channels": 2,
        "out_channels": 4,
        "kernel_size": [3, 2],
        "stride": [2, 1],
        "padding": [1, 0],
        "bias": True,
    }
    assert nn.MaxPool2d(2).spec() == {
        "type": "MaxPool2d",
        "kernel_size": [2, 2],
        "stride": [2, 2],
        "padding": [0, 0],
    }


@cpu_only("specs, geometry and fusion rules are device-independent metadata")
@pytest.mark.parametrize("name", models.names("classification"))
def test_models_rebuilt_from_spec_compute_the_same(rng, name):
    model = models.get(name, num_classes=3, rng=np.random.default_rng(0))
    rebuilt = nn.from_spec(model.spec())
    rebuilt.load_state_dict(model.state_dict())
    x = Tensor(rng.standard_normal((2, 1, 28, 28)).astype(np.float32))
    np.testing.assert_array_equal(rebuilt(x).data, model(x).data)


@cpu_only("specs, geometry and fusion rules are device-independent metadata")
def test_from_spec_rejects_unknown_types_and_arguments():
    with pytest.raises(ArgumentError, match="unknown layer type 'Conv9d'.*Conv2d"):
        nn.from_spec({"type": "Conv9d"})
    with pytest.raises(ArgumentError, match="unknown layer type 'Nope'"):
        nn.from_spec({"type": "Sequential", "layers": [{"type": "ReLU"}, {"type": "Nope"}]})
    with pytest.raises(ArgumentError, match="Linear: cannot build"):
        nn.from_spec({"type": "Linear", "in_features": 2, "out_featurez": 3})


@cpu_only("specs, geometry and fusion rules are device-independent metadata")
def test_modules_outside_layers_have_no_spec(rng):
    class Net(nn.Sequential):  # overrides forward: not a plain Sequential, cannot be rebuilt as one
        def forward(self, x):
            return super().forward(x) * 2

    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ArgumentError, match="Net has no spec"):
        Net(nn.ReLU()).spec()
    with pytest.raises(ArgumentError, match="Custom has no spec"):
        nn.Sequential(nn.ReLU(), Custom()).spec()


@cpu_only("specs, geometry and fusion rules are device-independent metadata")
def test_geometry_of_spatial_layers(rng):
    conv = EXAMPLES["Conv2d"](rng).geometry()
    assert (conv.kind, conv.kernel_size, conv.stride, conv.padding) == (
        "conv",
        (3, 2),
        (2, 1),
        (1, 0),
    )
    # cell u of the conv output is centred on s u - p + (k - 1) / 2
    assert conv.centre_map() == ((2.0, 0.0), (1.0, 0.5))
    pool = nn.MaxPool2d(3, padding=1).geometry()
    assert (pool.kind, pool.stride, pool.padding) == ("pool", (3, 3), (1, 1))
    assert nn.AvgPool2d(2).geometry().centre_map() == ((2.0, 0.5), (2.0, 0.5))
    for name in ("Linear", "Flatten", "ReLU", "Dropout", "Sequential"):
        assert EXAMPLES[name](rng).geometry() is None, name


@cpu_only("specs, geometry and fusion rules are device-independent metadata")
def test_the_conv_relu_pool_rule_is_registered():
    patterns = [rule.pattern for rule in nn.FUSIONS]
    assert (nn.Conv2d, nn.ReLU, nn.MaxPool2d) in patterns


@cpu_only("specs, geometry and fusion rules are device-independent metadata")
def test_a_registered_fusion_rule_runs_and_matches_exact_classes(rng, monkeypatch):
    """A new rule (here Linear -> Tanh, run by a counting stand-in for a fused op) is used by
    Sequential for exact class runs only, and equals the layers' composition."""
    calls = []

    def linear_tanh(layers, x):
        calls.append(len(layers))
        linear, _ = layers
        return F.tanh(F.linear(x, linear.weight, linear.bias))

    monkeypatch.setattr(nn, "FUSIONS", [*nn.FUSIONS, nn.Fusion((nn.Linear, nn.Tanh), linear_tanh)])

    class MyTanh(nn.Tanh):
        pass

    model = nn.Sequential(
        nn.Linear(4, 3, rng=rng), nn.Tanh(), nn.Linear(3, 3, rng=rng), MyTanh()
    ).astype(np.float64)
    x = distinct(rng, (2, 4))
    fused = model(x).data
    assert calls == [2]  # the first pair only: MyTanh is a subclass
    model.fuse = False
    np.testing.assert_array_equal(model(x).data, fused)
    assert calls == [2]
