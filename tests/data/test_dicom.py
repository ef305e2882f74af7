"""engine.data.dicom: the pixel pipeline rules, and the error contract on bad or hostile files."""

from __future__ import annotations

import copy
import os
import struct
import time
import tracemalloc
import warnings

import numpy as np
import pytest

from engine.data.dicom import WINDOW_PRESETS, Reason, read_image
from engine.errors import DicomReadError

from .conftest import write_ct

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file, get_testdata_files  # noqa: E402


def _corpus():
    """Every regular file pydicom (and pydicom-data, if installed) ships; never downloads."""
    return sorted(p for p in get_testdata_files() if os.path.isfile(p))


def test_read_image_corpus_contract():
    """Each file -> finite float32 array, or DicomReadError naming the file, in a few seconds
    CPU time is checked, not wall time, so a busy CI machine does not fail it. The slowest file
    (color3d_jpeg_baseline, 120 RGB frames: a 442 MB float32 result) takes 1.7 s of CPU when
    freed memory is reused and up to 5 s on a first call that page-faults the whole result (the
    engine no longer tunes the process's malloc; measured on the 2-core machine), hence 12 s."""
    files = _corpus()
    assert len(files) > 80
    read = 0
    for path in files:
        start = time.process_time()
        try:
            image, meta = read_image(path)
        except DicomReadError as exc:
            assert path in str(exc) and exc.path == path
            assert exc.reason in vars(Reason).values()
        else:
            read += 1
            assert image.dtype == np.float32 and image.ndim in (3, 4)
            assert np.isfinite(image).all(), path
            assert meta["path"] == path
        assert time.process_time() - start < 12.0, path
    assert read > 60


@pytest.mark.parametrize(
    "name,reason",
    [
        ("MR_truncated.dcm", Reason.TRUNCATED),
        ("rtplan_truncated.dcm", Reason.TRUNCATED),
        ("rtplan.dcm", Reason.MISSING_PIXEL_DATA),
        ("no_meta.dcm", Reason.NOT_DICOM),
        ("meta_missing_tsyntax.dcm", Reason.MALFORMED),
        ("badVR.dcm", Reason.INVALID_ATTRIBUTE),
    ],
)
def test_read_image_known_bad_files(name, reason):
    with pytest.raises(DicomReadError) as info:
        read_image(get_testdata_file(name))
    assert info.value.reason == reason and name in str(info.value)


def test_read_image_ct_hounsfield_equals_pydicom():
    from pydicom.pixels import apply_modality_lut

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image, meta = read_image(path)
    assert image.shape == (1, 128, 128) and image.dtype == np.float32
    np.testing.assert_array_equal(
        image[0], apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    )
    assert meta["modality"] == "CT" and meta["rescale"]["intercept"] == float(ds.RescaleIntercept)
    assert meta["pixel_spacing"] == [float(v) for v in ds.PixelSpacing]


def test_read_image_multiframe_and_colour_shapes():
    frames, _ = read_image(get_testdata_file("emri_small.dcm") or get_testdata_file("rtdose.dcm"))
    assert frames.ndim == 3 and frames.shape[0] > 1
    rgb, meta = read_image(get_testdata_file("SC_rgb.dcm") or get_testdata_file("SC_rgb_rle.dcm"))
    assert rgb.shape[-1] == 3 and rgb.shape[0] == 1 and meta["inverted"] is False
    scaled, _ = read_image(get_testdata_file("SC_rgb_rle.dcm"), window="auto")
    assert 0.0 <= scaled.min() and scaled.max() <= 1.0


def test_read_image_rle_equals_uncompressed_twin():
    a, _ = read_image(get_testdata_file("MR_small.dcm"))
    b, _ = read_image(get_testdata_file("MR_small_RLE.dcm"))
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- pipeline rules


