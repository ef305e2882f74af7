"""Buffers (non-trainable state): state_dict names and round trip, strict loading, astype, model
files, NumPy-only inference, and optimizers never seeing them. Uses a small test-only layer."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Tensor, deploy, nn, optim
from engine.checkpoint import build_model, load_checkpoint, save_checkpoint
from engine.errors import ArgumentError, SerializationError
from tests.conftest import backend_params, cpu_only
from tests.helpers import on_device


class Centre(nn.Module):
    """y = (x - m) * weight on (n, features): in training m is the batch mean, which also updates
    running_mean (momentum 0.1) and counts num_batches_tracked; in eval m = running_mean."""

    def __init__(self, features: int):
        self.features = features
        self.weight = nn.Parameter(np.ones(features, dtype=np.float32))
        self.register_buffer("running_mean", np.zeros(features, dtype=np.float32))
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))

    def arguments(self) -> dict:
        return {"features": self.features}

    def forward(self, x):
        if self.training:
            mean = x.data.mean(axis=0)
            self.running_mean = (0.9 * self.running_mean + 0.1 * mean).astype(mean.dtype)
            self.num_batches_tracked = self.num_batches_tracked + 1
        else:
            mean = self.running_mean
        return (x - Tensor(mean.astype(x.dtype))) * self.weight


def _model(seed: int = 0) -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 4, rng=np.random.default_rng(seed)), Centre(4))


def _trained(rng, steps: int = 3) -> nn.Sequential:
    model = _model()
    for _ in range(steps):
        model(rng.standard_normal((5, 3)).astype(np.float32))
    return model.eval()


@cpu_only("buffer bookkeeping on the host; test_to_moves_buffers_to_the_gpu_and_back covers cuda")
def test_buffers_are_named_like_pytorch_and_are_not_parameters():
    model = _model()
    assert [n for n, _ in model.named_buffers()] == ["1.running_mean", "1.num_batches_tracked"]
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.weight"]
    assert list(model.state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.running_mean",
        "1.num_batches_tracked",
    ]
    assert model.state_dict()["1.num_batches_tracked"].dtype == np.int64


@cpu_only("buffer bookkeeping on the host; test_to_moves_buffers_to_the_gpu_and_back covers cuda")
def test_register_buffer_refuses_non_arrays_and_taken_names():
    layer = Centre(2)
    with pytest.raises(ArgumentError, match="'scale' must be an array"):
        layer.register_buffer("scale", 2.0)
    with pytest.raises(ArgumentError, match="'weight' would replace a parameter"):
        layer.register_buffer("weight", np.zeros(2))
    layer.register_buffer("running_mean", np.ones(2, dtype=np.float32))  # re-registering updates
    assert [n for n, _ in layer.named_buffers()] == ["running_mean", "num_batches_tracked"]
    assert layer.running_mean.sum() == 2


@cpu_only("buffer bookkeeping on the host; test_to_moves_buffers_to_the_gpu_and_back covers cuda")
def test_state_dict_round_trip_carries_buffers(rng):
    model = _trained(rng)
    state = model.state_dict()
    assert state["1.num_batches_tracked"] == 3 and np.abs(state["1.running_mean"]).max() > 0
    state["1.running_mean"][...] = 7  # a copy: editing it leaves the model alone
    assert not (model[1].running_mean == 7).any()
    other = _model(seed=1).eval()
    other.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(other[1].running_mean, model[1].running_mean)
    assert other[1].num_batches_tracked == 3
    assert other[1].num_batches_tracked.dtype == np.int64
    x = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(other(x).data, model(x).data)


@cpu_only("buffer bookkeeping on the host; test_to_moves_buffers_to_the_gpu_and_back covers cuda")
def test_strict_load_lists_missing_and_unexpected_buffers(rng):
    model = _model()
    state = model.state_dict()
    del state["1.running_mean"]
    state["1.running_var"] = np.ones(4, dtype=np.float32)
    with pytest.raises(
        KeyError, match=r"missing \['1.running_mean'\], unexpected \['1.running_var'\]"
    ):
        model.load_state_dict(state)
    state["1.num_batches_tracked"] = np.asarray(5)
    model.load_state_dict(state, strict=False)
    assert model[1].num_batches_tracked == 5
    with pytest.raises(ValueError, match="running_mean.*shape"):
        model.load_state_dict({**model.state_dict(), "1.running_mean": np.zeros(3)})


@cpu_only("buffer bookkeeping on the host; test_to_moves_buffers_to_the_gpu_and_back covers cuda")
def test_astype_casts_float_buffers_and_keeps_integer_ones(rng):
    model = _trained(rng).astype(np.float64)
    assert model[1].running_mean.dtype == np.float64
    assert model[1].num_batches_tracked.dtype == np.int64
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model(rng.standard_normal((2, 3))).dtype == np.float64


@cpu_only("buffer bookkeeping on the host; test_to_moves_buffers_to_the_gpu_and_back covers cuda")
def test_optimizer_never_sees_buffers(rng):
    model = _model().train()
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    assert len(opt.params) == 3 and not any(p is b for p in opt.params for b in model.buffers())
    x = rng.standard_normal((5, 3)).astype(np.float32)
    model(x).backward(rng.standard_normal((5, 4)).astype(np.float32))
    before = {
        k: v
        for k, v in model.state_dict().items()
        if k[2:] in ("running_mean", "num_batches_tracked")
    }
    weight = model[1].weight.data.copy()
    opt.step()
    assert not np.array_equal(model[1].weight.data, weight)  # the step did update parameters
    for name, value in before.items():
        np.testing.assert_array_equal(model.state_dict()[name], value)
    assert set(opt.state_dict()) == {"steps", "lr", "velocity.0", "velocity.1", "velocity.2"}


@cpu_only("buffer bookkeeping on the host; test_to_moves_buffers_to_the_gpu_and_back covers cuda")
def test_buffers_travel_through_model_files(rng, tmp_path, monkeypatch):
    model = _trained(rng)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "custom.npz", model))
    assert ckpt.spec is None  # Centre is not in LAYERS: weights and buffers still saved
    assert ckpt.weights["1.num_batches_tracked"].dtype == np.int64
    rebuilt = _model(seed=1).eval()
    rebuilt.load_state_dict(ckpt.weights)
    np.testing.assert_array_equal(rebuilt[1].running_mean, model[1].running_mean)
    # with a LAYERS entry the file rebuilds the layer from its spec alone, buffers included
    monkeypatch.setitem(nn.LAYERS, "Centre", Centre)
    path = save_checkpoint(tmp_path / "described.npz", model)
    ckpt = load_checkpoint(path)
    assert ckpt.spec["layers"][1] == {"type": "Centre", "features": 4}
    rebuilt = build_model(ckpt).eval()
    assert rebuilt[1].num_batches_tracked == 3
    x = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(rebuilt(x).data, model(x).data)
    # NumPy-only inference refuses the type until its FORWARD entry exists, then reads the buffer
    with pytest.raises(SerializationError, match="described.npz.*'Centre'"):
        deploy.load(path)

    def centre(x, spec, arrays, prefix):
        return (x - arrays[prefix + "running_mean"]) * arrays[prefix + "weight"]

    monkeypatch.setitem(deploy.FORWARD, "Centre", centre)
    np.testing.assert_allclose(deploy.load(path)(x), model(x).data, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", backend_params("cuda"), indirect=True)
@pytest.mark.gpu
def test_to_moves_buffers_to_the_gpu_and_back(rng, backend):
    from engine.backend import device_of

    model = _model().to(backend.device)
    for _ in range(3):  # training steps on the device update the buffers there
        model(on_device(rng.standard_normal((5, 3)).astype(np.float32), backend.device))
    assert device_of(model[1].running_mean) == "cuda"
    assert model[1].num_batches_tracked.dtype == np.int64
    state = model.state_dict()
    assert isinstance(state["1.running_mean"], np.ndarray)
    model.to("cpu")
    assert isinstance(model[1].running_mean, np.ndarray)
    np.testing.assert_array_equal(model[1].running_mean, state["1.running_mean"])
