"""Conv3d, ConvTranspose2d, ConvTranspose3d: gradient checks of input and parameters, geometry,
NumPy-only inference (engine.deploy), and PyTorch's layers as an optional oracle (`oracle`)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Tensor, deploy, explain, nn
from engine.checkpoint import save_checkpoint
from engine.errors import ArgumentError
from engine.gradcheck import check_grad
from tests.conftest import TOL, cpu_only

LAYERS = [  # layer factory, input shape
    (lambda r: nn.Conv3d(2, 3, (3, 2, 3), stride=2, padding=(1, 0, 1), rng=r), (2, 2, 5, 4, 5)),
    (lambda r: nn.Conv3d(1, 2, 2, bias=False, rng=r), (1, 1, 3, 4, 3)),
    (
        lambda r: nn.ConvTranspose2d(3, 2, (3, 2), stride=2, padding=1, output_padding=1, rng=r),
        (2, 3, 3, 4),
    ),
    (lambda r: nn.ConvTranspose3d(2, 2, 2, stride=(2, 1, 2), rng=r), (1, 2, 2, 3, 2)),
    (
        lambda r: nn.ConvTranspose3d(2, 3, 3, 2, 1, output_padding=(1, 0, 1), bias=False, rng=r),
        (1, 2, 2, 2, 3),
    ),
]


@pytest.mark.parametrize("make,x_shape", LAYERS)
def test_conv_layer_grad(backend, rng, make, x_shape):
    layer = make(rng).astype(np.float64).to(backend.device)
    check_grad(
        layer,
        [rng.standard_normal(x_shape)],
        params=layer.named_parameters(),
        device=backend.device,
        **TOL["gradcheck"],
    )


@cpu_only("weight layouts and names are device-independent")
def test_weight_layouts_and_state_dict_names(rng):
    conv = nn.Conv3d(2, 5, (3, 1, 2), rng=rng)
    up = nn.ConvTranspose3d(4, 6, (2, 3, 1), stride=2, rng=rng)
    assert list(conv.state_dict()) == ["weight", "bias"] == list(up.state_dict())
    assert conv.weight.shape == (5, 2, 3, 1, 2) and conv.bias.shape == (5,)
    assert up.weight.shape == (4, 6, 2, 3, 1) and up.bias.shape == (6,)
    assert list(nn.ConvTranspose2d(3, 2, 2, bias=False).state_dict()) == ["weight"]
    # He-normal with PyTorch's fan_in = weight.shape[1] * prod(k): out_channels for transposed
    big = nn.ConvTranspose2d(8, 200, 3, rng=rng).weight.data
    np.testing.assert_allclose(big.std(), np.sqrt(2 / (200 * 9)), rtol=0.05)


@cpu_only("argument checks are device-independent")
def test_conv_layers_reject_bad_arguments():
    with pytest.raises(ArgumentError, match="output_padding"):
        nn.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2)
    with pytest.raises(ArgumentError, match="kernel_size must be .* 3 ints"):
        nn.Conv3d(2, 2, (3, 3))
    with pytest.raises(ArgumentError, match="padding must be >= 0"):
        nn.ConvTranspose3d(2, 2, 3, padding=-1)


@cpu_only("geometry is device-independent metadata")
def test_geometry_of_volume_and_transposed_layers(rng):
    g = nn.Conv3d(1, 1, (3, 2, 1), stride=(1, 2, 3), padding=(1, 0, 0)).geometry()
    assert g.kind == "conv" and not g.transposed
    assert g.centre_map() == ((1.0, 0.0), (2.0, 0.5), (3.0, 0.0))
    t = nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1).geometry()
    assert t.transposed and t.centre_map() == ((0.5, -0.25), (0.5, -0.25))


@cpu_only("geometry is device-independent metadata")
@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0), (4, 2, 1), (3, 1, 1), (5, 3, 2)])
def test_transposed_geometry_inverts_the_conv(rng, k, s, p):
    """A conv followed by the transposed conv of the same geometry maps cells back onto the same
    input pixels: the composed centre map (what explain walks) is the identity."""
    model = nn.Sequential(nn.Conv2d(1, 1, k, s, p), nn.ReLU(), nn.ConvTranspose2d(1, 1, k, s, p))
    assert explain._centres(model.layers, 2) == ((1.0, 0.0), (1.0, 0.0))


@cpu_only("the receptive field is read off gradients on the CPU")
def test_transposed_centre_is_where_the_inputs_are():
    """For k=3, s=2, p=1 every output cell's contributing inputs (nonzero d y[u] / d x) average
    exactly to the centre map's input coordinate."""
    layer = nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, bias=False)
    layer.weight.data[...] = 1.0
    x = Tensor(np.zeros((1, 1, 5, 5), np.float32), requires_grad=True)
    y = layer(x)
    (scale, offset), _ = layer.geometry().centre_map()
    for u in range(y.shape[2]):
        gy = np.zeros(y.shape, np.float32)
        gy[0, 0, u, 4] = 1
        x.grad = None
        layer(x).backward(gy)
        rows = np.nonzero(x.grad[0, 0].any(axis=1))[0]
        assert rows.mean() == pytest.approx(scale * u + offset), u


