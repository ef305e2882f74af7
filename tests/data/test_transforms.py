"""engine.data.transforms: resizing against independent references, augmentation determinism."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.transforms import Augment, resize


def test_resize_area_is_block_mean_for_integer_factors(rng):
    x = rng.standard_normal((2, 1, 12, 8))
    y = resize(x, (3, 2), "area")
    expected = x.reshape(2, 1, 3, 4, 2, 4).mean(axis=(3, 5))
    np.testing.assert_allclose(y, expected, atol=1e-5)
    assert y.dtype == np.float32


def test_resize_bilinear_and_nearest_match_scipy_upsampling(rng):
    from scipy import ndimage

    x = rng.standard_normal((6, 6))
    # scipy's grid_mode=True uses the same half-pixel centre convention
    ref = ndimage.zoom(x, 2, order=1, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(resize(x, 12, "bilinear"), ref, atol=1e-5)
    np.testing.assert_array_equal(
        resize(x, 12, "nearest"), np.repeat(np.repeat(x, 2, 0), 2, 1).astype(np.float32)
    )


def test_resize_keeps_constants_and_small_bright_spots(rng):
    x = np.full((1, 1, 128, 128), 3.0)
    np.testing.assert_allclose(resize(x, 28, "area"), 3.0, rtol=1e-6)
    spot = np.zeros((128, 128))
    spot[61:64, 61:64] = 1.0  # a 3-pixel "nodule": area keeps its mass, nearest may drop it
    assert resize(spot, 28, "area").sum() * (128 / 28) ** 2 == pytest.approx(9.0, rel=1e-3)
    with pytest.raises(ValueError, match="method"):
        resize(x, 28, "cubic")


def test_augment_deterministic_and_shape_preserving(rng):
    batch = rng.random((4, 1, 16, 16)).astype(np.float32)
    aug = Augment(scale=(0.8, 1.2), rotate=20, flip=True, intensity=0.2)
    a = aug(batch, np.random.default_rng(5))
    b = aug(batch, np.random.default_rng(5))
    c = aug(batch, np.random.default_rng(6))
    assert a.shape == batch.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_augment_identity_and_pure_flip(rng):
    batch = rng.random((3, 2, 10, 10)).astype(np.float32)
    identity = Augment(scale=(1.0, 1.0), rotate=0.0, flip=False, intensity=0.0)
    np.testing.assert_allclose(identity(batch, np.random.default_rng(0)), batch, atol=1e-5)
    flipper = Augment(scale=(1.0, 1.0), rotate=0.0, flip=True, intensity=0.0)
    out = flipper(batch, np.random.default_rng(0))
    for i in range(3):  # each image is either unchanged or mirrored left-right
        assert np.allclose(out[i], batch[i], atol=1e-5) or np.allclose(
            out[i], batch[i, :, :, ::-1], atol=1e-5
        )


def test_augment_rotation_matches_scipy_rotate():
    """A 90-degree turn of a square image equals np.rot90 (no zoom, no flip, no jitter)."""
    img = np.arange(49, dtype=np.float32).reshape(1, 1, 7, 7)
    aug = Augment(scale=(1.0, 1.0), rotate=90.0, flip=False, intensity=0.0)

    class Fixed:  # an rng whose uniform() returns the bound: rotate exactly +90 degrees
        def uniform(self, lo, hi):
            return hi

        def random(self):
            return 1.0

    out = aug(img, Fixed())[0, 0]
    assert np.allclose(out, np.rot90(img[0, 0], 1), atol=1e-4) or np.allclose(
        out, np.rot90(img[0, 0], -1), atol=1e-4
    )


def test_augment_arguments():
    assert Augment(scale=0.1).scale == (0.9, 1.1)
    with pytest.raises(ValueError):
        Augment(scale=(1.2, 0.8))
    with pytest.raises(ValueError, match="batch"):
        Augment()(np.zeros((4, 4), np.float32), np.random.default_rng(0))
