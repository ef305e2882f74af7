"""engine.inference.sliding_window_inference: MONAI's window placement, one window equals a whole
forward, blending is seamless, flip TTA, padding of small volumes, model state left as found."""

from __future__ import annotations

import numpy as np
import pytest

import models
from engine import Tensor, deploy, nn, no_grad
from engine.checkpoint import save_checkpoint
from engine.errors import ArgumentError
from engine.inference import importance_map, scan_starts, sliding_window_inference


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max(axis=0, keepdims=True))
    return z / z.sum(axis=0, keepdims=True)


def _whole(model, volume: np.ndarray) -> np.ndarray:
    with no_grad():
        return _softmax(model(Tensor(volume[None])).numpy()[0].astype(np.float64))


def test_scan_starts_follow_monai():
    assert scan_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert scan_starts(9, 4, 0.25) == [0, 3, 5]  # last window flush with the edge
    assert scan_starts(8, 8, 0.5) == [0]
    assert scan_starts(5, 2, 0.9) == [0, 1, 2, 3]  # step never below one voxel
    w = importance_map((5, 3), "gaussian")
    assert w.shape == (5, 3) and w.argmax() == np.ravel_multi_index((2, 1), (5, 3))
    np.testing.assert_allclose(w, w[::-1, ::-1])  # symmetric about the window's centre
    assert w.min() >= 1e-3 and importance_map((2, 2), "constant").tolist() == [[1, 1], [1, 1]]


def test_one_window_equals_the_whole_forward(rng):
    """Batch norm: the running statistics (moved by one training step) must be the ones used,
    i.e. the model runs in eval mode, and is left in training mode as it was found."""
    model = models.get("unet3d", features=(4, 8), num_classes=3, norm="batch", rng=rng)
    volume = rng.standard_normal((1, 8, 6, 10)).astype(np.float32)
    model(Tensor(volume[None] + 1))  # training mode
    probs = sliding_window_inference(model, volume, (8, 6, 10), blend="gaussian")
    assert model.training
    assert probs.shape == (3, 8, 6, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, _whole(model.eval(), volume), atol=1e-6)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap,batch_size", [(0.5, 1), (0.25, 3), (0.0, 2)])
def test_blending_is_seamless_for_pointwise_models(rng, blend, overlap, batch_size):
    """A 1x1x1 conv net sees each voxel alone, so every window agrees where they overlap: any
    seam (a weight missing or counted twice) shows as a difference from the whole forward."""
    model = nn.Sequential(nn.Conv3d(2, 4, 1, rng=rng), nn.LeakyReLU(), nn.Conv3d(4, 3, 1, rng=rng))
    volume = rng.standard_normal((2, 13, 9, 11)).astype(np.float32)
    probs = sliding_window_inference(
        model, volume, (6, 4, 5), overlap=overlap, blend=blend, batch_size=batch_size
    )
    np.testing.assert_allclose(probs, _whole(model, volume), atol=1e-6)


def test_2d_images_flip_tta_and_numpy_models(rng, tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, rng=rng))
    image = rng.standard_normal((1, 12, 9)).astype(np.float32)
    probs = sliding_window_inference(model, image, (12, 9), tta_flips=True)
    flips = [(), (1,), (2,), (1, 2)]
    expected = np.mean(
        [
            np.flip(_whole(model, np.flip(image, a).copy()), a) if a else _whole(model, image)
            for a in flips
        ],
        axis=0,
    )
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    net = deploy.load(save_checkpoint(tmp_path / "m.npz", model))  # a NumPy-only callable
    windowed = sliding_window_inference(net, image, (4, 4), overlap=0.5)
    np.testing.assert_allclose(windowed.sum(axis=0), 1, atol=1e-5)


def test_small_volumes_are_padded_and_one_channel_is_a_sigmoid(rng):
    model = nn.Sequential(nn.Conv3d(1, 1, 1, rng=rng))
    volume = rng.standard_normal((1, 3, 5, 4)).astype(np.float32)
    probs = sliding_window_inference(model, volume, (4, 4, 4), num_classes=1)
    with no_grad():
        z = model(Tensor(volume[None])).numpy()[0]
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-z)), atol=1e-6)


def test_memory_is_bounded_by_the_window_batch(rng):
    """The model never sees more than batch_size windows at once (here a NumPy callable)."""
    seen = []

    def model(x):
        seen.append(x.shape)
        return np.concatenate([x, -x], axis=1)

    volume = rng.standard_normal((1, 20, 20, 20)).astype(np.float32)
    probs = sliding_window_inference(model, volume, 8, overlap=0.5, batch_size=4)
    assert (
        len(seen) == 16 and {s[0] for s in seen} == {4} and {s[1:] for s in seen} == {(1, 8, 8, 8)}
    )  # 4 x 4 x 4 windows (starts 0, 4, 8, 12), 4 at a time
    np.testing.assert_allclose(probs[0], 1 / (1 + np.exp(-2 * volume[0])), atol=1e-6)


def test_bad_arguments_are_reported(rng):
    model = nn.Sequential(nn.Conv2d(1, 2, 1, rng=rng))
    image = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(ArgumentError, match="roi_size"):
        sliding_window_inference(model, image, (4, 4, 4))
    with pytest.raises(ArgumentError, match="overlap"):
        sliding_window_inference(model, image, 4, overlap=1.0)
    with pytest.raises(ArgumentError, match="blend='box'"):
        sliding_window_inference(model, image, 4, blend="box")
    with pytest.raises(ArgumentError, match="outputs 2 channels, num_classes=3"):
        sliding_window_inference(model, image, 4, num_classes=3)
    with pytest.raises(ArgumentError, match="keep the spatial size"):
        sliding_window_inference(nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng)), image, 4)