@cpu_only("engine.deploy runs NumPy only, on the CPU")
def test_numpy_only_inference_of_volume_and_upsampling_layers(tmp_path, rng):
    volumes = nn.Sequential(
        nn.Conv3d(1, 3, 3, stride=2, padding=1, rng=rng),
        nn.ReLU(),
        nn.ConvTranspose3d(3, 2, 3, stride=2, padding=1, output_padding=(1, 0, 1), rng=rng),
        nn.Conv3d(2, 2, 1, bias=False, rng=rng),
    )
    planes = nn.Sequential(
        nn.ConvTranspose2d(1, 2, (2, 3), stride=2, padding=(0, 1), output_padding=(1, 0), rng=rng),
        nn.Tanh(),
        nn.ConvTranspose2d(2, 1, 2, bias=False, rng=rng),
    )
    for name, model, shape in (("vol", volumes, (2, 1, 6, 5, 7)), ("plane", planes, (2, 1, 5, 4))):
        x = rng.standard_normal(shape).astype(np.float32)
        net = deploy.load(save_checkpoint(tmp_path / f"{name}.npz", model))
        expected = model(Tensor(x)).numpy()
        assert net(x).shape == expected.shape
        np.testing.assert_allclose(net(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.oracle
@cpu_only("PyTorch is the oracle on the CPU")
@pytest.mark.parametrize(
    "name,args,kwargs,x_shape",
    [
        ("Conv3d", (2, 3, (3, 2, 3)), dict(stride=(2, 1, 1), padding=(1, 0, 2)), (2, 2, 5, 4, 3)),
        ("ConvTranspose2d", (3, 2, 3), dict(stride=2, padding=1, output_padding=1), (2, 3, 4, 3)),
        (
            "ConvTranspose3d",
            (2, 3, (2, 3, 2)),
            dict(stride=2, output_padding=(1, 0, 1)),
            (1, 2, 3, 2, 3),
        ),
    ],
)
def test_conv_layers_match_torch(rng, name, args, kwargs, x_shape):
    """The same constructor call and state_dict keys as PyTorch's layer; weights move both ways,
    and forward and backward agree in float64."""
    torch = pytest.importorskip("torch")
    layer = getattr(nn, name)(*args, **kwargs, rng=rng).astype(np.float64)
    twin = getattr(torch.nn, name)(*args, **kwargs).double()
    assert list(twin.state_dict()) == list(layer.state_dict())
    twin.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    x = rng.standard_normal(x_shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = twin(xt)
    gy = rng.standard_normal(yt.shape)
    yt.backward(torch.tensor(gy))
    xe = Tensor(x, requires_grad=True)
    y = layer(xe)
    y.backward(gy)
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), **TOL["loops64"])
    np.testing.assert_allclose(xe.grad, xt.grad.numpy(), **TOL["loops64"])
    for key, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, getattr(twin, key).grad.numpy(), **TOL["loops64"])
    fresh = getattr(nn, name)(*args, **kwargs)  # float32, its own random weights
    fresh.load_state_dict({k: v.numpy() for k, v in twin.state_dict().items()})
    np.testing.assert_array_equal(fresh.weight.data, layer.weight.data.astype(np.float32))
