"""The U-Nets (models/unet.py): shapes and state names, Dice + CE training on a tiny volume, model
file round trips through load_model, nn.from_spec and NumPy-only engine.deploy."""

from __future__ import annotations

import numpy as np
import pytest

import engine.functional as F
import models
from engine import Tensor, deploy, nn, no_grad, optim
from engine.checkpoint import load_checkpoint, load_model, save_checkpoint
from engine.errors import ArgumentError


def _ball(n: int, size: int, nd: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, 1, *[size] * nd) of a noisy bright ball at a random place, labels (n, ...)."""
    r = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * nd, indexing="ij"))
    x, t = [], []
    for _ in range(n):
        centre = r.uniform(size / 3, 2 * size / 3, nd).reshape(nd, *[1] * nd)
        inside = ((grid - centre) ** 2).sum(0) < (size / 4) ** 2
        x.append(inside + 0.3 * r.standard_normal(inside.shape))
        t.append(inside)
    return np.array(x, np.float32)[:, None], np.array(t, np.int64)


@pytest.mark.parametrize("name,nd", [("unet2d", 2), ("unet3d", 3)])
@pytest.mark.parametrize("norm", ["instance", "batch", "group"])
def test_unet_keeps_the_grid_and_outputs_classes(name, nd, norm):
    model = models.get(name, in_channels=2, num_classes=3, features=(4, 8, 8), norm=norm)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 2, *[8] * nd)).astype(np.float32))
    assert model(x).shape == (2, 3, *[8] * nd)
    norms = [type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__]
    assert len(norms) == 2 * 5  # two per TwoConv: conv_0, two levels down, two up
    assert {n.rstrip("23d") for n in norms} == {
        {"instance": "InstanceNorm", "batch": "BatchNorm", "group": "GroupNorm"}[norm]
    }


def test_unet3d_layout_follows_basic_unet():
    model = models.get("unet3d", features=(16, 32, 64, 128))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes["conv_0.conv_0.conv.weight"] == (16, 1, 3, 3, 3)
    assert shapes["skip.down.conv_0.conv.weight"] == (32, 16, 3, 3, 3)
    assert shapes["skip.skip.skip.down.conv_1.conv.weight"] == (128, 128, 3, 3, 3)
    assert shapes["skip.skip.skip.up.weight"] == (128, 64, 2, 2, 2)  # ConvTranspose3d (c_in, c_out)
    assert shapes["skip.skip.upcat.conv_0.conv.weight"] == (64, 128, 3, 3, 3)  # after the cat
    assert shapes["final_conv.weight"] == (2, 16, 1, 1, 1)
    acts = {type(m) for m in model.modules() if isinstance(m, (nn.LeakyReLU, nn.ReLU, nn.GELU))}
    assert acts == {nn.LeakyReLU}
    assert [type(m) for m in model.modules()].count(nn.SkipConnection) == 3
    assert models.names("segmentation") == ["unet2d", "unet3d"]
    assert "unet3d" not in models.names("classification")


def test_unet_rejects_bad_arguments():
    with pytest.raises(ArgumentError, match="norm='layer'"):
        models.get("unet3d", norm="layer")
    with pytest.raises(ArgumentError, match="features"):
        models.get("unet2d", features=(8,))
    with pytest.raises(ArgumentError, match="must divide by 2 per pooling level"):
        models.get("unet2d", features=(4, 8))(Tensor(np.zeros((1, 1, 7, 8), np.float32)))


@pytest.mark.parametrize("name,nd,size", [("unet2d", 2, 16), ("unet3d", 3, 8)])
def test_tiny_unet_learns_with_dice_ce(name, nd, size):
    x, t = _ball(4, size, nd)
    model = models.get(name, features=(4, 8), num_classes=2, rng=np.random.default_rng(0))
    opt = optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = F.dice_ce_loss(model(Tensor(x)), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_unet_model_file_round_trips(tmp_path, norm):
    model = models.get(
        "unet3d", features=(4, 8, 8), norm=norm, num_classes=3, rng=np.random.default_rng(0)
    )
    x = np.random.default_rng(1).standard_normal((2, 1, 8, 8, 8)).astype(np.float32)
    model(Tensor(x))  # one training-mode step moves batch norm's running statistics
    model.eval()
    path = save_checkpoint(tmp_path / "unet.npz", model)
    with no_grad():
        expected = model(Tensor(x)).numpy()
    loaded, ckpt = load_model(path)
    assert ckpt.model_config["features"] == [4, 8, 8] and ckpt.spec == model.spec()
    with no_grad():
        np.testing.assert_array_equal(loaded(Tensor(x)).numpy(), expected)
        rebuilt = nn.from_spec(load_checkpoint(path).spec)
        rebuilt.load_state_dict(ckpt.weights)
        np.testing.assert_array_equal(rebuilt.eval()(Tensor(x)).numpy(), expected)
    # NumPy-only inference: the same kernels as the numpy flavour, another summation order
    np.testing.assert_allclose(deploy.load(path)(x), expected, rtol=1e-4, atol=1e-4)
