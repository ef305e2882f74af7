"""engine.data.dicom.read_series: slice order from geometry, inconsistent series rejected."""

from __future__ import annotations

import numpy as np
import pytest

from engine.data.dicom import read_series
from engine.errors import DicomReadError

from .conftest import write_ct

pytest.importorskip("pydicom")


def _series(folder, *, n=6, dz=2.5, oblique=False, overrides=None):
    """n slices whose HU value is their true index, written under shuffled file names, with
    InstanceNumber reversed; overrides[k] replaces write_ct arguments of slice k."""
    folder.mkdir(exist_ok=True)
    names = np.random.default_rng(0).permutation(n)
    if oblique:  # columns tilted 30 degrees in the y-z plane
        c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
        orientation, normal = (1, 0, 0, 0, c, s), np.array([0, -s, c])
    else:
        orientation, normal = (1, 0, 0, 0, 1, 0), np.array([0, 0, 1.0])
    for k in range(n):
        position = np.array([-10.0, -20.0, 5.0]) + k * dz * normal
        kw = {"position": tuple(position), "orientation": orientation, "InstanceNumber": str(n - k)}
        kw.update((overrides or {}).get(k, {}))
        write_ct(folder / f"f{names[k]:03d}.dcm", np.full((4, 5), 1024 + k), **kw)
    return folder


@pytest.mark.parametrize("oblique", [False, True])
def test_read_series_sorts_along_the_normal(tmp_path, oblique):
    volume, spacing, metas = read_series(_series(tmp_path / "s", oblique=oblique))
    assert volume.shape == (6, 4, 5) and volume.dtype == np.float32
    np.testing.assert_array_equal(volume[:, 0, 0], np.arange(6.0))  # HU = true index
    assert spacing == pytest.approx((2.5, 0.7, 0.7), rel=1e-5)  # DS strings hold 6 digits
    assert [m["instance_number"] for m in metas] == [6, 5, 4, 3, 2, 1]


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({3: {"orientation": (0, 1, 0, 1, 0, 0)}}, "orientation"),
        ({2: {"spacing": (0.5, 0.5)}}, "pixel spacing"),
        ({4: {"position": (-10.0, -20.0, 5.0)}}, "same position"),
        ({5: {"position": (-10.0, -20.0, 5.0 + 5 * 2.5 + 4.0)}}, "uneven slice spacing"),
        ({1: {"series_uid": "9.9.9"}}, "2 series"),
    ],
)
def test_read_series_rejects_inconsistent_geometry(tmp_path, overrides, match):
    with pytest.raises(DicomReadError, match=match):
        read_series(_series(tmp_path / "s", overrides=overrides))


def test_read_series_picks_one_series_and_rejects_missing_geometry(tmp_path):
    folder = _series(tmp_path / "s", overrides={0: {"series_uid": "9.9.9"}})
    volume, _, _ = read_series(folder, series_uid="1.2.3.4")
    assert volume.shape == (5, 4, 5)
    with pytest.raises(DicomReadError, match="no series"):
        read_series(folder, series_uid="7.7")
    bare = tmp_path / "bare"
    bare.mkdir()
    write_ct(bare / "a.dcm", np.zeros((2, 2)), ImagePositionPatient=None)
    with pytest.raises(DicomReadError, match="ImagePositionPatient"):
        read_series(bare)


def test_read_series_on_the_demo_data(demo_dir):
    """The synthetic series stack in true order: slice positions step by -5 mm along z."""
    volume, spacing, metas = read_series(demo_dir / "patient_00")
    assert volume.shape == (6, 32, 32) and spacing[0] == pytest.approx(5.0)
    z = [m["image_position"][2] for m in metas]
    assert np.allclose(np.diff(z), 5.0)
