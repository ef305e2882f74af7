"""Models: shapes, loss falling on a fixed batch, overfitting 32 samples, the seed CNN's exact layout."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
import models
from engine import Tensor, nn, optim
from engine.data.phantoms import make_phantoms
from engine.train import evaluate, train_epoch


@pytest.mark.parametrize("name", models.names("classification"))
def test_loss_drops_on_fixed_batch(name):
    x, y = make_phantoms(8, seed=1)
    model = models.get(name, num_classes=2, rng=np.random.default_rng(0))
    opt = optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = F.softmax_cross_entropy(model(Tensor(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_seed_cnn_is_the_articles_network():
    model = models.get("seed_cnn")
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == [
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Conv2d",
        "ReLU",
        "MaxPool2d",
        "Flatten",
        "Linear",
        "ReLU",
        "Linear",
    ]
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {
        "0.weight": (32, 1, 3, 3),
        "0.bias": (32,),
        "3.weight": (64, 32, 3, 3),
        "3.bias": (64,),
        "7.weight": (64, 1600),
        "7.bias": (64,),
        "9.weight": (10, 64),
        "9.bias": (10,),
    }
    assert model(Tensor(np.zeros((2, 1, 28, 28), dtype=np.float32))).shape == (2, 10)
    assert models.get("seed_cnn", in_channels=3, input_size=64, num_classes=4)(
        Tensor(np.zeros((1, 3, 64, 64), dtype=np.float32))
    ).shape == (1, 4)


def test_seed_cnn_overfits_32_samples():
    x, y = make_phantoms(32, seed=2)
    model = models.get("seed_cnn", num_classes=2, rng=np.random.default_rng(0))
    opt = optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(40):
        train_epoch(model, opt, x, y, batch_size=8, rng=rng)
        if evaluate(model, x, y)["accuracy"] == 1.0:
            break
    assert evaluate(model, x, y)["accuracy"] == 1.0


def test_unknown_model_and_config():
    with pytest.raises(ValueError, match="seed_cnn"):
        models.get("resnet9000")
    model = models.get("mlp", hidden=16, num_classes=3)
    assert model.config == {"name": "mlp", "hidden": 16, "num_classes": 3}
    assert isinstance(model, nn.Module)


@pytest.mark.parametrize("name", models.names("classification"))
def test_model_file_round_trip_keeps_config_spec_and_outputs(name, tmp_path):
    from engine.checkpoint import load_checkpoint, load_model, save_checkpoint

    model = models.get(name, num_classes=3, rng=np.random.default_rng(0)).eval()
    path = save_checkpoint(tmp_path / "m.npz", model)
    ckpt = load_checkpoint(path)
    assert ckpt.model_config == {"name": name, "num_classes": 3}
    assert ckpt.spec == model.spec() and ckpt.spec["type"] == "Sequential"
    x = Tensor(np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32))
    rebuilt, _ = load_model(path)
    np.testing.assert_array_equal(rebuilt(x).data, model(x).data)
    from_spec = nn.from_spec(ckpt.spec)
    from_spec.load_state_dict(ckpt.weights)
    np.testing.assert_array_equal(from_spec.eval()(x).data, model(x).data)
