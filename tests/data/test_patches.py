"""engine.data.patches: pos/neg crop ratios and bounds, padding of small volumes, augmentation that
keeps image and mask aligned, reproducibility from the Generator."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.patches import Augmentation, pad_to, rand_crop_by_pos_neg, sample_crop_starts
from engine.errors import ArgumentError


def _volume(rng, shape=(20, 24, 18)):
    """A mask with a small foreground block near a corner, an image with a different channel
    each: channel 0 = the mask, channel 1 = noise."""
    mask = np.zeros(shape, np.int64)
    mask[2:5, 18:22, 1:4] = 1
    mask[3, 19, 2] = 2
    image = np.stack([mask.astype(np.float32), rng.standard_normal(shape).astype(np.float32)])
    return image, mask


@pytest.mark.parametrize("pos,neg,share", [(1, 1, 0.5), (3, 1, 0.75), (1, 0, 1.0), (0, 1, 0.0)])
def test_crop_ratio_and_bounds(rng, pos, neg, share):
    _, mask = _volume(rng)
    starts, positive = sample_crop_starts(mask, (8, 6, 10), 2000, pos, neg, rng)
    assert starts.shape == (2000, 3) and positive.shape == (2000,)
    assert abs(positive.mean() - share) < 0.04  # binomial sd <= 0.011 at n = 2000
    assert (starts >= 0).all() and (starts + (8, 6, 10) <= mask.shape).all()
    for (d, h, w), is_pos in zip(starts[:200], positive[:200], strict=True):
        has_fg = mask[d : d + 8, h : h + 6, w : w + 10].any()
        assert has_fg or not is_pos  # a positive crop keeps its foreground voxel inside


def test_crops_fall_back_when_a_kind_is_missing(rng):
    empty = np.zeros((6, 6, 6), np.int64)
    _, positive = sample_crop_starts(empty, 4, 50, 1.0, 0.0, rng)
    assert not positive.any()
    _, positive = sample_crop_starts(np.ones((6, 6, 6), np.int64), 4, 50, 0.0, 1.0, rng)
    assert positive.all()
    with pytest.raises(ArgumentError, match="pad_to first"):
        sample_crop_starts(empty, 8, 1, 1.0, 1.0, rng)


def test_crops_are_padded_when_the_volume_is_smaller(rng):
    image, mask = _volume(rng, (5, 30, 4))
    patches = rand_crop_by_pos_neg(image, mask, (8, 8, 8), rng, num_samples=6, pos=1, neg=1)
    assert len(patches) == 6
    for img, msk in patches:
        assert img.shape == (2, 8, 8, 8) and msk.shape == (8, 8, 8) and msk.dtype == mask.dtype
        np.testing.assert_array_equal(img[0], msk.astype(np.float32))  # still aligned
    padded_img, padded_mask = pad_to(image, mask, (8, 8, 8), pad_value=-5.0)
    assert padded_mask.shape == (8, 30, 8) and padded_img.shape == (2, 8, 30, 8)
    assert (padded_img[:, 0] == -5).all() and (padded_img[:, 1:6, :, 2:6] == image).all()


@pytest.mark.parametrize("nd", [2, 3])
def test_augmentation_keeps_image_and_mask_aligned(rng, nd):
    """An image equal to its mask stays equal through flips, 90-degree turns and the affine
    (nearest for both here); with linear interpolation, wherever the image is exactly a label
    (all neighbours agree) the mask holds that label."""
    shape = (10, 12, 14)[:nd]
    mask = np.zeros(shape, np.int64)
    mask[(slice(2, 7),) * nd] = 1
    mask[(slice(3, 5),) * nd] = 2
    image = mask[None].astype(np.float64)
    nearest = Augmentation(
        flip_prob=0.5, rot90_prob=0.7, affine_prob=0.7, image_order=0, intensity_prob=0
    )
    for seed in range(8):
        img, msk = nearest(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(img[0], msk)
        assert msk.dtype == mask.dtype and img.dtype == image.dtype
    linear = Augmentation(affine_prob=1.0, max_rotate_deg=20, intensity_prob=0)
    turned = 0
    for seed in range(4):
        img, msk = linear(image, mask, np.random.default_rng(seed))
        exact = np.isin(img[0], (0.0, 1.0, 2.0))
        np.testing.assert_array_equal(img[0][exact], msk[exact])
        turned += not np.array_equal(msk, mask)
    assert turned == 4  # the affine really moved something


def test_augmentation_is_reproducible_and_changes_intensity_only_of_the_image(rng):
    image, mask = _volume(rng)
    aug = Augmentation(affine_prob=0.5, intensity_prob=1.0)
    a = aug(image, mask, np.random.default_rng(7))
    b = aug(image, mask, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    only_intensity = Augmentation(flip_prob=0, rot90_prob=0, affine_prob=0, intensity_prob=1.0)
    img, msk = only_intensity(image, mask, np.random.default_rng(1))
    np.testing.assert_array_equal(msk, mask)
    scale = (img[1] - img[1].mean()).std() / (image[1] - image[1].mean()).std()
    assert 0.9 <= scale <= 1.1 and not np.allclose(img, image)
    np.testing.assert_allclose(
        img, image * scale + (img[0, 0, 0, 0] - image[0, 0, 0, 0] * scale), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ArgumentError, match="rot90_plane"):
        Augmentation(rot90_plane=(1, 1))(image, mask, rng)
    with pytest.raises(ArgumentError, match=r"image \(2, 20, 24, 18\)"):
        aug(image, mask[:-1], rng)
