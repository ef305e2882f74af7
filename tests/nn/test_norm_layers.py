"""Normalisation, activation and skip-connection layers: float64 gradient checks on every backend,
batch norm's buffers and train/eval switching by hand, argument errors, NumPy-only inference, and
torch.nn as an `oracle` (state_dict keys and dtypes, train and eval outputs)."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Tensor, deploy, nn
from engine.checkpoint import Checkpoint
from engine.errors import ArgumentError
from engine.gradcheck import check_grad
from tests.conftest import TOL, cpu_only
from tests.helpers import away_from_zero, on_device, to_host


def _randomised(layer, rng, device):
    """The layer in float64 on `device`, its parameters drawn at random (ones/zeros would hide
    a swapped weight and bias)."""
    layer.astype(np.float64)
    for p in layer.parameters():
        p.data = rng.standard_normal(p.shape)
    return layer.to(device)


def _block(r):
    body = nn.Sequential(
        {
            "conv1": nn.Conv2d(2, 3, 3, padding=1, rng=r),
            "bn1": nn.BatchNorm2d(3),
            "relu": nn.ReLU(),
            "conv2": nn.Conv2d(3, 3, 3, padding=1, rng=r),
        }
    )
    return nn.Residual(body, nn.Conv2d(2, 3, 1, rng=r), nn.LeakyReLU(0.1))


LAYERS = {  # name: (layer factory, input shape)
    "BatchNorm1d_nc": (lambda r: nn.BatchNorm1d(3), (5, 3)),
    "BatchNorm1d_ncl": (lambda r: nn.BatchNorm1d(3), (2, 3, 4)),
    "BatchNorm2d": (lambda r: nn.BatchNorm2d(3), (2, 3, 4, 3)),
    "BatchNorm3d": (lambda r: nn.BatchNorm3d(2), (2, 2, 2, 3, 3)),
    "InstanceNorm2d": (lambda r: nn.InstanceNorm2d(3, affine=True), (2, 3, 4, 3)),
    "InstanceNorm3d": (lambda r: nn.InstanceNorm3d(2, track_running_stats=True), (2, 2, 2, 3, 3)),
    "GroupNorm": (lambda r: nn.GroupNorm(2, 4), (2, 4, 3, 3)),
    "LayerNorm": (lambda r: nn.LayerNorm((3, 4)), (2, 2, 3, 4)),
    "LeakyReLU": (lambda r: nn.LeakyReLU(0.2), (2, 3, 4)),
    "GELU": (lambda r: nn.GELU(), (2, 3, 4)),
    "Identity": (lambda r: nn.Identity(), (2, 3)),
    "AdaptiveAvgPool2d": (lambda r: nn.AdaptiveAvgPool2d(1), (2, 3, 3, 4)),
    "Residual": (_block, (2, 2, 4, 4)),
}


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_layer_grad(backend, rng, name, mode):
    make, shape = LAYERS[name]
    layer = _randomised(make(rng), rng, backend.device)
    for _, m in layer.named_modules():  # buffers away from their initial zeros/ones
        if getattr(m, "running_var", None) is not None:
            m.running_mean = on_device(rng.standard_normal(m.running_mean.shape), backend.device)
            m.running_var = on_device(rng.uniform(0.5, 2, m.running_var.shape), backend.device)
    layer.train(mode == "train")
    x = away_from_zero(rng, shape)  # LeakyReLU's kink
    check_grad(
        layer, [x], params=layer.named_parameters(), device=backend.device, **TOL["gradcheck"]
    )


def test_batch_norm_layer_buffers_by_hand(backend, rng):
    """Training updates running_mean/var (unbiased, momentum 0.1) and counts batches; eval mode
    uses them and changes nothing; momentum None is the cumulative average."""
    bn = _randomised(nn.BatchNorm2d(3), rng, backend.device)
    cumulative = nn.BatchNorm2d(3, momentum=None).astype(np.float64).to(backend.device)
    rm, rv = np.zeros(3), np.ones(3)
    means, variances = [], []
    for _ in range(2):
        x = rng.standard_normal((4, 3, 2, 3)) * 2 + 1
        y = to_host(bn(on_device(x, backend.device)))
        cumulative(on_device(x, backend.device))
        m, v = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
        means.append(m)
        variances.append(v * 24 / 23)
        rm, rv = 0.9 * rm + 0.1 * m, 0.9 * rv + 0.1 * v * 24 / 23
        w, b = to_host(bn.weight.data), to_host(bn.bias.data)
        expected = (x - m[:, None, None]) / np.sqrt(v[:, None, None] + 1e-5)
        expected = expected * w[:, None, None] + b[:, None, None]
        np.testing.assert_allclose(y, expected, **TOL["loops64"])
    np.testing.assert_allclose(to_host(bn.running_mean), rm, **TOL["loops64"])
    np.testing.assert_allclose(to_host(bn.running_var), rv, **TOL["loops64"])
    assert to_host(bn.num_batches_tracked) == 2 and bn.num_batches_tracked.dtype == np.int64
    np.testing.assert_allclose(
        to_host(cumulative.running_mean), np.mean(means, 0), **TOL["loops64"]
    )
    np.testing.assert_allclose(
        to_host(cumulative.running_var), np.mean(variances, 0), **TOL["loops64"]
    )
    bn.eval()
    x = rng.standard_normal((2, 3, 2, 2))
    y = to_host(bn(on_device(x, backend.device)))
    expected = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5)
    np.testing.assert_allclose(y, expected * w[:, None, None] + b[:, None, None], **TOL["loops64"])
    np.testing.assert_allclose(to_host(bn.running_mean), rm, **TOL["loops64"])
    assert to_host(bn.num_batches_tracked) == 2


@cpu_only("layer metadata and argument checks are device-independent")
def test_layer_state_names_and_dtypes():
    bn = nn.BatchNorm2d(4)
    assert [(k, v.dtype, v.shape) for k, v in bn.state_dict().items()] == [
        ("weight", np.float32, (4,)),
        ("bias", np.float32, (4,)),
        ("running_mean", np.float32, (4,)),
        ("running_var", np.float32, (4,)),
        ("num_batches_tracked", np.int64, ()),
    ]
    assert list(nn.BatchNorm2d(4, affine=False, track_running_stats=False).state_dict()) == []
    assert list(nn.InstanceNorm2d(4).state_dict()) == []
    assert list(nn.GroupNorm(2, 4).state_dict()) == ["weight", "bias"]
    assert bn.astype(np.float64).num_batches_tracked.dtype == np.int64  # counters stay integers


@cpu_only("layer metadata and argument checks are device-independent")
def test_residual_names_follow_torchvision(rng):
    names = list(_block(rng).state_dict())
    assert names[:2] == ["conv1.weight", "conv1.bias"]
    assert "bn1.running_mean" in names and "bn1.num_batches_tracked" in names
    assert names[-2:] == ["downsample.weight", "downsample.bias"]
    assert [n for n, _ in _block(rng).path()] == ["conv1", "bn1", "relu", "conv2", "activation"]


def test_residual_equals_its_composition(backend, rng):
    block = _randomised(_block(rng), rng, backend.device).eval()
    x = on_device(rng.standard_normal((2, 2, 4, 4)), backend.device)
    body = block.body(x).data + block.shortcut(x).data
    expected = np.where(to_host(body) > 0, to_host(body), 0.1 * to_host(body))
    np.testing.assert_allclose(to_host(block(x)), expected, **TOL["loops64"])


@cpu_only("layer metadata and argument checks are device-independent")
def test_layer_arguments_are_checked(rng):
    with pytest.raises(ArgumentError, match=r"BatchNorm2d\(3\) expects input \(n, c, h, w\)"):
        nn.BatchNorm2d(3)(Tensor(np.ones((2, 3, 4), np.float32)))
    with pytest.raises(ArgumentError, match=r"BatchNorm1d\(3\) expects .*got shape \(2, 4\)"):
        nn.BatchNorm1d(3)(Tensor(np.ones((2, 4), np.float32)))
    with pytest.raises(ArgumentError, match="num_groups=3 must divide num_channels=4"):
        nn.GroupNorm(3, 4)
    with pytest.raises(ArgumentError, match="GroupNorm expects input"):
        nn.GroupNorm(2, 4)(Tensor(np.ones((2, 6, 3), np.float32)))
    with pytest.raises(ArgumentError, match="normalized_shape"):
        nn.LayerNorm(5)(Tensor(np.ones((2, 4), np.float32)))
    with pytest.raises(ArgumentError, match="body must be an nn.Sequential"):
        nn.Residual(nn.ReLU())
    with pytest.raises(ArgumentError, match="approximate='tanh'"):
        nn.GELU("tanh")


@cpu_only("engine.deploy is NumPy-only: it runs on the host")
@pytest.mark.parametrize("name", LAYERS)
def test_numpy_only_inference_equals_the_engine(rng, name):
    make, shape = LAYERS[name]
    layer = make(rng)
    for p in layer.parameters():
        p.data = rng.standard_normal(p.shape).astype(np.float32)
    for _ in range(2):  # running statistics away from their initial values
        layer(Tensor(rng.standard_normal(shape).astype(np.float32) * 2 + 1))
    layer.eval()
    x = rng.standard_normal(shape).astype(np.float32)
    ckpt = Checkpoint(
        path="memory", model_config=None, spec=layer.spec(), weights=layer.state_dict()
    )
    got = deploy.NumpyModel(ckpt)(x)
    np.testing.assert_allclose(got, layer(Tensor(x)).data, atol=1e-5, rtol=1e-5)


# ---- torch.nn as an oracle ----

TORCH_PAIRS = {  # ours, torch's (same arguments), input shape
    "BatchNorm2d": (
        lambda: nn.BatchNorm2d(3, momentum=0.2),
        "BatchNorm2d(3, momentum=0.2)",
        (4, 3, 3, 2),
    ),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(3), "BatchNorm1d(3)", (5, 3)),
    "BatchNorm3d": (lambda: nn.BatchNorm3d(2), "BatchNorm3d(2)", (2, 2, 2, 3, 2)),
    "InstanceNorm3d": (
        lambda: nn.InstanceNorm3d(2, affine=True, track_running_stats=True),
        "InstanceNorm3d(2, affine=True, track_running_stats=True)",
        (2, 2, 2, 3, 2),
    ),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), "GroupNorm(2, 4)", (2, 4, 3, 2)),
    "LayerNorm": (lambda: nn.LayerNorm((3, 2)), "LayerNorm((3, 2))", (2, 4, 3, 2)),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.3), "LeakyReLU(0.3)", (2, 5)),
    "GELU": (lambda: nn.GELU(), "GELU()", (2, 5)),
}


@pytest.mark.oracle
@pytest.mark.parametrize("name", TORCH_PAIRS)
def test_layer_matches_torch_nn(backend, rng, name):
    """Same state_dict keys, dtypes and shapes; with torch's state loaded, the same outputs,
    input gradients and running statistics over two training steps, then in eval mode."""
    torch = pytest.importorskip("torch")
    make, theirs_src, shape = TORCH_PAIRS[name]
    theirs = eval(f"torch.nn.{theirs_src}").double()  # noqa: S307 - a literal from the table above
    ours = make()
    torch_state = theirs.state_dict()
    assert list(ours.state_dict()) == list(torch_state)
    for key, value in ours.state_dict().items():
        t = torch_state[key]
        assert value.shape == tuple(t.shape), key
        assert (value.dtype == np.int64) == (t.dtype == torch.int64), key
    for p in theirs.parameters():
        p.data = torch.tensor(rng.standard_normal(tuple(p.shape)))
    ours.astype(np.float64).load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    ours.to(backend.device)
    for mode in ("train", "train", "eval"):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        x, gy = rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape)
        tx = torch.tensor(x, requires_grad=True)
        ty = theirs(tx)
        ty.backward(torch.tensor(gy))
        xt = Tensor(on_device(x, backend.device), requires_grad=True)
        y = ours(xt)
        y.backward(on_device(gy, backend.device))
        np.testing.assert_allclose(to_host(y), ty.detach().numpy(), **TOL["loops64"])
        np.testing.assert_allclose(to_host(xt.grad), tx.grad.numpy(), **TOL["loops64"])
        ours.zero_grad()
        theirs.zero_grad()
    for key, value in theirs.state_dict().items():
        np.testing.assert_allclose(
            ours.state_dict()[key], value.numpy(), **TOL["loops64"], err_msg=key
        )