def test_monochrome1_inverted_after_the_file_window(tmp_path):
    """MONOCHROME1 with the file's window = 1 - (the MONOCHROME2 result); inverting the stored
    values first (the common bug) would give a different picture for an off-centre window."""
    stored = np.arange(64 * 64).reshape(64, 64) % 4096
    window = (300.0, 800.0)  # off-centre of the [-1024, 3071] range on purpose
    m2 = write_ct(tmp_path / "m2.dcm", stored, window=window)
    m1 = write_ct(tmp_path / "m1.dcm", stored, window=window, photometric="MONOCHROME1")
    a, _ = read_image(m2, window="file")
    b, meta = read_image(m1, window="file")
    assert meta["inverted"] and meta["window"] == (300.0, 800.0, "LINEAR")
    np.testing.assert_allclose(b, 1.0 - a, atol=1e-6)
    wrong = np.clip((1024 + 3071 - (stored - 1024.0) - (300 - 0.5)) / 799 + 0.5, 0, 1)
    assert np.abs(b[0] - wrong).max() > 0.5


def test_monochrome1_physical_units_mirror_to_the_monochrome2_twin(tmp_path):
    """A MONOCHROME1 file storing the mirror image reads back as the MONOCHROME2 values."""
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4096, size=(16, 16))
    m2 = write_ct(tmp_path / "m2.dcm", stored)
    m1 = write_ct(tmp_path / "m1.dcm", 4095 - stored, photometric="MONOCHROME1")
    a, _ = read_image(m2)
    b, _ = read_image(m1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0], stored - 1024.0)


@pytest.mark.parametrize("preset", sorted(WINDOW_PRESETS))
def test_window_presets(tmp_path, preset):
    hu = np.linspace(-1024, 2000, 32 * 32).reshape(32, 32)
    path = write_ct(tmp_path / "ct.dcm", np.round(hu + 1024))
    image, meta = read_image(path, window=preset)
    center, width = WINDOW_PRESETS[preset]
    expected = np.clip((np.round(hu + 1024) - 1024 - center) / width + 0.5, 0, 1)
    np.testing.assert_allclose(image[0], expected, atol=1e-6)
    assert meta["window"] == (center, width)


def test_window_arguments(tmp_path):
    path = write_ct(tmp_path / "ct.dcm", np.full((8, 8), 1064))  # 40 HU everywhere
    assert read_image(path, window=(40, 400))[0].max() == pytest.approx(0.5)
    assert read_image(path, window="file")[0].max() == pytest.approx(0.5 + 0.5 / 399)
    with pytest.raises(ValueError, match="presets"):
        read_image(path, window="kidney-stone")
    with pytest.raises(ValueError, match="width"):
        read_image(path, window=(0, 0))


def test_sigmoid_voi_function(tmp_path):
    path = write_ct(
        tmp_path / "ct.dcm", np.array([[1024, 1424]]), window=(0.0, 400.0), VOILUTFunction="SIGMOID"
    )
    image, _ = read_image(path, window="file")
    np.testing.assert_allclose(image[0, 0], [0.5, 1 / (1 + np.exp(-4.0))], rtol=1e-6)


