"""Volume I/O: NIfTI orientation and spacing round trips, DICOM series vs NIfTI, atomic writes,
image/mask alignment, and every kind of bad file (broken header, gzip bomb, 2-D, wrong dims)."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from engine.data import read_mask, read_pair, read_volume, write_mask, write_volume
from engine.data.synthetic_volumes import make_segmentation_demo_data
from engine.data.volume_transforms import hu_window, resample_to_spacing, zscore
from engine.errors import ArgumentError, DataError

nib = pytest.importorskip("nibabel")


def _rotation(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])


def _affine(columns, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3], a[:3, 3] = columns, origin
    return a


AFFINES = {
    "RAS": _affine(np.diag([2.0, 3.0, 4.0])),
    "LAS": _affine(np.diag([-2.0, 3.0, 4.0])),
    "LPS": _affine(np.diag([-2.0, -3.0, 4.0])),
    # axes permuted (i -> -S, j -> R, k -> P) and rotated 10 degrees about S: oblique
    "oblique-permuted": _affine(
        _rotation(10) @ np.array([[0, 3.0, 0], [0, 0, -4.0], [-2.0, 0, 0]])
    ),
}


@pytest.mark.parametrize("name", list(AFFINES))
def test_read_volume_canonical_orientation(tmp_path, rng, name):
    affine = AFFINES[name]
    stored = rng.permutation(5 * 6 * 7).reshape(5, 6, 7).astype(np.int16)  # unique: value -> index
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(stored, affine), path)
    mask, meta = read_mask(path)
    volume, _ = read_volume(path)
    assert volume.dtype == np.float32 and np.array_equal(volume, mask)
    cols = meta["affine"][:3, :3]
    # canonical: d -> +S, h -> -A (posterior), w -> -R (left) as the dominant world direction
    assert [int(np.abs(cols[:, a]).argmax()) for a in range(3)] == [2, 1, 0]
    assert cols[2, 0] > 0 and cols[1, 1] < 0 and cols[0, 2] < 0
    # every voxel lands at the same world point as in the file: values name their stored index
    d, h, w = np.indices(mask.shape).reshape(3, -1)
    where = np.empty(stored.size, dtype=np.int64)
    where[stored.reshape(-1)] = np.arange(stored.size)  # value -> flat index in the file
    ijk = np.stack(np.unravel_index(where[mask.reshape(-1)], stored.shape))
    world_new = meta["affine"] @ np.stack([d, h, w, np.ones_like(d)])
    world_old = affine @ np.vstack([ijk, np.ones_like(d)])
    np.testing.assert_allclose(world_new, world_old, atol=1e-9)
    np.testing.assert_allclose(meta["spacing"], np.linalg.norm(cols, axis=0))
    expected_spacing = sorted(np.linalg.norm(affine[:3, :3], axis=0))
    assert sorted(meta["spacing"]) == pytest.approx(expected_spacing)
    # the integer labels are exact (a permutation of the stored values, no interpolation)
    assert np.array_equal(np.sort(mask.ravel()), np.arange(stored.size))


def test_read_volume_matches_nibabel_closest_canonical(tmp_path, rng):
    stored = rng.integers(0, 4, (4, 5, 6)).astype(np.uint8)
    img = nib.Nifti1Image(stored, AFFINES["LAS"])
    nib.save(img, tmp_path / "m.nii")
    mask, _ = read_mask(tmp_path / "m.nii", num_classes=4)
    ras = np.asarray(nib.as_closest_canonical(img).dataobj)  # (R, A, S) axes
    assert np.array_equal(mask, ras.transpose(2, 1, 0)[:, ::-1, ::-1])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_write_volume_round_trip(tmp_path, rng, suffix):
    volume = rng.standard_normal((4, 5, 6)).astype(np.float32)
    # canonical but oblique: columns (d, h, w) point mostly to +S, -A and -R
    affine = _affine(_rotation(20) @ np.array([[0, 0, -1.5], [0, -0.8, 0], [2.5, 0, 0]]))
    out = write_volume(tmp_path / f"v{suffix}", volume, affine)
    back, meta = read_volume(out)
    assert np.array_equal(back, volume)
    np.testing.assert_allclose(meta["affine"], affine, atol=1e-6)
    mask = rng.integers(0, 3, (4, 5, 6))
    back_mask, mask_meta = read_mask(write_mask(tmp_path / f"m{suffix}", mask, affine))
    assert np.array_equal(back_mask, mask) and back_mask.dtype == np.int64
    np.testing.assert_allclose(mask_meta["affine"], meta["affine"], atol=1e-6)


def test_multichannel_nifti_reads_channels_first(tmp_path, rng):
    stored = rng.standard_normal((6, 5, 4, 2)).astype(np.float32)  # (x, y, z, c)
    nib.save(nib.Nifti1Image(stored, np.diag([-1.0, -1.0, 1.0, 1.0])), tmp_path / "mc.nii.gz")
    volume, meta = read_volume(tmp_path / "mc.nii.gz")
    assert volume.shape == (2, 4, 5, 6)
    assert np.array_equal(volume[1], stored[..., 1].transpose(2, 1, 0))  # LPS is canonical already
    out = write_volume(tmp_path / "again.nii", volume, meta["affine"])
    assert np.array_equal(read_volume(out)[0], volume)


def test_write_volume_is_atomic(tmp_path, rng, monkeypatch):
    path = tmp_path / "v.nii.gz"
    write_volume(path, np.zeros((3, 3, 3), np.float32), np.eye(4))
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(Exception, match="v.nii.gz"):
        write_volume(path, np.ones((3, 3, 3), np.float32), np.eye(4))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nii.gz"]  # no temporary left


def test_dicom_series_and_nifti_agree(tmp_path):
    pytest.importorskip("pydicom")
    out = make_segmentation_demo_data(tmp_path / "demo", n_cases=1, size=16, seed=3)
    a, meta_a = read_volume(out / "imagesTr" / "case_000.nii.gz")
    b, meta_b = read_volume(out / "dicom" / "case_000")
    assert meta_a["format"] == "nifti" and meta_b["format"] == "dicom"
    assert a.shape == b.shape == (8, 16, 16)
    np.testing.assert_allclose(b, a, atol=1e-3)
    np.testing.assert_allclose(meta_b["affine"], meta_a["affine"], atol=1e-3)
    assert meta_a["spacing"] == pytest.approx((40.0, 20.0, 20.0))  # anisotropic


def test_read_pair_detects_misaligned_mask(tmp_path, rng):
    image = rng.standard_normal((4, 5, 6)).astype(np.float32)
    mask = rng.integers(0, 2, (4, 5, 6))
    write_volume(tmp_path / "img.nii.gz", image, np.diag([-1.0, -1.0, 2.0, 1.0])[:, [2, 1, 0, 3]])
    write_mask(tmp_path / "ok.nii.gz", mask, np.diag([-1.0, -1.0, 2.0, 1.0])[:, [2, 1, 0, 3]])
    got_image, got_mask, meta = read_pair(tmp_path / "img.nii.gz", tmp_path / "ok.nii.gz")
    assert np.array_equal(got_mask, mask) and meta["mask_path"].endswith("ok.nii.gz")
    shifted = np.diag([-1.0, -1.0, 2.0, 1.0])[:, [2, 1, 0, 3]]
    shifted[:3, 3] = [0.0, 0.0, 5.0]
    write_mask(tmp_path / "shifted.nii.gz", mask, shifted)
    write_mask(tmp_path / "spacing.nii.gz", mask, np.diag([-1.0, -1.0, 3.0, 1.0])[:, [2, 1, 0, 3]])
    write_mask(
        tmp_path / "shape.nii.gz", mask[:, :4], np.diag([-1.0, -1.0, 2.0, 1.0])[:, [2, 1, 0, 3]]
    )
    for bad, what in [("shifted", "affine"), ("spacing", "spacing"), ("shape", "shape")]:
        with pytest.raises(DataError, match=what) as err:
            read_pair(tmp_path / "img.nii.gz", tmp_path / f"{bad}.nii.gz")
        assert "img.nii.gz" in str(err.value) and f"{bad}.nii.gz" in str(err.value)


# ----------------------------------------------------------------------------- bad input


def _header_bytes(shape=(4, 4, 4), dtype=np.uint8) -> bytes:
    return nib.Nifti1Image(np.zeros(shape, dtype), np.eye(4)).to_bytes()


def test_label_outside_classes(tmp_path):
    mask = np.zeros((3, 4, 5), np.int64)
    mask[1, 2, 3] = 3
    write_mask(tmp_path / "lab.nii.gz", mask, np.eye(4))
    with pytest.raises(DataError, match=r"lab\.nii\.gz.*\[3\] outside the classes 0\.\.1"):
        read_mask(tmp_path / "lab.nii.gz", num_classes=2)
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 0.5, np.float32), np.eye(4)), tmp_path / "f.nii")
    with pytest.raises(DataError, match=r"f\.nii: mask values are not whole"):
        read_mask(tmp_path / "f.nii")


def test_two_d_file_is_not_a_volume(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), tmp_path / "flat.nii")
    with pytest.raises(DataError, match=r"flat\.nii.*not a volume"):
        read_volume(tmp_path / "flat.nii")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 1), np.float32), np.eye(4)), tmp_path / "one.nii")
    with pytest.raises(DataError, match=r"one\.nii.*single slice"):
        read_volume(tmp_path / "one.nii")


def test_wrong_dims(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2, 2), np.float32), np.eye(4)), tmp_path / "5d.nii")
    with pytest.raises(DataError, match=r"5d\.nii.*not a volume"):
        read_volume(tmp_path / "5d.nii")
    write_volume(tmp_path / "mc.nii", np.zeros((2, 3, 3, 3), np.float32), np.eye(4))
    with pytest.raises(DataError, match=r"mc\.nii: a mask must be one 3-D volume"):
        read_mask(tmp_path / "mc.nii")


@pytest.mark.parametrize(
    "damage", ["sizeof_hdr", "truncated_header", "truncated_data", "garbage", "dims"]
)
def test_broken_header(tmp_path, damage):
    blob = bytearray(_header_bytes())
    if damage == "sizeof_hdr":
        blob[0:4] = (999).to_bytes(4, "little")
    elif damage == "truncated_header":
        blob = blob[:200]
    elif damage == "truncated_data":
        blob = blob[:-10]
    elif damage == "garbage":
        blob = bytearray(b"not a nifti file at all" * 30)
    else:  # dim[1] = -4
        blob[42:44] = (-4).to_bytes(2, "little", signed=True)
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(gzip.compress(bytes(blob)))
    with pytest.raises(DataError, match=r"broken\.nii\.gz"):
        read_volume(path)


def test_oversized_uncompressed_file_is_refused(tmp_path):
    (tmp_path / "long.nii").write_bytes(_header_bytes() + b"\0" * (1 << 20))
    with pytest.raises(DataError, match=r"long\.nii: holds more than the 416 bytes"):
        read_volume(tmp_path / "long.nii")
    (tmp_path / "pad.nii").write_bytes(_header_bytes() + b"\0" * 100)  # small padding is fine
    assert read_volume(tmp_path / "pad.nii")[0].shape == (4, 4, 4)


def test_gzip_bomb_is_refused_without_inflating_it(tmp_path, monkeypatch):
    # a 4x4x4 header followed by 8 MiB of zeros: a few KiB compressed
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(_header_bytes() + b"\0" * (8 << 20)))
    assert path.stat().st_size < 64 << 10
    import zlib

    inflated = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *a):
            self.inner = real(*a)

        def decompress(self, data, max_length=0):
            out = self.inner.decompress(data, max_length)
            inflated.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(zlib, "decompressobj", Counting)
    with pytest.raises(DataError, match=r"bomb\.nii\.gz.*gzip bomb"):
        read_volume(path)
    assert sum(inflated) < 1 << 20  # bounded by the header's size plus slack, not 8 MiB


def test_header_over_the_size_limit(tmp_path):
    path = tmp_path / "big.nii.gz"
    path.write_bytes(gzip.compress(_header_bytes((64, 64, 64))))
    with pytest.raises(DataError, match=r"big\.nii\.gz.*over the limit"):
        read_volume(path, max_bytes=100_000)


def test_not_a_volume_path(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match=r"x\.png"):
        read_volume(tmp_path / "x.png")
    with pytest.raises(DataError, match=r"missing\.nii"):
        read_volume(tmp_path / "missing.nii")


def test_non_finite_voxels(tmp_path):
    x = np.zeros((3, 3, 3), np.float32)
    x[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(x, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(DataError, match=r"nan\.nii.*not finite"):
        read_volume(tmp_path / "nan.nii")


# ----------------------------------------------------------------------------- transforms


def test_resample_to_spacing_known_change():
    ramp = np.broadcast_to(np.arange(4, dtype=np.float32)[:, None, None] * 4.0, (4, 6, 6))
    affine = np.diag([-2.0, -2.0, 4.0, 1.0])[:, [2, 1, 0, 3]]
    affine[:3, 3] = [5.0, 6.0, 7.0]
    out, new_affine = resample_to_spacing(ramp, affine, (4.0, 2.0, 2.0), (2.0, 1.0, 2.0))
    assert out.shape == (8, 12, 6)
    np.testing.assert_allclose(np.linalg.norm(new_affine[:3, :3], axis=0), (2.0, 1.0, 2.0))
    np.testing.assert_allclose(new_affine[:3, 3], affine[:3, 3])
    # trilinear on a ramp of 4 HU per input slice: output slice o sits at o / 2 input slices
    expected = np.minimum(np.arange(8) / 2.0, 3.0) * 4.0
    np.testing.assert_allclose(out[:, 3, 3], expected, atol=1e-5)


def test_resample_mask_keeps_labels(rng):
    mask = rng.integers(0, 3, (5, 7, 7)).astype(np.int64)
    out, _ = resample_to_spacing(mask, np.eye(4), (3.0, 1.0, 1.0), (1.3, 0.7, 1.9), order=0)
    assert out.dtype == np.int64 and set(np.unique(out)) <= {0, 1, 2}
    assert set(np.unique(out)) == {0, 1, 2}
    same, _ = resample_to_spacing(mask, np.eye(4), (3.0, 1.0, 1.0), (3.0, 1.0, 1.0), order=0)
    assert np.array_equal(same, mask)
    # there and back to the original shape: geometry and affine restored exactly
    down, down_affine = resample_to_spacing(
        mask, np.eye(4), (3.0, 1.0, 1.0), (3.0, 0.5, 0.5), order=0
    )
    back, back_affine = resample_to_spacing(
        down, down_affine, (3.0, 0.5, 0.5), (3.0, 1.0, 1.0), order=0, output_shape=mask.shape
    )
    assert np.array_equal(back, mask) and np.allclose(back_affine, np.eye(4))
    with pytest.raises(ArgumentError, match="target_spacing"):
        resample_to_spacing(mask, np.eye(4), (3.0, 1.0, 1.0), (0.0, 1.0, 1.0))


def test_intensity_transforms():
    hu = np.array([-2000.0, -1000.0, -160.0, 40.0, 240.0, 3000.0]).reshape(1, 2, 3)
    np.testing.assert_allclose(hu_window(hu, 40.0, 400.0).ravel(), [0, 0, 0, 0.5, 1, 1])
    z = zscore(hu)
    assert z.dtype == np.float32 and abs(float(z.mean())) < 1e-6 and abs(float(z.std()) - 1) < 1e-5
    assert np.array_equal(zscore(np.full((2, 2, 2), 7.0)), np.zeros((2, 2, 2)))


def test_sagittal_dicom_series_matches_nifti(tmp_path, rng):
    """A sagittal series (slices along x, rows going down, IOP [0,1,0, 0,0,-1]) and a NIfTI of the
    same voxels and affine read back as the same canonical volume and affine."""
    pytest.importorskip("pydicom")
    from engine.data.synthetic_volumes import _write_dicom_series

    hu = np.round(rng.uniform(-1000, 1000, (5, 6, 7))).astype(np.float32)  # (x slices, rows, cols)
    affine = _affine(np.array([[-2.0, 0, 0], [0, 0, -1.0], [0, -1.5, 0]]), origin=(4.0, 7.0, 9.0))
    _write_dicom_series(tmp_path / "sag", hu, affine, "sag", seed=0)
    write_volume(tmp_path / "sag.nii.gz", hu, affine)
    a, meta_a = read_volume(tmp_path / "sag")
    b, meta_b = read_volume(tmp_path / "sag.nii.gz")
    assert a.shape == b.shape == (6, 7, 5)  # (S, P, L) axes: rows, cols, slices
    np.testing.assert_allclose(a, b, atol=1e-3)
    np.testing.assert_allclose(meta_a["affine"], meta_b["affine"], atol=1e-3)
    assert meta_a["spacing"] == pytest.approx((1.5, 1.0, 2.0))
