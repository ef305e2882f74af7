"""Masks written back into the voxel grid of the file they were predicted from: the inverse of
canonicalize, and a NIfTI header copied so that the affine (qform, sform, codes) is the input's."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.synthetic_volumes import make_segmentation_demo_data
from engine.data.volumes import canonicalize, read_mask, read_volume, to_file_grid, write_mask_like
from engine.errors import DataError

nib = pytest.importorskip("nibabel")


def _affine(columns, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3], a[:3, 3] = columns, origin
    return a


def _rotated(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


AFFINES = {
    "RAS": _affine(np.diag([2.0, 3.0, 4.0])),
    "LPS": _affine(np.diag([-2.0, -3.0, 4.0])),
    "PIL": _affine(np.array([[0, 0, -1.5], [-2.5, 0, 0], [0, -3.0, 0]])),
    "oblique": _affine(_rotated(10) @ np.array([[0, 3.0, 0], [0, 0, -4.0], [-2.0, 0, 0]])),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_to_file_grid_inverts_canonicalize(rng, name):
    x = rng.integers(0, 100, (5, 6, 7))
    moved, _ = canonicalize(x, AFFINES[name])
    assert moved.shape != x.shape  # every file here is stored in a non-canonical order
    np.testing.assert_array_equal(to_file_grid(moved, AFFINES[name]), x)


@pytest.mark.parametrize("codes", [(1, 1), (2, 0), (0, 1)])  # (qform_code, sform_code)
@pytest.mark.parametrize("name", sorted(AFFINES))
def test_mask_keeps_the_input_files_grid_and_affine(tmp_path, rng, name, codes):
    stored = rng.normal(0, 1, (6, 7, 8)).astype(np.float32)
    img = nib.Nifti1Image(stored, AFFINES[name])
    img.set_qform(AFFINES[name], code=codes[0])
    img.set_sform(AFFINES[name], code=codes[1])
    img.header.set_slope_inter(2.0, -1.0)  # the image's scaling must not reach the mask
    source = tmp_path / "image.nii.gz"
    nib.save(img, source)
    volume, _ = read_volume(source)  # canonical, as predict sees it
    mask = (volume > 0.5).astype(np.int64)
    out = write_mask_like(tmp_path / "mask.nii.gz", mask, source)
    back, orig = nib.load(out), nib.load(source)
    np.testing.assert_allclose(back.affine, orig.affine, atol=1e-6, rtol=0)
    assert int(back.header["qform_code"]) == codes[0] and int(back.header["sform_code"]) == codes[1]
    assert back.get_data_dtype() == np.uint8
    # voxel (i, j, k) of the mask is voxel (i, j, k) of the image, in the file's own order
    expected = (np.asarray(orig.dataobj, dtype=np.float64) > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(back.dataobj), expected)
    # and read back through the engine, it lines up with the image
    np.testing.assert_array_equal(read_mask(out)[0], mask)


def test_dicom_series_mask_has_the_series_affine(tmp_path):
    data = make_segmentation_demo_data(tmp_path / "d", n_cases=1, size=16, dicom=True)
    series = data / "dicom" / "case_000"
    volume, meta = read_volume(series)
    mask = (volume > -500).astype(np.int64)
    out = write_mask_like(tmp_path / "m.nii.gz", mask, series)
    read, mask_meta = read_mask(out)
    np.testing.assert_array_equal(read, mask)
    np.testing.assert_allclose(mask_meta["affine"], meta["affine"], atol=1e-6, rtol=0)


def test_mask_that_does_not_fit_the_reference(tmp_path):
    source = tmp_path / "image.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), source)
    with pytest.raises(DataError, match=r"m\.nii.*does not fit .*image\.nii"):
        write_mask_like(tmp_path / "m.nii", np.zeros((4, 5, 6), np.int64), source)
    assert not (tmp_path / "m.nii").exists()
    with pytest.raises(DataError, match=r"m\.nii: expected an integer"):
        write_mask_like(tmp_path / "m.nii", np.zeros((6, 5, 4), np.float32), source)