def _enhanced_ct(path, stored, slopes, intercepts):
    """An Enhanced CT object whose rescale lives only in the per-frame functional groups."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = EnhancedCTImageStorage, uid, "CT"
    ds.NumberOfFrames = len(stored)
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    frames = []
    for slope, intercept in zip(slopes, intercepts, strict=True):
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = (
            f"{slope:g}",
            f"{intercept:g}",
            "HU",
        )
        group = Dataset()
        group.PixelValueTransformationSequence = Sequence([pvt])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = ["0.5", "0.5"], "1"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_enhanced_multiframe_per_frame_rescale(tmp_path):
    stored = np.arange(3 * 4 * 5).reshape(3, 4, 5) * 10
    slopes, intercepts = [1.0, 2.0, 0.5], [-1024.0, -2000.0, 7.0]
    image, meta = read_image(_enhanced_ct(tmp_path / "e.dcm", stored, slopes, intercepts))
    assert image.shape == (3, 4, 5)
    for i in range(3):
        np.testing.assert_allclose(image[i], stored[i] * slopes[i] + intercepts[i])
    assert meta["pixel_spacing"] == [0.5, 0.5]
    assert [r["slope"] for r in meta["rescale"]] == slopes


# ----------------------------------------------------------------------------- bad input


def _raw_element(group, elem, vr: bytes, length: int, payload: bytes) -> bytes:
    """An explicit-VR little-endian element with a 4-byte length field (OB/OW/UN)."""
    return struct.pack("<HH2sHI", group, elem, vr, 0, length) + payload


def _header_only(tmp_path, name: str) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    path = tmp_path / f"{name}-header.dcm"
    ds.save_as(path)
    return path.read_bytes()


@pytest.mark.parametrize("tag", [(0x7FE0, 0x0010), (0x7FE1, 0x1010)])
def test_hostile_length_field_does_not_allocate(tmp_path, tag):
    """An element claiming 0xFFFFFFF0 bytes in a small file: an error, not a 4 GiB allocation."""
    data = _header_only(tmp_path, "h") + _raw_element(*tag, b"OB", 0xFFFFFFF0, b"\1" * 64)
    path = tmp_path / "hostile.dcm"
    path.write_bytes(data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DicomReadError) as info:
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.reason in (Reason.TRUNCATED, Reason.TOO_LARGE, Reason.MALFORMED)
    assert peak < 16 << 20 and time.perf_counter() - start < 1.0


def test_size_limit_checked_before_decoding(tmp_path):
    """Rows = Columns = 65535 with 1000 frames (4.3e12 values): refused from the header alone."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 1000
    path = tmp_path / "bomb.dcm"
    ds.save_as(path)
    tracemalloc.start()
    try:
        with pytest.raises(DicomReadError, match="max_pixels") as info:
            read_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.reason == Reason.TOO_LARGE and peak < 16 << 20
    with pytest.raises(DicomReadError, match="over the limit"):  # the limit is configurable
        read_image(get_testdata_file("CT_small.dcm"), max_pixels=128 * 127)
    assert read_image(get_testdata_file("CT_small.dcm"), max_pixels=128 * 128)[0].shape == (
        1,
        128,
        128,
    )


def test_truncated_files(tmp_path):
    """CT_small cut at a spread of offsets: always DicomReadError, never a partial image."""
    with open(get_testdata_file("CT_small.dcm"), "rb") as f:
        data = f.read()
    for cut in [0, 100, 131, 132, 300, 1000, 5000, 7000, len(data) - 32768, len(data) - 1]:
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(data[:cut])
        with pytest.raises(DicomReadError) as info:
            read_image(path)
        assert info.value.reason in (Reason.TRUNCATED, Reason.MISSING_PIXEL_DATA, Reason.NOT_DICOM)
        assert f"cut{cut}.dcm" in str(info.value)


def test_not_dicom_inputs(tmp_path):
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "text.dcm").write_text("hello " * 100)
    (tmp_path / "png.dcm").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    (tmp_path / "preamble_only.dcm").write_bytes(bytes(128) + b"DICM")
    (tmp_path / "folder.dcm").mkdir()
    os.symlink(tmp_path / "missing", tmp_path / "broken.dcm")
    os.mkfifo(tmp_path / "fifo.dcm")  # must never be opened (it would block)
    for name in ["empty", "text", "png", "preamble_only", "folder", "broken", "fifo"]:
        start = time.perf_counter()
        with pytest.raises(DicomReadError) as info:
            read_image(tmp_path / f"{name}.dcm")
        assert info.value.reason in (Reason.NOT_DICOM, Reason.IO), name
        assert time.perf_counter() - start < 0.5


