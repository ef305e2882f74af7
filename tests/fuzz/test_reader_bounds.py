"""Directed hostile inputs for the DICOM reader (RELIABILITY D7, D8): lying length fields and
dimension bombs must give DicomReadError without a large allocation."""

from __future__ import annotations

import tracemalloc
import warnings

import pydicom
import pytest
from pydicom.data import get_testdata_file

from engine.errors import DicomReadError

dicom = pytest.importorskip("engine.data.dicom")


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(DicomReadError):
            fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _write(ds, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path)
    return path


def test_private_length_0xfffffff0_is_refused_without_allocating(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.add_new(0x00091010, "OB", b"\0" * 8)
    ds.add_new(0x00090010, "LO", "FUZZ")
    path = _write(ds, tmp_path / "lying.dcm")
    data = bytearray(path.read_bytes())
    at = data.index(b"\x09\x00\x10\x10OB") + 8  # explicit VR long header: length after 8 bytes
    data[at : at + 4] = (0xFFFFFFF0).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert _peak(lambda: dicom.read_image(path)) < 64 << 20


def test_rle_dimension_bomb_refused_before_decoding(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.Rows = ds.Columns = 4096
    path = _write(ds, tmp_path / "bomb.dcm")
    with pytest.raises(DicomReadError, match="bomb.dcm"):
        dicom.read_image(path)
    assert _peak(lambda: dicom.read_image(path)) < 16 << 20