def test_missing_required_attributes(tmp_path):
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword in ["Rows", "Columns", "BitsAllocated", "PhotometricInterpretation"]:
        ds = copy.deepcopy(base)
        delattr(ds, keyword)
        ds.save_as(tmp_path / "x.dcm")
        with pytest.raises(DicomReadError, match=keyword):
            read_image(tmp_path / "x.dcm")
    for keyword, value in [
        ("Rows", 0),
        ("BitsAllocated", 12),
        ("SamplesPerPixel", 5),
        ("NumberOfFrames", 0),
        ("NumberOfFrames", -1),
        ("RescaleSlope", "NaN"),
    ]:
        ds = copy.deepcopy(base)
        with warnings.catch_warnings():  # pydicom warns about the invalid values we set
            warnings.simplefilter("ignore")
            setattr(ds, keyword, value)
        ds.save_as(tmp_path / "x.dcm")
        with pytest.raises(DicomReadError, match=keyword) as info:
            read_image(tmp_path / "x.dcm")
        assert info.value.reason == Reason.INVALID_ATTRIBUTE


def test_compressed_without_decoder_names_the_package(monkeypatch):
    """As if no JPEG 2000 plugin were installed: the message says what to pip install."""
    from pydicom.pixels.decoders.base import Decoder

    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    with pytest.raises(DicomReadError, match="pylibjpeg-openjpeg") as info:
        read_image(get_testdata_file("MR_small_jp2klossless.dcm"))
    assert info.value.reason == Reason.UNSUPPORTED_TRANSFER_SYNTAX
    assert "dicom-codecs" in str(info.value)


def test_keyboard_interrupt_is_not_swallowed(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pydicom, "dcmread", interrupted)
    with pytest.raises(KeyboardInterrupt):
        read_image(get_testdata_file("CT_small.dcm"))


def test_unexpected_exception_is_mapped_with_its_type(monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(pydicom, "dcmread", broken)
    with pytest.raises(DicomReadError, match="ZeroDivisionError") as info:
        read_image(get_testdata_file("CT_small.dcm"))
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_decoder_panic_is_a_dicom_read_error(monkeypatch):
    """pylibjpeg-rle (Rust, pyo3) panics with PanicException, a BaseException, on a corrupt RLE
    stream (found by the fuzz tier with the dicom-codecs extra installed)."""

    class PanicException(BaseException):
        pass

    def panic(self):
        raise PanicException("index out of bounds: the len is 8192 but the index is 8192")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(panic))
    with pytest.raises(DicomReadError, match="PanicException") as info:
        read_image(get_testdata_file("MR_small_RLE.dcm"))
    assert info.value.reason == Reason.DECODER_CRASHED


@pytest.mark.parametrize(
    "compressed,plain",
    [
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
        ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
        ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),
    ],
)
def test_lossless_compressed_equals_uncompressed_when_a_decoder_is_installed(compressed, plain):
    """With the dicom-codecs extra (or Pillow for JPEG 2000) lossless files decode bit-exactly."""
    from pydicom.pixels import get_decoder

    paths = get_testdata_file(compressed), get_testdata_file(plain)
    if None in paths:
        pytest.skip("needs the pydicom-data files")
    tsyntax = pydicom.dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    if not get_decoder(tsyntax).is_available:
        pytest.skip(
            f"no decoder for {tsyntax.name} installed (pip install 'medgrad[dicom-codecs]')"
        )
    np.testing.assert_array_equal(read_image(paths[0])[0], read_image(paths[1])[0])


def test_rle_dimension_bomb_refused_before_decoding(tmp_path):
    """RLE can expand 2 bytes to at most 128: a header claiming 4096 x 4096 over MR_small's 8 KB
    of segments is refused before the decoder allocates the claimed output."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    ds.Rows = ds.Columns = 4096
    ds.save_as(tmp_path / "bomb.dcm")
    tracemalloc.start()
    try:
        with pytest.raises(DicomReadError, match="RLE pixel data") as info:
            read_image(tmp_path / "bomb.dcm")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.reason == Reason.TRUNCATED and peak < 16 << 20
